"""`dvc repro` as one tracked pipeline run: an MLflow parent run holds each stage's child run.

    ecgssl pipeline repro            # what `make run` calls
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ecgssl.config import load_params
from ecgssl.tracking import (
    PARENT_ENV,
    PIPELINE_RUN_ENV,
    end_pipeline_run,
    git_commit,
    start_pipeline_run,
)


def repro(args: list[str]) -> int:
    p = load_params().pretrain
    env = dict(os.environ)
    parent = None
    if p.mlflow:
        name = f"dvc-{git_commit()[:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
        parent = start_pipeline_run(p.experiment, name, {"runner": "dvc"})
        env.update({PARENT_ENV: parent, PIPELINE_RUN_ENV: name})
    rc = 1
    try:
        # dvc from this environment even when its bin folder is not on PATH
        dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
        rc = subprocess.call([dvc, "repro", *args], env=env)
    finally:
        if parent:
            end_pipeline_run(parent, "FINISHED" if rc == 0 else "FAILED")
    return rc
