"""What each Kubeflow component runs: one function per pipeline step.

A component (`components/<stage>/component.py`) is one import and one call into this module with
the local paths KFP gives its artifacts, so a cluster, `kfp.local` and the CLI all run the same
stage functions. Every step runs as a child of the pipeline's MLflow parent run, which `start`
opens and `finish` (the exit handler) closes.

    ecgssl pipeline run-local      # runs these steps through kfp.local
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from ecgssl.config import Params, params_from_dict
from ecgssl.errors import EcgsslError
from ecgssl.storage import stable_hash, staged
from ecgssl.tracking import (
    PARENT_ENV,
    PIPELINE_RUN_ENV,
    RunContext,
    end_pipeline_run,
    log_run_params,
    parent_run_id,
    start_pipeline_run,
)

STATUS = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELED": "KILLED"}


def _params(params: str) -> Params:
    """The pipeline's `params` argument: params.yaml as JSON text (see build.pipeline_params)."""
    import yaml
    return params_from_dict(yaml.safe_load(params or "{}") or {}, "pipeline argument `params`")


# The sections of params.yaml each step reads, besides `tracking` (its run context). KFP's
# cache key is a task's inputs: when every task took the whole params JSON, changing one
# evaluation setting ran ingestion, reports and pretraining (GPU hours) again. Each task takes
# its step's cut (the `params` component) instead.
STEP_SECTIONS = {"ingest": ("ingest",), "reports": ("reports",), "embed_text": ("embed_text",),
                 "pretrain": ("pretrain",), "evaluate": ("evaluate",), "register": (),
                 "promote": ("promote",)}


def step_params(params: str, step: str) -> str:
    """The pipeline's `params` cut to what `step` reads (STEP_SECTIONS, plus `tracking`), as
    JSON with sorted keys. The whole is validated, so a bad value fails the first cut."""
    if step not in STEP_SECTIONS:
        raise EcgsslError(f"step_params: unknown step {step!r}; choose one of "
                          f"{', '.join(STEP_SECTIONS)}")
    full = _params(params).model_dump(mode="json")
    return json.dumps({s: full[s] for s in (*STEP_SECTIONS[step], "tracking")}, sort_keys=True)


def _ctx(tracking: str, p: Params, parent: str = "", pipeline_run: str = "") -> RunContext:
    """The front door of a Kubeflow step: the run context from the pipeline's arguments and
    the pod's $ECGSSL_PIPELINE_RUN (its `pipeline/runid` label; kfp.local sets it too), by
    which stage runs find the parent run. With `tracking.enabled: false` no MLflow call."""
    env = {k: v for k, v in os.environ.items() if k != PARENT_ENV}   # parent: given or by tag
    ctx = RunContext.at_front_door(p.tracking, uri=tracking or None, env=env)
    return ctx.with_parent(parent, os.environ.get(PIPELINE_RUN_ENV) or pipeline_run)


def start(tracking: str, pipeline_run: str, params: str,
          arguments: dict | None = None) -> str:
    """Open the parent run; returns its id ("" when tracking is off). `arguments`: the
    pipeline's own run arguments (sources, tasks, ...), which override its `pipeline` section."""
    p = _params(params)
    ctx = _ctx(tracking, p, pipeline_run=pipeline_run)
    if not ctx.enabled:
        return ""
    # What this run does: a run submitted with `--arg sources=[mitdb]` ran mitdb, whatever
    # params.yaml's pipeline.sources says.
    from ecgssl.pipeline.build import PIPELINE_ARGS
    effective = p.model_dump(mode="json")
    effective["pipeline"] |= {PIPELINE_ARGS[k]: v for k, v in (arguments or {}).items()
                              if PIPELINE_ARGS.get(k)}
    # A retried start task (its pod died after creating the run) carries on with that run: a
    # second parent would split the children and never be closed by the exit handler.
    parent = parent_run_id(ctx) or start_pipeline_run(ctx, ctx.pipeline_run, {
        "params.hash": stable_hash(effective)[:16], "runner": "kubeflow"}).parent_run_id
    # The whole params.yaml on the parent, as `ecgssl pipeline repro` logs it: without it two
    # scheduled retrains could only be told apart by opening every child run. (Again on a
    # retried task: the same values, so MLflow accepts them.)
    log_run_params(ctx, parent, effective)
    return parent


