"""MLflow tracking with the project's conventions, and a no-op stand-in when it is off.

Tracking URI: $MLFLOW_TRACKING_URI, else a SQLite store `mlflow.db` in the working directory.
An unreachable server is a clear error naming the URI, never a hang.

A pipeline run (a Kubeflow run, or `make run` = `ecgssl pipeline repro`) is one parent run; each
stage it runs becomes a child run of it: the parent's id travels in $ECGSSL_PARENT_RUN_ID and
the pipeline run's name (KFP run id or git revision) in $ECGSSL_PIPELINE_RUN.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from ecgssl import __version__
from ecgssl.errors import EcgsslError

DEFAULT_URI = "sqlite:///mlflow.db"
PARENT_ENV, PIPELINE_RUN_ENV = "ECGSSL_PARENT_RUN_ID", "ECGSSL_PIPELINE_RUN"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class NullRun:
    """Stands in for an MLflow run when tracking is off: every call does nothing."""

    run_id = None

    def log_metrics(self, metrics: dict, step: int | None = None) -> None: ...
    def log_params(self, params: dict) -> None: ...
    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict) -> None: ...


class MlflowRun(NullRun):
    def __init__(self, mlflow, run):
        self.mlflow, self.run_id = mlflow, run.info.run_id

    def log_metrics(self, metrics, step=None):
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_params(self, params):
        items = list(params.items())
        for i in range(0, len(items), 100):   # the REST API takes at most 100 per call
            self.mlflow.log_params({k: str(v)[:500] for k, v in items[i:i + 100]})

    def log_artifacts(self, path, artifact_path=None):
        self.mlflow.log_artifacts(str(path), artifact_path)

    def log_artifact(self, path, artifact_path=None):
        self.mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags):
        self.mlflow.set_tags(tags)


def check_server(uri: str, timeout: float = 5.0) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        raise EcgsslError(f"MLflow tracking server {uri} is not reachable ({exc}); start it, "
                          "fix MLFLOW_TRACKING_URI, or turn tracking off (mlflow: false)") \
            from None


def connect():
    import mlflow
    uri = tracking_uri()
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow


def _base_tags() -> dict:
    tags = {"ecgssl.version": __version__, "git.commit": git_commit()}
    if os.environ.get(PIPELINE_RUN_ENV):
        tags["ecgssl.pipeline_run"] = os.environ[PIPELINE_RUN_ENV]
    return tags


@contextmanager
def start_run(enabled: bool, experiment: str, run_name: str, tags: dict | None = None,
              system_metrics: bool = True, only_child: bool = False):
    """A run of the experiment (a child run, in the parent's experiment, inside a pipeline
    run), or a NullRun when tracking is off (or, with `only_child`, outside a pipeline run)."""
    if not enabled or only_child and not (os.environ.get(PARENT_ENV) or
                                          os.environ.get(PIPELINE_RUN_ENV)):
        yield NullRun()
        return
    mlflow = connect()
    parent = parent_run_id(mlflow)
    if only_child and not parent:
        yield NullRun()
        return
    base_tags = _base_tags()
    if parent:
        base_tags["mlflow.parentRunId"] = parent
        mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(
            parent).info.experiment_id)
    else:
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags={**base_tags, **(tags or {})},
                          log_system_metrics=system_metrics) as run:
        yield MlflowRun(mlflow, run)


def parent_run_id(mlflow) -> str | None:
    """The pipeline's parent run: $ECGSSL_PARENT_RUN_ID, else the run tagged with the pipeline
    run in $ECGSSL_PIPELINE_RUN. Kubeflow tasks take the second way (the run id comes from the
    pod's label), because a run id among a task's inputs would defeat KFP's cache."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    pipeline_run = os.environ.get(PIPELINE_RUN_ENV)
    if not pipeline_run:
        return None
    runs = mlflow.search_runs(
        search_all_experiments=True, output_format="list", max_results=1,
        filter_string=f"tags.`ecgssl.pipeline_run` = '{pipeline_run}' and tags.stage = 'pipeline'")
    return runs[0].info.run_id if runs else None


def log_stage(stage: str, params: dict, metrics: dict, run_name: str | None = None) -> None:
    """A child run for a stage that has no run of its own (ingest, reports, embed-text), logged
    only inside a pipeline run so that one-off CLI calls do not litter the experiment."""
    with start_run(True, "ecgssl", run_name or stage, {"stage": stage}, system_metrics=False,
                   only_child=True) as run:
        run.log_params(flatten(params))
        run.log_metrics({k: v for k, v in flatten(metrics).items()
                         if isinstance(v, int | float) and not isinstance(v, bool)})


def start_pipeline_run(experiment: str, pipeline_run: str, tags: dict | None = None) -> str:
    """Open the parent run of one pipeline run; returns its id (stages find it in
    $ECGSSL_PARENT_RUN_ID)."""
    mlflow = connect()
    exp = mlflow.set_experiment(experiment)
    run = mlflow.MlflowClient().create_run(
        exp.experiment_id, run_name=f"pipeline {pipeline_run}",
        tags={**_base_tags(), "ecgssl.pipeline_run": pipeline_run, "stage": "pipeline",
              **(tags or {})})
    return run.info.run_id


def end_pipeline_run(run_id: str, status: str = "FINISHED") -> None:
    connect().MlflowClient().set_terminated(run_id, status)


@contextmanager
def pipeline_env(parent: str | None, pipeline_run: str | None):
    """Make the stages run inside this block child runs of `parent` (or of the parent run
    tagged with `pipeline_run`)."""
    old = {k: os.environ.get(k) for k in (PARENT_ENV, PIPELINE_RUN_ENV)}
    for k, v in ((PARENT_ENV, parent), (PIPELINE_RUN_ENV, pipeline_run)):
        if v:
            os.environ[k] = v
        else:
            os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
