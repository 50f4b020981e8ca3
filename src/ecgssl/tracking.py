"""MLflow tracking with the project's conventions, and a no-op stand-in when it is off.

Every stage takes a `RunContext`: where to track (URI, experiment), whether to track at all, and
its lineage (the pipeline's parent run and the pipeline run's name). A front door (the CLI,
`ecgssl pipeline repro`, a Kubeflow step) builds it once, from the `tracking` section of
params.yaml and what the front door was handed; library code never reads the environment for
it. The environment variables a front door accepts:

- `MLFLOW_TRACKING_URI`: where to track when `tracking.uri` is null (else a SQLite store
  `mlflow.db` in the working directory);
- `ECGSSL_PARENT_RUN_ID`: the parent run a CLI stage joins (`ecgssl pipeline repro` sets it for
  the `dvc repro` it runs);
- `ECGSSL_PIPELINE_RUN`: the pipeline run's name (a KFP pod's `pipeline/runid` label, or set by
  `repro`/`run-local`); a stage without a parent id finds the parent run by this tag;
- `DVC_EXP_NAME` (set by `dvc exp run` for its stages): without the two above, the stages of one
  experiment join one parent run `dvc-exp-<name>`, tagged `dvc.exp_name`, which the first
  stage creates.

An unreachable server is a clear error naming the URI, never a hang.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ecgssl import __version__
from ecgssl.errors import EcgsslError
from ecgssl.storage import redact

if TYPE_CHECKING:
    from ecgssl.config import TrackingConfig

DEFAULT_URI = "sqlite:///mlflow.db"
PARENT_ENV, PIPELINE_RUN_ENV, URI_ENV = ("ECGSSL_PARENT_RUN_ID", "ECGSSL_PIPELINE_RUN",
                                         "MLFLOW_TRACKING_URI")
DVC_EXP_ENV, DVC_BASELINE_ENV = "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"   # set by `dvc exp run`


@dataclass(frozen=True)
class RunContext:
    """Where and whether a stage tracks, and which pipeline run it belongs to."""
    enabled: bool = False
    tracking_uri: str = DEFAULT_URI
    experiment: str = "ecgssl"
    parent_run_id: str | None = None
    pipeline_run: str | None = None
    dvc_exp: str | None = None        # the `dvc exp run` experiment this stage runs in
    dvc_baseline: str | None = None

    @classmethod
    def at_front_door(cls, cfg: TrackingConfig, uri: str | None = None,
                      enabled: bool | None = None, env: dict | None = None) -> RunContext:
        """The context a front door builds: params' `tracking` section, explicit overrides
        (a CLI flag, a pipeline argument), then the environment variables listed above."""
        env = os.environ if env is None else env
        dvc_exp = env.get(DVC_EXP_ENV) or None
        parent, pipeline_run = env.get(PARENT_ENV) or None, env.get(PIPELINE_RUN_ENV) or None
        if dvc_exp and not parent and not pipeline_run:
            pipeline_run = f"dvc-exp-{dvc_exp}"
        return cls(enabled=cfg.enabled if enabled is None else enabled,
                   tracking_uri=uri or cfg.uri or env.get(URI_ENV) or DEFAULT_URI,
                   experiment=cfg.experiment, parent_run_id=parent, pipeline_run=pipeline_run,
                   dvc_exp=dvc_exp, dvc_baseline=env.get(DVC_BASELINE_ENV) or None)

    @property
    def in_pipeline(self) -> bool:
        return bool(self.parent_run_id or self.pipeline_run)

    def with_parent(self, parent_run_id: str | None, pipeline_run: str | None = None
                    ) -> RunContext:
        return replace(self, parent_run_id=parent_run_id or None,
                       pipeline_run=pipeline_run or self.pipeline_run)

    def env(self) -> dict[str, str]:
        """What a front door hands to the front doors it launches (e.g. `dvc repro`'s stages)."""
        out = {URI_ENV: self.tracking_uri}
        if self.parent_run_id:
            out[PARENT_ENV] = self.parent_run_id
        if self.pipeline_run:
            out[PIPELINE_RUN_ENV] = self.pipeline_run
        return out


OFF = RunContext()


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def metric_key(k: str) -> str:
    """Our metric keys as MLflow accepts them ('~', the Challenge 2017 noise class, is not
    allowed). Evaluate logs and promote reads through this one function, so they agree."""
    return k.replace("~", "noise")


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
    def log_table(self, rows: list[dict], artifact_file: str) -> None: ...
    def log_dataset(self, table: str | Path, context: str, name: str | None = None,
                    digest: str | None = None) -> None: ...


class MlflowRun(NullRun):
    def __init__(self, mlflow, run):
        self.mlflow, self.run_id = mlflow, run.info.run_id

    def log_metrics(self, metrics, step=None):
        self.mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()},
                                step=step)

    def log_params(self, params):
        items = list(params.items())
        for i in range(0, len(items), 100):   # the REST API takes at most 100 per call
            self.mlflow.log_params({k: str(v)[:500] for k, v in items[i:i + 100]})

    def log_artifacts(self, path, artifact_path=None):
        self.mlflow.log_artifacts(str(path), artifact_path)

    def log_artifact(self, path, artifact_path=None):
        self.mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags):
        self.mlflow.set_tags({k: str(v)[:5000] for k, v in tags.items()})

    def log_table(self, rows, artifact_file):
        """A table in the run's artifacts that the UI shows (Artifacts, Evaluation)."""
        if rows:
            import pandas as pd
            self.mlflow.log_table(pd.DataFrame(rows), artifact_file)

    def log_dataset(self, table, context, name=None, digest=None):
        """The table as one of the run's dataset inputs (its name, fingerprint and location:
        the UI's Datasets column), without loading it: a MetaDataset points at it."""
        from mlflow.data.meta_dataset import MetaDataset
        source = _dataset_source(str(table))
        ds = MetaDataset(source, name=name or Path(str(table).rstrip("/")).name,
                         digest=(digest or "unknown")[:36])
        self.mlflow.log_input(ds, context=context)