def finish(tracking: str, pipeline_run: str, status: str, params: str) -> str:
    """Close the parent run with the pipeline's final state (the exit handler, which KFP lets
    depend on no task, so it finds the parent run by the pipeline run's name)."""
    state = STATUS.get(status, "FAILED")
    ctx = _ctx(tracking, _params(params), pipeline_run=pipeline_run)
    if ctx.enabled:
        end_pipeline_run(ctx, state)
    return state


def data_version(source: str, data_root: str, params: str = "") -> str:
    """The content fingerprint of `<data_root>/<source>` (a folder or s3:// prefix) and of
    the source's metadata CSV if it has one: an uncached task feeds it to the cached ingest,
    whose inputs are otherwise the same strings however the data under them changed."""
    from ecgssl.storage import source_version, stable_hash
    meta = _params(params).ingest.options_for(source).get("metadata")
    return stable_hash([source_version(f"{data_root.rstrip('/')}/{source}"),
                        source_version(meta, single=True) if meta else None])


def ingest(source: str, data_root: str, output: str, params: str, tracking: str):
    from ecgssl.data.ingest import ingest as run_ingest
    from ecgssl.data.ingest import staged_options
    p = _params(params)
    with staged() as io:   # data_root may be an s3:// prefix
        return run_ingest(source, io.input(f"{data_root.rstrip('/')}/{source}"), output,
                          p.ingest, progress=False, ctx=_ctx(tracking, p),
                          source_options=staged_options(io, p.ingest.options_for(source)))


def ingest_part(source: str, data_root: str, part: str, output: str, params: str,
                tracking: str):
    """Slice `part` ("K/N") of a source into its own folder (a ParallelFor task's output)."""
    from ecgssl.data.ingest import ingest as run_ingest
    from ecgssl.data.ingest import parse_part, staged_options
    p = _params(params)
    with staged() as io:   # from S3, the slice fetches its own records' files only
        root, fingerprint, fetch = io.input_records(f"{data_root.rstrip('/')}/{source}")
        return run_ingest(source, root, output, p.ingest, progress=False,
                          ctx=_ctx(tracking, p), part=parse_part(part),
                          source_options=staged_options(io, p.ingest.options_for(source)),
                          fingerprint=fingerprint, fetch=fetch)


def ingest_merge(slices: list[str], output: str, params: str, tracking: str):
    """The slices' folders as one table, the one `ingest` would write."""
    from ecgssl.data.ingest import merge_slices
    p = _params(params)
    return merge_slices(slices, output, ctx=_ctx(tracking, p))


def reports(tables: list[str], output: str, params: str, tracking: str):
    from ecgssl.reports.stage import run_reports
    p = _params(params)
    return run_reports(tables, output, p.reports, progress=False, ctx=_ctx(tracking, p))


def embed_text(table: str, output: str, params: str, tracking: str):
    from ecgssl.text.stage import run_embed_text
    p = _params(params)
    return run_embed_text(table, output, p.embed_text, progress=False, ctx=_ctx(tracking, p))


def pretrain(table: str, embeddings: str, output: str, params: str, tracking: str,
             model_uri: str = ""):
    """One-node pretraining into `output` (the Model artifact's local path). KFP uploads that
    folder only when the pod ends, so a pod killed mid-run (preempted, OOM) loses its
    checkpoints, and the task's retry started again at step 0. Where the artifact lives on
    S3 (`model_uri` s3://, or KFP's minio:// with an endpoint set by kfp.s3_env), each
    checkpoint is also pushed beside it, and pulled back first: a retry gets the same output
    URI (KFP's driver provisions it once per task), so it resumes. The copy goes once the
    run is done (the artifact then holds the checkpoints)."""
    from ecgssl.train.loop import pretrain as run_pretrain
    p = _params(params)
    ctx = _ctx(tracking, p)
    remote = checkpoints_uri(model_uri)
    if remote is None:
        return run_pretrain(table, embeddings, output, p.pretrain, progress=False, ctx=ctx)
    keep = CheckpointCopy(Path(output) / "checkpoints", remote)
    result = run_pretrain(table, embeddings, output, p.pretrain, progress=False, ctx=ctx,
                          resume=keep.fetch(), on_checkpoint=keep.push)
    keep.done()
    return result


