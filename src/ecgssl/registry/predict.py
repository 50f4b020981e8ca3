"""Batch scoring: a model (folder or models:/ / runs:/ URI) over an ECG table -> Parquet.

    ecgssl predict --model models:/ecgssl-cinc2017-af-classifier@champion \\
        --data outputs/tables/cinc2017 --output preds.parquet

Output columns: `ecg_id`, `dataset`, `record`, `window` (one row per table row; with
`--level record`, one row per record: `dataset`, `record`, `windows`), then one float32
column per class, named by the class (a classifier's calibrated probabilities), or per
`--label` text (an encoder's zero-shot probabilities). The class names, the model and the
table are also in the Parquet schema metadata (`ecgssl.classes`, JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ecgssl.data.signal import LEADS
from ecgssl.data.table import ARRAY_COLUMNS, read_manifest, read_row_group, row_groups
from ecgssl.errors import EcgsslError
from ecgssl.evaluate.metrics import mean_by
from ecgssl.progress import bar as progress_bar
from ecgssl.storage import atomic_path

ID_COLUMNS = ("ecg_id", "dataset", "record", "window")
BATCH = 256


@dataclass(frozen=True)
class Prediction:
    output: str
    rows: int
    classes: list[str]
    level: str
    missing_leads: dict[str, int]   # a lead the classifier was trained on -> rows without it


def load_model(folder: str | Path):
    import warnings
    # MLflow's "add type hints" note, not for our users. record=True: MLflow raises its own
    # filter to "once" around the note (filter_user_warnings_once), so an "ignore" filter
    # here never applied; recording catches it whatever the filters say.
    with warnings.catch_warnings(record=True):
        from ecgssl.registry.pyfunc import ECGModel
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise EcgsslError(f"{folder} is not a model folder (no config.json): pass an "
                          "evaluation's classifier-<mode> folder, a pretrain output, or a "
                          "models:/ or runs:/ URI")
    m = ECGModel()
    m._load(folder)
    return m


def run_predict(model_dir: str | Path, table: str | Path, output: str | Path,
                labels: list[str] | None = None, level: str = "window",
                progress: bool = True, model_name: str | None = None) -> Prediction:
    """Score every row of `table`; writes `output` (Parquet) atomically."""
    if level not in ("window", "record"):
        raise EcgsslError(f"--level is window or record, got {level!r}")
    model = load_model(model_dir)     # first: it imports pyfunc with MLflow's note silenced
    from ecgssl.registry.pyfunc import validate_labels
    if model.classes is not None:
        if labels:
            raise EcgsslError("--label is for encoders (zero-shot); this model is a classifier "
                              f"over {', '.join(model.classes)}")
        classes = model.classes
    else:
        if not labels:
            raise EcgsslError(f"{model_name or model_dir} is an encoder: pass --label TEXT "
                              "(repeat) to score zero-shot labels, or give a classifier")
        classes = validate_labels(labels)
    clash = sorted(set(classes) & {*ID_COLUMNS, "windows"})
    if clash or len(set(classes)) != len(classes):
        raise EcgsslError(f"class names must be distinct and not {', '.join(ID_COLUMNS)}: "
                          f"{clash or classes}")
    n = int(read_manifest(table)["n_samples"])
    if n != model.cfg["n_samples"]:
        raise EcgsslError(f"{table} has {n}-sample windows, the model takes "
                          f"{model.cfg['n_samples']}; ingest at the model's fs and window_s")
    # Row group by row group (local or s3://): a table far larger than memory (MIMIC-IV-ECG)
    # is scored holding one group's signal at a time.
    groups = row_groups(table)
    parts, metas = [], []
    trained = [LEADS.index(x) for x in getattr(model, "head_info", {}).get("leads", [])]
    missing = np.zeros(len(trained), dtype=np.int64)
    with progress_bar(total=sum(g.rows for g in groups), desc="predict", enabled=progress,
                      unit="row") as bar:
        for g in groups:
            t = read_row_group(table, g, [*ID_COLUMNS, *ARRAY_COLUMNS], n_samples=n)
            for i in range(0, len(t), BATCH):
                parts.append(model.scores(t.signal[i:i + BATCH], t.lead_mask[i:i + BATCH],
                                          None if model.classes is not None else classes))
                bar.update(min(BATCH, len(t) - i))
            metas.append(t.meta)
            missing += (~t.lead_mask[:, trained]).sum(0)
    scores = np.concatenate(parts).astype(np.float32, copy=False)
    meta = pa.concat_tables(metas)
    ids = {c: meta.column(c).to_numpy(zero_copy_only=False) for c in ID_COLUMNS}
    if level == "record":
        # A record's score is the mean of its windows', as evaluation scores record labels.
        key = np.array([f"{d}\0{r}" for d, r in zip(ids["dataset"], ids["record"])])
        first, means, counts = mean_by(key, scores)
        order = np.argsort(first)                          # records in table order
        scores = means.astype(np.float32)[order]
        cols = {"dataset": ids["dataset"][first][order], "record": ids["record"][first][order],
                "windows": counts[order].astype(np.int32)}
    else:
        cols = ids
    data = {k: pa.array(v) for k, v in cols.items()}
    data.update({c: pa.array(scores[:, j]) for j, c in enumerate(classes)})
    out = pa.table(data).replace_schema_metadata({"ecgssl.classes": json.dumps(classes),
                                                  "ecgssl.model": str(model_name or model_dir),
                                                  "ecgssl.table": str(table),
                                                  "ecgssl.level": level})
    with atomic_path(output) as tmp:
        pq.write_table(out, tmp)
    return Prediction(str(output), out.num_rows, list(classes), level,
                      {LEADS[i]: int(k) for i, k in zip(trained, missing) if k})
