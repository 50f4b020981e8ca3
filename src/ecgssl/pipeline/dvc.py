"""`dvc repro` as one tracked pipeline run: an MLflow parent run holds each stage's child run.

    ecgssl pipeline repro            # what `make run` calls

The stages are `ecgssl` commands that DVC starts: they receive the run context as front doors
do, in the environment (see ecgssl.tracking).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ecgssl.tracking import RunContext, end_pipeline_run, git_commit, start_pipeline_run


def repro(args: list[str], ctx: RunContext) -> int:
    env = dict(os.environ)
    if ctx.enabled:
        name = f"dvc-{git_commit()[:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
        ctx = start_pipeline_run(ctx, name, {"runner": "dvc"})
        env.update(ctx.env())
    rc = 1
    try:
        # dvc from this environment even when its bin folder is not on PATH
        dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
        rc = subprocess.call([dvc, "repro", *args], env=env)
    finally:
        if ctx.enabled:
            end_pipeline_run(ctx, "FINISHED" if rc == 0 else "FAILED")
    return rc