def _dataset_source(uri: str):
    """An MLflow dataset source for a folder (made absolute: the UI shows where it is) or an
    object-store prefix."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    if "://" not in uri:
        uri = str(Path(uri).resolve())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "can be interpreted in multiple ways": all local
        return resolve_dataset_source(uri)


def quiet_mlflow() -> None:
    """Silence MLflow's harmless chatter (noted once here so logs show what matters): the
    `artifact_path` deprecation, pip's version inference, the SQLite store's alembic upgrade
    lines, GitPython's "git not found", the predict type-hint advice and the run-link lines
    (the summary prints the run's URL once)."""
    import logging
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils",
                 "mlflow.utils.requirements_utils", "mlflow.system_metrics",
                 "mlflow.models.model", "mlflow.utils.environment", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (".*artifact_path.*deprecated.*", ".*[Ii]nferred.*", ".*pydantic.*",
                    ".*Hint: Inferred schema.*", ".*Failed to resolve installed pip.*",
                    ".*filesystem tracking backend.*", ".*noload.*loader strategy.*",
                    ".*Add type hints to the `predict` method.*"):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=FutureWarning, module="mlflow")
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the (redacted) URI, when an http(s) tracking server does not answer.

    Through MLflow's own HTTP client and credentials (`user:token@` in the URI,
    MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN), so that a server that needs them is judged the
    way MLflow will talk to it; one try with a short timeout instead of MLflow's retries."""
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request
    try:
        response = http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0,
                                timeout=timeout, raise_on_status=False)
        status = response.status_code
    except Exception as exc:   # requests/urllib3 errors of every kind: the server is not there
        problem = f"{type(exc).__name__}: {redact(str(exc))}"
    else:
        if status == 200:
            return
        problem = f"/health answered HTTP {status}" + (
            " (check the credentials)" if status in (401, 403) else "")
    raise EcgsslError(f"MLflow tracking server {redact(uri)} is not reachable ({problem}); "
                      "start it, fix MLFLOW_TRACKING_URI / tracking.uri, or turn tracking off "
                      "(tracking.enabled: false)") from None


