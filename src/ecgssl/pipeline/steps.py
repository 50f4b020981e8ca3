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
import os
from contextlib import contextmanager
from pathlib import Path

from ecgssl.config import Params, params_from_dict, section
from ecgssl.errors import EcgsslError
from ecgssl.storage import stable_hash, staged
from ecgssl.tracking import (
    PIPELINE_RUN_ENV,
    connect,
    end_pipeline_run,
    parent_run_id,
    pipeline_env,
    start_pipeline_run,
)

STATUS = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELED": "KILLED"}


def _params(params: str) -> Params:
    """The pipeline's `params` argument: params.yaml as JSON text (see build.pipeline_params)."""
    import yaml
    return params_from_dict(yaml.safe_load(params or "{}") or {}, "pipeline argument `params`")


@contextmanager
def _run(tracking: str, p: Params | None = None, parent: str = ""):
    """Inside: MLflow goes to the pipeline's tracking URI, and stage runs are children of the
    pipeline's parent run: given here, or found by $ECGSSL_PIPELINE_RUN (see ecgssl.tracking).
    With tracking off (`pretrain.mlflow: false`) data stages make no MLflow call at all."""
    old = os.environ.get("MLFLOW_TRACKING_URI")
    if tracking:
        os.environ["MLFLOW_TRACKING_URI"] = tracking
    children = p is None or p.pretrain.mlflow
    try:
        with pipeline_env(parent or None,
                          os.environ.get(PIPELINE_RUN_ENV) if children else None):
            yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def start(tracking: str, pipeline_run: str, params: str) -> str:
    """Open the parent run; returns its id ("" when tracking is off). The pipeline run's name
    is $ECGSSL_PIPELINE_RUN where set (the pod's run-id label; kfp.local sets it too)."""
    p = _params(params)
    if not p.pretrain.mlflow:
        return ""
    with _run(tracking):
        return start_pipeline_run(p.pretrain.experiment,
                                  os.environ.get(PIPELINE_RUN_ENV) or pipeline_run,
                                  {"params.hash": stable_hash(p.model_dump())[:16],
                                   "runner": "kubeflow"})


def finish(tracking: str, pipeline_run: str, status: str, params: str) -> str:
    """Close the parent run with the pipeline's final state (the exit handler, which KFP lets
    depend on no task, so it finds the parent run by the pipeline run's name)."""
    state = STATUS.get(status, "FAILED")
    if not _params(params).pretrain.mlflow:
        return state
    with _run(tracking), pipeline_env(None, os.environ.get(PIPELINE_RUN_ENV) or pipeline_run):
        parent = parent_run_id(connect())
        if parent:
            end_pipeline_run(parent, state)
    return state


def ingest(source: str, data_root: str, output: str, params: str, tracking: str) -> dict:
    from ecgssl.data.ingest import ingest as run_ingest
    p = _params(params)
    with _run(tracking, p), staged() as io:   # data_root may be an s3:// prefix
        return run_ingest(source, io.input(f"{data_root.rstrip('/')}/{source}"), output,
                          p.ingest, progress=False)


def reports(tables: list[str], output: str, params: str, tracking: str) -> dict:
    from ecgssl.reports.stage import run_reports
    p = _params(params)
    with _run(tracking, p):
        return run_reports(tables, output, p.reports, progress=False)


def embed_text(table: str, output: str, params: str, tracking: str) -> dict:
    from ecgssl.text.stage import run_embed_text
    p = _params(params)
    with _run(tracking, p):
        return run_embed_text(table, output, p.embed_text, progress=False)


def pretrain(table: str, embeddings: str, output: str, params: str, tracking: str) -> dict:
    from ecgssl.train.loop import pretrain as run_pretrain
    p = _params(params)
    with _run(tracking, p):
        return run_pretrain(table, embeddings, output, p.pretrain, progress=False)


def evaluate(encoder: str, table: str, task: str, modes: list[str], output: str,
             params: str, tracking: str) -> dict:
    from ecgssl.evaluate.stage import run_evaluate
    p = _params(params)
    with _run(tracking, p):
        return run_evaluate(encoder, table, task, list(modes), output, p.evaluate,
                            progress=False)


def register(encoder: str, evaluations: list[str], name: str, tracking: str,
             parent_run_id: str) -> dict:
    from ecgssl.registry.register import register as run_register
    files = [Path(e) / "metrics.json" for e in evaluations]
    with _run(tracking, parent=parent_run_id):
        return run_register(encoder, name, None, files)


def gate(name: str, params: str, tracking: str) -> bool:
    """Would the new @challenger replace @champion? (decides only; `promote` acts)."""
    from ecgssl.registry.register import promote as run_promote
    cfg = section("promote", params=_params(params))
    with _run(tracking):
        return run_promote(name, cfg.metric, cfg.min_delta, dry_run=True).promoted


def promote(name: str, params: str, tracking: str) -> dict:
    from ecgssl.registry.register import promote as run_promote
    cfg = section("promote", params=_params(params))
    with _run(tracking):
        d = run_promote(name, cfg.metric, cfg.min_delta)
    if not d.promoted:
        raise EcgsslError(f"{name}: the gate passed but promotion was refused: {d.reason}")
    return {"promoted": d.promoted, "reason": d.reason, "champion": d.challenger}


def publish_evaluation(m: dict, folder: str, title: str, metrics, report) -> None:
    """Headline metrics to a KFP Metrics artifact and an HTML page to an HTML artifact."""
    for k, v in m.items():
        if k.endswith(("/macro_auroc", "/macro_f1")) and k.count("/") == 2:
            metrics.log_metric(k.replace("/", "."), float(v))
    with open(report.path, "w") as fh:
        fh.write(html_report(title, folder, m))


def html_report(title: str, folder: str | Path, metrics: dict) -> str:
    """One self-contained HTML page: the headline metrics and every PNG of `folder` inline."""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
                   for k, v in sorted(metrics.items())
                   if k.endswith(("/macro_auroc", "/macro_f1")) and isinstance(v, float))
    imgs = "".join(
        f'<h3>{html.escape(p.stem)}</h3><img src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}" style="max-width:640px">'
        for p in sorted(Path(folder).glob("*.png")))
    return (f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h2>{html.escape(title)}</h2><table border='1' cellpadding='4'>"
            f"<tr><th>metric</th><th>value</th></tr>{rows}</table>{imgs}</body></html>")


def reports_markdown(manifest: dict) -> str:
    r = manifest["reports"]
    cov = r["translation_coverage"]
    lines = [f"# Reports ({r['mode']})", "", f"- rows: {manifest['rows']}",
             *(f"- {k}: {v}" for k, v in r["counts"].items()),
             f"- translation coverage: {'n/a' if cov is None else f'{cov:.1%}'}",
             "- most frequent untranslated tokens: " + (", ".join(
                 f"{t} ({n})" for t, n in r["untranslated_top"][:10]) or "none")]
    return "\n".join(lines) + "\n"


def table_metadata(manifest: dict) -> dict:
    """What the KFP UI shows beside a table artifact (from the manifest the stage returned)."""
    return {"rows": manifest["rows"], "source": manifest["source"], "fs": manifest["fs"],
            "window_s": manifest["window_s"],
            "records_quarantined": len(manifest.get("records_quarantined", []))}
