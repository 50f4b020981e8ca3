"""Per-item test scores of an evaluation (DIR/scores.parquet), what the promotion gate pairs.

One row per test item (record, or window for window-level tasks) and mode, at the headline
level and label fraction: `mode`, `item` (record or ecg_id), `group` (patient: the bootstrap
unit), `label` (true classes, `;`-joined), then per class `y.<class>` (0/1), `score.<class>`
and `pred.<class>` (the decision chosen on val, 0/1). The schema metadata `ecgssl` holds the
task, classes, multi-label flag, which classes macro AUROC averages and the test fingerprint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgssl.evaluate.metrics import onehot, predictions
from ecgssl.storage import atomic_path

FILE = "scores.parquet"


@dataclass
class ModeScores:
    items: np.ndarray       # str [N]
    groups: np.ndarray      # str [N]
    y: np.ndarray           # labels as the task keeps them (class index or [N, C] 0/1)
    scores: np.ndarray      # float [N, C]
    decisions: np.ndarray | None


def write_scores(path: Path, task: str, classes: list[str], multilabel: bool,
                 eligible: np.ndarray, fingerprint: str, modes: dict[str, ModeScores]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    cols: dict[str, list] = {"mode": [], "item": [], "group": [], "label": []}
    cols |= {f"{k}.{c}": [] for k in ("y", "score", "pred") for c in classes}
    for mode, m in modes.items():
        y = onehot(np.asarray(m.y), len(classes), multilabel).astype(np.int8)
        pred = onehot(predictions(m.scores, multilabel, m.decisions), len(classes),
                      multilabel).astype(np.int8)
        cols["mode"] += [mode] * len(y)
        cols["item"] += [str(i) for i in m.items]
        cols["group"] += [str(g) for g in m.groups]
        cols["label"] += [";".join(c for c, v in zip(classes, row) if v) for row in y]
        for j, c in enumerate(classes):
            cols[f"y.{c}"] += y[:, j].tolist()
            cols[f"score.{c}"] += m.scores[:, j].astype(np.float32).tolist()
            cols[f"pred.{c}"] += pred[:, j].tolist()
    meta = {"task": task, "classes": classes, "multilabel": multilabel,
            "eligible": [bool(e) for e in eligible], "test_fingerprint": fingerprint}
    table = pa.table(cols)
    if path.is_file():   # an earlier evaluation of other modes on the same test data stays
        old, old_meta = pq.read_table(path), read_scores(path)[1]
        if old_meta.get("test_fingerprint") == fingerprint and \
                old.schema.names == table.schema.names:
            import pyarrow.compute as pc
            keep = pc.invert(pc.is_in(old.column("mode"), pa.array(list(modes))))
            table = pa.concat_tables([old.filter(keep).replace_schema_metadata(None),
                                      table.cast(old.schema.remove_metadata())])
    table = table.replace_schema_metadata({"ecgssl": json.dumps(meta)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_scores(path: str | Path):
    """(DataFrame, metadata dict) of a scores file."""
    import pyarrow.parquet as pq
    t = pq.read_table(path)
    return t.to_pandas(), json.loads((t.schema.metadata or {}).get(b"ecgssl", b"{}"))