def connect(ctx: RunContext):
    quiet_mlflow()
    import mlflow
    check_server(ctx.tracking_uri)
    mlflow.set_tracking_uri(ctx.tracking_uri)
    return mlflow


def _base_tags(ctx: RunContext) -> dict:
    tags = {"ecgssl.version": __version__, "git.commit": git_commit()}
    if ctx.pipeline_run:
        tags["ecgssl.pipeline_run"] = ctx.pipeline_run
    if ctx.dvc_exp:
        tags["dvc.exp_name"] = ctx.dvc_exp
    if ctx.dvc_baseline:
        tags["dvc.baseline_rev"] = ctx.dvc_baseline
    return tags


def short_id() -> str:
    """What tells runs of one stage apart in the runs list: `evaluate-cinc2017-af 3fa9c2`."""
    return secrets.token_hex(3)


@contextmanager
def start_run(ctx: RunContext, run_name: str, tags: dict | None = None,
              system_metrics: bool = True, only_child: bool = False):
    """A run of the context's experiment (a child run, in the parent's experiment, inside a
    pipeline run), or a NullRun when tracking is off (or, with `only_child`, outside a
    pipeline run)."""
    if not ctx.enabled or only_child and not ctx.in_pipeline:
        yield NullRun()
        return
    mlflow = connect(ctx)
    parent = parent_run_id(ctx)
    if not parent and ctx.dvc_exp and ctx.pipeline_run:
        parent = _open_exp_parent(ctx)     # the first stage of a `dvc exp run` opens it
    if only_child and not parent:
        yield NullRun()
        return
    base_tags = _base_tags(ctx)
    if parent:
        base_tags["mlflow.parentRunId"] = parent
        mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(
            parent).info.experiment_id)
    else:
        mlflow.set_experiment(ctx.experiment)
    status = "FAILED"
    try:
        with mlflow.start_run(run_name=f"{run_name} {short_id()}",
                              tags={**base_tags, **(tags or {})},
                              log_system_metrics=system_metrics) as run:
            yield MlflowRun(mlflow, run)
        status = "FINISHED"
    finally:
        if parent and ctx.dvc_exp and not ctx.parent_run_id:
            # nobody else ends an experiment's parent: it ends with its latest stage, as that
            # stage ended (a failed stage must not leave it RUNNING forever)
            mlflow.MlflowClient().set_terminated(parent, status)


def _open_exp_parent(ctx: RunContext) -> str:
    """The parent run of a `dvc exp run` (no `ecgssl pipeline repro` made one)."""
    c = start_pipeline_run(replace(ctx, pipeline_run=None), ctx.pipeline_run,
                           {"runner": "dvc exp", "dvc.exp_name": ctx.dvc_exp})
    return c.parent_run_id


def parent_run_id(ctx: RunContext) -> str | None:
    """The pipeline's parent run: the context's, else the run tagged with its pipeline run.
    Kubeflow tasks take the second way (the run name comes from the pod's label), because a
    run id among a task's inputs would defeat KFP's cache."""
    if ctx.parent_run_id or not ctx.pipeline_run:
        return ctx.parent_run_id
    runs = connect(ctx).search_runs(
        search_all_experiments=True, output_format="list", max_results=1,
        filter_string=f"tags.`ecgssl.pipeline_run` = '{ctx.pipeline_run}' "
                      "and tags.stage = 'pipeline'")
    return runs[0].info.run_id if runs else None


