"""Downstream tasks: which rows, which label space, multi-class or multi-label, which splits.

`TASKS` is the one list: a task is a `TaskSpec` entry (the dataset it reads, how native labels
map to classes, the class order, multi-label or not, and whether labels belong to a record or a
window). A task reads the table's own `split` column (PTB-XL folds, MIT-BIH DS1/DS2, hashed
records), so evaluation never re-splits and never mixes a patient into two splits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ecgssl.data.table import ECGArrays, read_manifest, read_table
from ecgssl.errors import EcgsslError

LabelMap = Callable[[Path], dict[str, str]]   # table folder -> {native label: class}


@dataclass(frozen=True)
class TaskSpec:
    dataset: str                                  # rows of this `dataset` value
    multilabel: bool = True
    classes: tuple[str, ...] | None = None        # fixed order; None = every class present
    label_map: LabelMap | None = None             # None = native labels are the classes
    keep_unlabelled: bool = False                 # rows with no class stay (all negatives)
    level: Literal["record", "window"] = "record"  # what the labels describe
    f1_over: tuple[str, ...] | None = None        # a challenge F1 over these classes
    help: str = ""

    @property
    def f1_key(self) -> str | None:
        """`f1_nao` for F1 over N, A, O (the Challenge 2017 score)."""
        return "f1_" + "".join(c.lower() for c in self.f1_over) if self.f1_over else None


def _statements(column: str | None, flag: str) -> LabelMap:
    """PTB-XL statements with `flag` set, mapped to `column` (or to themselves)."""
    def label_map(table: Path) -> dict[str, str]:
        from ecgssl.data.sources.ptbxl import read_statements
        out = {}
        for code, row in read_statements(table).items():
            if row.get(flag) in ("1", "1.0"):
                target = row.get(column, "") if column else code
                if target:
                    out[code] = target
        return out
    return label_map


TASKS: dict[str, TaskSpec] = {
    "cinc2017-af": TaskSpec("cinc2017", multilabel=False, classes=("N", "A", "O", "~"),
                            f1_over=("N", "A", "O"),
                            help="Challenge 2017: normal, AF, other rhythm, noisy"),
    "mitdb-aami": TaskSpec("mitdb", classes=tuple("NSVFQ"), keep_unlabelled=True,
                           level="window", help="MIT-BIH AAMI beat classes per window, "
                           "DS1 -> DS2"),
    "cinc2020-dx": TaskSpec("cinc2020", help="Challenge 2020/21: SNOMED codes present"),
    "ptbxl-super": TaskSpec("ptbxl", label_map=_statements("diagnostic_class", "diagnostic"),
                            help="PTB-XL diagnostic superclasses"),
    "ptbxl-sub": TaskSpec("ptbxl", label_map=_statements("diagnostic_subclass", "diagnostic"),
                          help="PTB-XL diagnostic subclasses"),
    "ptbxl-form": TaskSpec("ptbxl", label_map=_statements(None, "form"),
                           help="PTB-XL form statements"),
    "ptbxl-rhythm": TaskSpec("ptbxl", label_map=_statements(None, "rhythm"),
                             help="PTB-XL rhythm statements"),
}


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
    record: np.ndarray       # str [N]: the record a window comes from
    fs: int = 100

    def part(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split == name)


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise EcgsslError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def _targets(spec: TaskSpec, labels: list[list[str]], table: Path, min_positives: int):
    """(classes, kept row positions, y) from each row's native labels."""
    if not spec.multilabel:
        classes = list(spec.classes)
        keep = [i for i, labs in enumerate(labels) if labs and labs[0] in classes]
        return classes, keep, np.array([classes.index(labels[i][0]) for i in keep], np.int64)
    mapping = spec.label_map(table) if spec.label_map else None
    mapped = [sorted({mapping[c] for c in labs if c in mapping} if mapping else set(labs))
              for labs in labels]
    counts = Counter(c for labs in mapped for c in labs)
    classes = [c for c in spec.classes if c in counts] if spec.classes else \
        sorted(c for c, n in counts.items() if n >= min_positives)
    keep = [i for i, labs in enumerate(mapped) if labs or spec.keep_unlabelled]
    y = np.zeros((len(keep), len(classes)), dtype=np.float32)
    for j, i in enumerate(keep):
        for c in mapped[i]:
            if c in classes:
                y[j, classes.index(c)] = 1.0
    return classes, keep, y


def load_task(name: str, table: str | Path, min_positives: int = 1) -> TaskData:
    spec = get_task(name)
    table = Path(table)
    t: ECGArrays = read_table(table, columns=["ecg_id", "dataset", "record", "patient_id",
                                              "split", "labels"], dataset=spec.dataset)
    rows = np.flatnonzero(t.column("dataset") == spec.dataset)
    if not len(rows):
        raise EcgsslError(f"{table} has no {spec.dataset} rows, so it cannot serve task {name}")
    labels = [list(t.column("labels")[i]) for i in rows]
    classes, keep, y = _targets(spec, labels, table, min_positives)
    idx = rows[keep]
    split = np.asarray(t.column("split"))[idx]
    if not (split == "test").any():
        raise EcgsslError(f"{table}: task {name} has no test rows; nothing to evaluate on")
    pid = t.column("patient_id")[idx]
    rec = t.column("record")[idx]
    group = np.array([p if p else r for p, r in zip(pid, rec)], dtype=object)
    return TaskData(name, classes, spec.multilabel, t.signal[idx], t.lead_mask[idx], y, split,
                    group, np.asarray(t.column("ecg_id"))[idx], np.asarray(rec, dtype=object),
                    int(read_manifest(table)["fs"]))
