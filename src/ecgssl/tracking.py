"""MLflow tracking with the project's conventions, and a no-op stand-in when it is off.

Tracking URI: $MLFLOW_TRACKING_URI, else a SQLite store `mlflow.db` in the working directory.
An unreachable server is a clear error naming the URI, never a hang.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from ecgssl import __version__
from ecgssl.errors import EcgsslError

DEFAULT_URI = "sqlite:///mlflow.db"


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


@contextmanager
def start_run(enabled: bool, experiment: str, run_name: str, tags: dict | None = None,
              system_metrics: bool = True):
    """A run of the experiment (a child run when a parent run id is in
    $ECGSSL_PARENT_RUN_ID), or a NullRun when tracking is off."""
    if not enabled:
        yield NullRun()
        return
    import mlflow
    uri = tracking_uri()
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    parent = os.environ.get("ECGSSL_PARENT_RUN_ID")
    base_tags = {"ecgssl.version": __version__, "git.commit": git_commit()}
    if parent:
        base_tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=run_name, tags={**base_tags, **(tags or {})},
                          log_system_metrics=system_metrics) as run:
        yield MlflowRun(mlflow, run)
