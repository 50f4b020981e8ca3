"""A real `dvc repro` of the project's pipeline in a fresh copy of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


BIN = Path(sys.executable).parent   # dvc and ecgssl live beside the interpreter


def run(cmd, cwd):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, f"{cmd}:\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


def test_dvc_repro_runs_the_pipeline_and_reruns_only_what_changed(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvc", ".dvcignore", "data", "src"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__",
                                                                            "tmp", "cache"))
        elif src.exists():
            shutil.copy(src, repo / name)
    run(["git", "init", "-q"], repo)
    out = run([str(BIN / "dvc"), "repro"], repo)
    for s in ("ptbxl", "mitdb", "cinc2017", "cinc2020"):
        assert (repo / "outputs/tables" / s / "_manifest.json").is_file(), out
    again = run([str(BIN / "dvc"), "repro"], repo)
    assert "didn't change, skipping" in again and "Running stage" not in again
    # A reports parameter reruns reports and what follows, never ingestion.
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("mode: both ", "mode: device "))
    changed = run([str(BIN / "dvc"), "repro"], repo)
    ran = [line.split("'")[1] for line in changed.splitlines() if line.startswith("Running stage")]
    assert ran == ["reports", "embed-text"], changed
    assert (repo / "outputs/text_emb.parquet").is_file()