def checkpoints_uri(model_uri: str) -> str | None:
    """Where a pretrain task's checkpoints outlive its pod: beside its Model artifact on S3;
    None where they cannot (a local pipeline root, or minio:// without an endpoint to reach
    it: the pod has no MinIO address, and S3 calls to AWS would only time out)."""
    uri = str(model_uri or "")
    if uri.startswith("minio://") and not any(
            os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")):
        return None
    if not uri.startswith(("s3://", "minio://")):
        return None
    from ecgssl.pipeline.trainjob import shared_uri
    return shared_uri(uri, "model artifact") + "-checkpoints"


class CheckpointCopy:
    """A run's checkpoints folder mirrored to `remote` as it is written. Best effort: a store
    that fails costs the resumability of a retry, never the training (one warning, then no
    more pushes)."""

    def __init__(self, local: Path, remote: str):
        self.local, self.remote, self.ok = local, remote, True

    def fetch(self) -> bool:
        """Pull an earlier attempt's checkpoints; True when there are any to resume from."""
        from ecgssl.storage import pull
        try:
            pull(self.remote, self.local)
        except EcgsslError as exc:
            if "no such object or prefix" not in str(exc):
                self._warn("cannot read", exc)
            return False
        return True

    def push(self) -> None:
        from ecgssl.storage import push
        if self.ok:
            try:
                push(self.local, self.remote)
            except (EcgsslError, OSError) as exc:
                self._warn("cannot push to", exc)

    def done(self) -> None:
        """The artifact now holds the checkpoints: drop the copy and our sync records."""
        from ecgssl.storage import drop_sync_records, remove_prefix
        drop_sync_records(self.local)
        if self.ok:
            try:
                remove_prefix(self.remote)
            except (EcgsslError, OSError) as exc:
                self._warn("cannot remove", exc)

    def _warn(self, what: str, exc: Exception) -> None:
        from ecgssl.render import warn
        from ecgssl.storage import redact
        self.ok = False
        warn(f"pretrain: {what} the checkpoint copy at {redact(self.remote)} ({exc}); a retry "
             "of this task would start again from step 0")


def pretrain_trainjob(table_uri: str, embeddings_uri: str, model_uri: str, output: str,
                      job: str, params: str, tracking: str) -> dict:
    """Pretrain on many nodes (pipeline.pretrain_nodes > 1): a Kubeflow Trainer TrainJob runs
    `ecgssl pretrain` under torchrun on every node, reading the table and embeddings from
    their S3 URIs and writing its run folder beside this task's Model artifact; the folder is
    then copied into `output` (the artifact). Returns metrics.json."""
    from ecgssl.pipeline import trainjob as tj
    from ecgssl.storage import drop_sync_records, pull, read_json
    p = _params(params)
    spec = tj.NodeSpec.from_json(job)
    table = tj.shared_uri(table_uri, "table")
    embeddings = tj.shared_uri(embeddings_uri, "embeddings")
    run = tj.shared_uri(model_uri, "model artifact") + "-trainjob"
    ctx = _ctx(tracking, p)
    env = {**tj.passed_env(), **(ctx.env() if ctx.enabled else {})}
    manifest = tj.trainjob_manifest(spec, tj.job_name(run), tj.current_namespace(), table,
                                    embeddings, run, params, env)
    tj.run_trainjob(manifest)
    local = pull(run, Path(output))
    drop_sync_records(local)
    if not (local / "metrics.json").is_file():
        raise EcgsslError(f"TrainJob {manifest['metadata']['name']} completed but {run} holds "
                          "no metrics.json: did rank 0 finish?")
    return read_json(local / "metrics.json")


def evaluate(encoder: str, table: str, task: str, modes: list[str], output: str,
             params: str, tracking: str):
    from ecgssl.evaluate.stage import run_evaluate
    p = _params(params)
    return run_evaluate(encoder, table, task, list(modes), output, p.evaluate, progress=False,
                        ctx=_ctx(tracking, p))


def register(encoder: str, evaluations: list[str], name: str, tracking: str,
             parent_run_id: str, params: str = ""):
    from ecgssl.registry.register import register as run_register
    files = [Path(e) / "metrics.json" for e in evaluations]
    ctx = _ctx(tracking, _params(params), parent=parent_run_id)
    r = run_register(encoder, name, ctx, None, files)
    _log_headline(ctx, files)
    return r


def _log_headline(ctx: RunContext, files: list[Path]) -> None:
    """The evaluations' headline metrics on the parent run, as `pipeline repro` logs them:
    the runs list compares two pipeline runs by them without opening their children."""
    from ecgssl.evaluate.stage import is_headline
    from ecgssl.storage import read_json
    from ecgssl.tracking import log_run_metrics, metric_key
    parent = parent_run_id(ctx) if ctx.enabled else None
    if parent:
        log_run_metrics(ctx, parent, {
            metric_key(k): float(v) for f in files if f.is_file()
            for k, v in read_json(f).items() if is_headline(k) and isinstance(v, int | float)})


def _registered_version(name: str, model_uri: str) -> str | None:
    """The version in `register`'s models:/NAME/VERSION ("" or None: judge @challenger)."""
    if not model_uri:
        return None
    prefix = f"models:/{name}/"
    version = model_uri[len(prefix):] if model_uri.startswith(prefix) else ""
    if not version.isdigit():
        raise EcgsslError(f"model_uri {model_uri!r} is not {prefix}<version> (the URI `register` "
                          "returned for this model name)")
    return version


def gate(name: str, params: str, tracking: str, model_uri: str = "") -> bool:
    """Would the version this run registered (`model_uri`) replace @champion? (decides only;
    `promote` acts). About that version only: @challenger may have moved to another run's."""
    from ecgssl.registry.register import promote as run_promote
    from ecgssl.registry.register import record_decision
    p = _params(params)
    ctx = _ctx(tracking, p)
    d = run_promote(name, p.promote.metric, ctx, p.promote.min_delta,
                    dry_run=True, n_boot=p.promote.bootstrap, seed=p.promote.seed,
                    version=_registered_version(name, model_uri))
    if not d.promoted and d.challenger != d.champion:
        # No promote task runs after a refusal: the gate records it, so the refused version
        # says why in the registry (as `ecgssl promote` does), not only in this task's log.
        record_decision(name, d, ctx, p.promote.min_delta)
    return d.promoted


def promote(name: str, params: str, tracking: str, model_uri: str = ""):
    from ecgssl.registry.register import promote as run_promote
    p = _params(params)
    version = _registered_version(name, model_uri)
    d = run_promote(name, p.promote.metric, _ctx(tracking, p), p.promote.min_delta,
                    n_boot=p.promote.bootstrap, seed=p.promote.seed, version=version)
    if not d.promoted and not (version and d.champion == version):   # a retry after the move
        raise EcgsslError(f"{name}: the gate passed but promotion was refused: {d.reason}")
    return d


def publish_metrics(metrics, values: dict) -> None:
    """`values` to a KFP Metrics artifact: logged for the UI, and written as JSON at its path.
    The file is the artifact's content on a cluster, and what kfp.local's cache checks before
    it serves the task again (an artifact without one is a cache miss every run)."""
    values = {k.replace("/", "."): float(v) for k, v in values.items()}
    for k, v in values.items():
        metrics.log_metric(k, v)
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(values, indent=1, sort_keys=True))


