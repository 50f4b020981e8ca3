"""`ecgssl predict` as a user sees it (the scoring itself: tests/evaluate/test_evaluate_stage.py
and tests/integration/test_registry.py)."""

from __future__ import annotations

import subprocess
import sys


def test_predict_prints_no_mlflow_type_hint_note(tables, tmp_path):
    """Every `ecgssl predict` (an error included) began with MLflow's yellow "Add type hints to
    the `predict` method" UserWarning: the filter meant to hide it never applied."""
    p = subprocess.run([sys.executable, "-m", "ecgssl.cli", "predict", "--model",
                        str(tmp_path / "nope"), "--data", str(tables["cinc2017"]), "--output",
                        str(tmp_path / "p.parquet")], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and "is not a model folder" in p.stderr
    assert "type hints" not in p.stderr and "UserWarning" not in p.stderr, p.stderr
