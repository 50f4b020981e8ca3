"""`ecgssl register` as a user sees it (registration itself: tests/integration/test_registry.py)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_register_prints_no_mlflow_type_hint_note(tmp_path):
    """`ecgssl register` (an error included) began with MLflow's yellow "Add type hints to the
    `predict` method" UserWarning, as `predict` did."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    p = subprocess.run([sys.executable, "-m", "ecgssl.cli", "register", "--name", "ux-test",
                        "--encoder", str(tmp_path / "nope")], capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 2 and "has no config.json" in p.stderr, p.stderr
    assert "type hints" not in p.stderr and "UserWarning" not in p.stderr, p.stderr
