"""Every bench script answers --help with its docstring (commands and goals) and runs nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_shows_the_docstring(script):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage:"), p.stdout[:500]      # nothing ran before the help
    # the usage lines of the docstring (its commands) are in the help, not only its first line
    assert f"python bench/{script.name}" in p.stdout