def log_stage(ctx: RunContext, stage: str, params: dict, metrics: dict,
              run_name: str | None = None, tables: dict[str, list[dict]] | None = None,
              datasets: list[tuple[str, str, str | None]] = ()) -> None:
    """A child run for a stage that has no run of its own (ingest, reports, embed-text), logged
    only inside a pipeline run so that one-off CLI calls do not litter the experiment.
    `tables`: {artifact file (.json): rows} shown as MLflow tables; `datasets`: (table
    location, context, fingerprint) logged as the run's dataset inputs."""
    with start_run(ctx, run_name or stage, {"stage": stage}, system_metrics=False,
                   only_child=True) as run:
        run.log_params(flatten(params))
        run.log_metrics({k: v for k, v in flatten(metrics).items()
                         if isinstance(v, int | float) and not isinstance(v, bool)})
        for artifact_file, rows in (tables or {}).items():
            run.log_table(rows, artifact_file)
        for table, context, digest in datasets:
            run.log_dataset(table, context, digest=digest)


def start_pipeline_run(ctx: RunContext, pipeline_run: str, tags: dict | None = None
                       ) -> RunContext:
    """Open the parent run of one pipeline run; returns the context its stages run in."""
    mlflow = connect(ctx)
    ctx = replace(ctx, pipeline_run=pipeline_run)
    exp = mlflow.set_experiment(ctx.experiment)
    run = mlflow.MlflowClient().create_run(
        exp.experiment_id, run_name=f"pipeline {pipeline_run}",
        tags={**_base_tags(ctx), "stage": "pipeline", **(tags or {})})
    return ctx.with_parent(run.info.run_id)


def log_run_params(ctx: RunContext, run_id: str, params: dict) -> None:
    """params.yaml, flattened (`pretrain.lr`), as a run's params: what the runs list
    compares two pipeline runs by. Sorted, in batches of 100 (the REST API's limit)."""
    from mlflow.entities import Param
    items = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(params).items())]
    client = connect(ctx).MlflowClient()
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def log_run_metrics(ctx: RunContext, run_id: str, rows: dict[str, float]) -> None:
    """Step-0 metrics on a run in one call (a pipeline's parent: its headline numbers)."""
    import time

    from mlflow.entities import Metric
    if rows:
        now = int(time.time() * 1000)
        connect(ctx).MlflowClient().log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(rows.items())])


def end_pipeline_run(ctx: RunContext, status: str = "FINISHED") -> None:
    parent = parent_run_id(ctx)
    if parent:
        connect(ctx).MlflowClient().set_terminated(parent, status)


ENCODER_TAG = "encoder.sha256"   # on the pretrain run that wrote the encoder


def pretrain_run_of(ctx: RunContext, encoder_sha: str | None) -> str | None:
    """The MLflow run that pretrained the encoder with these weights (found by its tag, in
    any experiment of the tracking store), or None. A run id is not written into the
    encoder's files: those are DVC outputs, and a run id would change them on every run."""
    if not ctx.enabled or not encoder_sha:
        return None
    runs = connect(ctx).search_runs(
        search_all_experiments=True, output_format="list", max_results=1,
        order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`{ENCODER_TAG}` = '{encoder_sha}' and tags.stage = 'pretrain'")
    return runs[0].info.run_id if runs else None


def lineage(ctx: RunContext, encoder_sha: str | None, pretrain_config: dict) -> tuple[dict,
                                                                                       dict]:
    """(tags, params) linking a run to the pretraining it builds on: the pretrain run id,
    its data fingerprint and its config (params `pretrain.*`)."""
    run_id = pretrain_run_of(ctx, encoder_sha)
    tags = {ENCODER_TAG: str(encoder_sha),
            "pretrain.data_fingerprint": str(pretrain_config.get("data_fingerprint")),
            **({"pretrain.run_id": run_id} if run_id else {})}
    params = flatten({"pretrain": {k: v for k, v in pretrain_config.items()
                                   if not isinstance(v, list | dict)}})
    return tags, params
