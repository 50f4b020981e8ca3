"""Downstream tasks: which rows, which label space, multi-class or multi-label, which splits.

A task reads the table's own `split` column (PTB-XL folds, MIT-BIH DS1/DS2, hashed records), so
evaluation never re-splits and never mixes a patient into two splits.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgssl.data.table import ECGArrays, read_manifest, read_table
from ecgssl.errors import EcgsslError

TASKS = ("cinc2017-af", "mitdb-aami", "cinc2020-dx", "ptbxl-super", "ptbxl-sub", "ptbxl-form",
         "ptbxl-rhythm")


@dataclass
class TaskData:
    name: str
    classes: list[str]
    multilabel: bool
    x: np.ndarray            # float32 [N, 12, T]
    mask: np.ndarray         # bool [N, 12]
    y: np.ndarray            # multi-label: float32 [N, C]; multi-class: int64 [N]
    split: np.ndarray        # str [N]
    group: np.ndarray        # str [N]: patient (or record) for bootstrap and label fractions
    ids: np.ndarray          # str [N]: ecg_id

    def part(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split == name)


def _scp_map(table: Path, column: str, flag: str | None) -> dict[str, str]:
    path = Path(table) / "scp_statements.csv"
    if not path.is_file():
        raise EcgsslError(f"{table}: scp_statements.csv is missing next to the table; ingest "
                          "PTB-XL with `ecgssl ingest ptbxl` (it copies the file)")
    out = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            code = row.get("") or row.get("Unnamed: 0") or next(iter(row.values()))
            if flag and (row.get(flag) or "").strip() not in ("1", "1.0"):
                continue
            target = (row.get(column) or "").strip() if column else code
            if target:
                out[code] = target
    return out


def load_task(name: str, table: str | Path, min_positives: int = 1) -> TaskData:
    if name not in TASKS:
        raise EcgsslError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    table = Path(table)
    dataset = name.split("-")[0]
    read_manifest(table)
    t: ECGArrays = read_table(table, columns=["ecg_id", "dataset", "record", "patient_id",
                                              "split", "labels"], dataset=dataset)
    rows = np.flatnonzero(t.column("dataset") == dataset)
    if not len(rows):
        raise EcgsslError(f"{table} has no {dataset} rows, so it cannot serve task {name}")
    labels = [list(t.column("labels")[i]) for i in rows]
    multilabel = name != "cinc2017-af"
    if name == "cinc2017-af":
        classes = ["N", "A", "O", "~"]
        keep = [i for i, labs in enumerate(labels) if labs and labs[0] in classes]
        y = np.array([classes.index(labels[i][0]) for i in keep], dtype=np.int64)
    else:
        if name == "mitdb-aami":
            mapping = {c: c for c in "NSVFQ"}
        elif name == "cinc2020-dx":
            mapping = {c: c for labs in labels for c in labs}
        else:
            kind = name.split("-")[1]
            mapping = {"super": lambda: _scp_map(table, "diagnostic_class", "diagnostic"),
                       "sub": lambda: _scp_map(table, "diagnostic_subclass", "diagnostic"),
                       "form": lambda: _scp_map(table, None, "form"),
                       "rhythm": lambda: _scp_map(table, None, "rhythm")}[kind]()
        mapped = [sorted({mapping[c] for c in labs if c in mapping}) for labs in labels]
        counts = {}
        for labs in mapped:
            for c in labs:
                counts[c] = counts.get(c, 0) + 1
        classes = sorted(c for c, n in counts.items() if n >= min_positives)
        if name == "mitdb-aami":
            classes = [c for c in "NSVFQ" if c in counts]
        keep = [i for i, labs in enumerate(mapped) if labs or name == "mitdb-aami"]
        y = np.zeros((len(keep), len(classes)), dtype=np.float32)
        for j, i in enumerate(keep):
            for c in mapped[i]:
                if c in classes:
                    y[j, classes.index(c)] = 1.0
    idx = rows[keep]
    split = np.asarray(t.column("split"))[idx]
    if not (split == "test").any():
        raise EcgsslError(f"{table}: task {name} has no test rows; nothing to evaluate on")
    pid = t.column("patient_id")[idx]
    rec = t.column("record")[idx]
    group = np.array([p if p else r for p, r in zip(pid, rec)], dtype=object)
    return TaskData(name, classes, multilabel, t.signal[idx], t.lead_mask[idx], y, split, group,
                    np.asarray(t.column("ecg_id"))[idx])
