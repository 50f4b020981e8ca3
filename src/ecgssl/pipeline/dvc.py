"""`dvc repro` as one tracked pipeline run: an MLflow parent run holds each stage's child run.

    ecgssl pipeline repro            # what `make run` calls

The stages are `ecgssl` commands that DVC starts: they receive the run context as front doors
do, in the environment (see ecgssl.tracking). The parent run carries params.yaml (flattened)
as params and, at the end, the headline metrics; a repro with nothing to do (`dvc status`
clean) opens no run at all. Runs of `dvc exp run` group themselves (ecgssl.tracking).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ecgssl.tracking import (
    RunContext,
    connect,
    end_pipeline_run,
    git_commit,
    log_run_metrics,
    log_run_params,
    metric_key,
    start_pipeline_run,
)


def _dvc() -> str:
    # dvc from this environment even when its bin folder is not on PATH
    return shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")


def nothing_to_do(args: list[str], env: dict) -> bool:
    """True when `dvc status` says every stage is up to date (and no flag such as --force
    asks for more): then the repro changes nothing and deserves no run."""
    if any(a.startswith("-") for a in args):
        return False
    p = subprocess.run([_dvc(), "status", "--json", *args], env=env, capture_output=True,
                       text=True)
    try:
        return p.returncode == 0 and json.loads(p.stdout or "null") == {}
    except json.JSONDecodeError:
        return False


def repro(args: list[str], ctx: RunContext, params: Path = Path("params.yaml"),
          outputs: Path = Path("outputs")) -> int:
    env = dict(os.environ)
    tracked = ctx.enabled and not nothing_to_do(args, env)
    if tracked:
        name = f"dvc-{git_commit()[:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
        ctx = start_pipeline_run(ctx, name, {"runner": "dvc"})
        env.update(ctx.env())
        _log_params(ctx, params)
    rc = 1
    try:
        rc = subprocess.call([_dvc(), "repro", *args], env=env)
    finally:
        if tracked:
            _log_headline(ctx, outputs)
            end_pipeline_run(ctx, "FINISHED" if rc == 0 else "FAILED")
            _write_record(ctx, outputs)
    return rc


def _log_params(ctx: RunContext, params: Path) -> None:
    import yaml
    if params.is_file():
        log_run_params(ctx, ctx.parent_run_id, yaml.safe_load(params.read_text()) or {})


def _log_headline(ctx: RunContext, outputs: Path) -> None:
    """The parent run's metrics: the numbers `ecgssl summary` shows (compare runs by them)."""
    from ecgssl.pipeline.summary import key_metrics
    # Only the files dvc.yaml's stages write: outputs/ also holds other runs' results (e.g.
    # `pipeline run-local`'s tasks under outputs/kfp/), whose numbers share these keys.
    ours = lambda f: f == "pretrain/metrics.json" or (         # noqa: E731
        f.startswith("eval/") and f.count("/") == 2)
    rows = {metric_key(k): v for f, k, v in key_metrics(outputs)
            if ours(Path(f).as_posix())} if outputs.is_dir() else {}
    log_run_metrics(ctx, ctx.parent_run_id, rows)


def _write_record(ctx: RunContext, outputs: Path) -> None:
    """outputs/pipeline_run.json (not a DVC output): which MLflow run this was, for the
    summary's link."""
    from ecgssl.pipeline.summary import RUN_RECORD
    from ecgssl.storage import write_json
    run = connect(ctx).MlflowClient().get_run(ctx.parent_run_id)
    outputs.mkdir(parents=True, exist_ok=True)
    write_json(outputs / RUN_RECORD, {"run_id": run.info.run_id, "run_name": run.info.run_name,
                                      "experiment_id": run.info.experiment_id,
                                      "status": run.info.status})