def publish_evaluation(m: dict, folder: str, title: str, metrics, report) -> None:
    """Headline metrics to a KFP Metrics artifact and an HTML page to an HTML artifact."""
    from ecgssl.evaluate.stage import is_headline
    publish_metrics(metrics, {k: v for k, v in m.items() if is_headline(k)})
    with open(report.path, "w") as fh:
        fh.write(html_report(title, folder, m))


def html_report(title: str, folder: str | Path, metrics: dict) -> str:
    """One self-contained HTML page: the headline metrics and every PNG of `folder` inline."""
    from ecgssl.evaluate.stage import is_headline
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
                   for k, v in sorted(metrics.items()) if is_headline(k))
    imgs = "".join(
        f'<h3>{html.escape(p.stem)}</h3><img src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}" style="max-width:640px">'
        for p in sorted(Path(folder).glob("*.png")))
    return (f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h2>{html.escape(title)}</h2><table border='1' cellpadding='4'>"
            f"<tr><th>metric</th><th>value</th></tr>{rows}</table>{imgs}</body></html>")


def reports_markdown(m) -> str:
    r = m.reports
    cov = r.translation_coverage
    lines = [f"# Reports ({r.mode})", "", f"- rows: {m.rows}",
             *(f"- {k}: {v}" for k, v in r.counts.items()),
             f"- translation coverage: {'n/a' if cov is None else f'{cov:.1%}'}",
             "- most frequent untranslated tokens: " + (", ".join(
                 f"{t} ({n})" for t, n in r.untranslated_top[:10]) or "none")]
    return "\n".join(lines) + "\n"


def table_metadata(m) -> dict:
    """What the KFP UI shows beside a table artifact (from the manifest the stage returned)."""
    return {"rows": m.rows, "source": m.source, "fs": m.fs, "window_s": m.window_s,
            "records_quarantined": len(m.records_quarantined)}
