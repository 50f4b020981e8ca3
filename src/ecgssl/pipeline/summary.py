"""What a pipeline run leaves for people: the headline numbers (`ecgssl summary`), and the small
committed `metrics/` folder DVC compares revisions and experiments by.

    ecgssl summary outputs                   # what `make run` prints at the end
    ecgssl summary outputs --write metrics   # the dvc.yaml `metrics` stage

`metrics/` holds only what a rerun reproduces (rounded numbers, no times, ids or paths), so a
fresh clone's `make run` leaves it, and dvc.lock, as committed:
- `pretrain.json`: first/final loss and steps;
- `eval.json`: `{task: {mode: {macro_auroc, ci_low, ci_high, macro_f1}}}` at the headline level;
- `roc/<task>-<mode>.csv`: the micro-averaged ROC curve (tpr at 51 fixed fpr points) of each
  headline model, from the evaluation's per-record scores (scores.parquet).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ecgssl.evaluate.stage import is_headline
from ecgssl.storage import atomic_path, read_json, write_json

RUN_RECORD = "pipeline_run.json"     # outputs/pipeline_run.json: the last tracked pipeline run
FPR_GRID = np.linspace(0, 1, 51)


def key_metrics(outputs: Path) -> list[tuple[str, str, float]]:
    """(metrics file relative to `outputs`, key, value) of pretraining losses and the headline
    evaluation metrics, in file order."""
    rows = []
    for f in sorted(Path(outputs).rglob("metrics.json")):
        rel = f.relative_to(outputs).parts
        if any(part.startswith(".") or part == "mlruns" for part in rel):
            continue        # a killed evaluate's staging folder, MLflow's own store
        for k, v in read_json(f).items():
            if (k.startswith("loss/") or is_headline(k)) and isinstance(v, float):
                rows.append((str(f.relative_to(outputs)), k, v))
    return rows


def _r(v) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def tracked_metrics(outputs: Path) -> tuple[dict, dict]:
    """(pretrain.json, eval.json) contents from a pipeline's output folder."""
    outputs = Path(outputs)
    pretrain = {}
    p = outputs / "pretrain" / "metrics.json"
    if p.is_file():
        m = read_json(p)
        pretrain = {"loss": {"first": _r(m.get("loss/first")), "final": _r(m.get("loss/final"))},
                    "steps": m.get("steps")}
    evals: dict = {}
    for f in sorted((outputs / "eval").glob("*/metrics.json")):
        m = read_json(f)
        for k, v in sorted(m.items()):
            if is_headline(k) and k.endswith("/macro_auroc"):
                mode, task, _ = k.split("/")
                evals.setdefault(task, {})[mode] = {
                    "macro_auroc": _r(v), "ci_low": _r(m.get(k + "_ci_low")),
                    "ci_high": _r(m.get(k + "_ci_high")),
                    "macro_f1": _r(m.get(f"{mode}/{task}/macro_f1"))}
        for k, v in m.items():
            if k.startswith("data/") and k.endswith("/test_records"):
                evals.setdefault(k.split("/")[1], {})["test_records"] = int(v)
    return pretrain, evals


def roc_curve_csv(y: np.ndarray, scores: np.ndarray) -> str:
    """Micro-averaged one-vs-rest ROC as `fpr,tpr` rows on a fixed fpr grid."""
    from sklearn.metrics import roc_curve
    yt, st = y.ravel(), scores.ravel()
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["fpr", "tpr"])
    if 0 < yt.sum() < len(yt):
        fpr, tpr, _ = roc_curve(yt, st)
        for x, t in zip(FPR_GRID, np.interp(FPR_GRID, fpr, tpr)):
            w.writerow([f"{x:.2f}", f"{t:.4f}"])
    return out.getvalue()


def write_tracked(outputs: Path, dest: Path) -> list[Path]:
    """Write the committed metrics folder (replacing what it wrote before); returns the files."""
    from ecgssl.evaluate.scores import FILE, read_scores
    outputs, dest = Path(outputs), Path(dest)
    pretrain, evals = tracked_metrics(outputs)
    (dest / "roc").mkdir(parents=True, exist_ok=True)
    written = [dest / "pretrain.json", dest / "eval.json"]
    write_json(written[0], pretrain)
    write_json(written[1], evals)
    curves = {}
    for f in sorted((outputs / "eval").glob(f"*/{FILE}")):
        df, meta = read_scores(f)
        classes = meta["classes"]
        for mode in sorted(df["mode"].unique()):
            d = df[df["mode"] == mode]
            curves[f"{meta['task']}-{mode}.csv"] = roc_curve_csv(
                d[[f"y.{c}" for c in classes]].to_numpy(),
                d[[f"score.{c}" for c in classes]].to_numpy(float))
    for old in (dest / "roc").glob("*.csv"):
        if old.name not in curves:
            old.unlink()
    for name, text in curves.items():
        path = dest / "roc" / name
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        written.append(path)
    return written


def run_facts(outputs: Path, ctx) -> dict:
    """What happened in the last pipeline run, for the summary: the MLflow run (URL), the
    registered version with its aliases, and the promotion decision (each when known)."""
    outputs = Path(outputs)
    facts: dict = {}
    for key, f in (("run", outputs / RUN_RECORD),
                   ("registration", outputs / "registry" / "encoder.json"),
                   ("promotion", outputs / "registry" / "promotion.json")):
        if f.is_file():
            facts[key] = read_json(f)
    reg = facts.get("registration")
    if reg and ctx.enabled:
        try:
            from ecgssl.tracking import connect
            v = connect(ctx).MlflowClient().get_model_version(reg["name"], reg["version"])
            facts["aliases"] = sorted(v.aliases)
        except Exception:   # the summary never fails on a tracking store that moved
            pass
    return facts


def ui_url(run: dict, tracking_uri: str) -> str:
    """Where the run is in the UI: the server's own address, or `make ui`'s default."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) \
        else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
