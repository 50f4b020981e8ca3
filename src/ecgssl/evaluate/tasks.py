"""Downstream tasks: which rows, which label space, multi-class or multi-label, which splits.

`TASKS` is the one list: a task is a `TaskSpec` entry (the dataset it reads, how native labels
map to classes, the class order, multi-label or not, and whether labels belong to a record or a
window). A task reads the table's own `split` column (PTB-XL folds, MIT-BIH DS1/DS2, hashed
records), so evaluation never re-splits and never mixes a patient into two splits; with an
external test table (`evaluate --test-data`), train and val come from the table and every row
of the test table is a test row.

User tasks (`evaluate.tasks.<name>` in params.yaml: dataset, classes or "all present",
multilabel, level) are merged into `TASKS` by `add_user_tasks` at each front door that reads
params, so every place that takes a task name takes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ecgssl.data.table import RowGroup, read_manifest, read_row_groups, row_groups
from ecgssl.errors import EcgsslError
from ecgssl.evaluate.rows import CACHE_BYTES, RowStore
from ecgssl.storage import is_s3, table_files

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
    # Where "every class present" is counted: "all" rows, or the "train" split only (user
    # tasks' "all present": a class the model never sees in training cannot be learned).
    classes_from: Literal["all", "train"] = "all"

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


BUILTIN_TASKS: tuple[str, ...] = tuple(TASKS)


def user_task_spec(t) -> TaskSpec:
    """A params.yaml task (config.UserTask) as a TaskSpec."""
    present = t.classes == "all present"
    return TaskSpec(t.dataset, multilabel=t.multilabel,
                    classes=None if present else tuple(t.classes), level=t.level,
                    classes_from="train" if present else "all",
                    help=t.help or f"user task over {t.dataset}")


def add_user_tasks(user: dict) -> dict[str, TaskSpec]:
    """Merge params.yaml's `evaluate.tasks` into TASKS (built-in names are refused by the
    config); returns TASKS."""
    for name, t in (user or {}).items():
        if name in BUILTIN_TASKS:
            raise EcgsslError(f"evaluate.tasks.{name}: {name} is a built-in task")
        TASKS[name] = user_task_spec(t)
    return TASKS


@dataclass
class TaskData:
    name: str
    classes: list[str]
    multilabel: bool
    x: RowStore              # float32 [N, 12, T], read from the table(s) when sliced
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


def _targets(spec: TaskSpec, labels: list[list[str]], table: Path | str, min_positives: int,
             split: np.ndarray | None = None, external_test: bool = False):
    """(classes, kept row positions, y) from each row's native labels. With an external test
    table (`external_test`: every "test" row is its), classes are counted without its rows:
    the label space never follows labels that only the test data has."""
    counted = [i for i in range(len(labels)) if split is None or split[i] == "train"] \
        if spec.classes_from == "train" else \
        [i for i in range(len(labels)) if not external_test or split[i] != "test"]
    if not spec.multilabel:
        classes = list(spec.classes) if spec.classes else \
            sorted({labels[i][0] for i in counted if labels[i]})
        keep = [i for i, labs in enumerate(labels) if labs and labs[0] in classes]
        return classes, keep, np.array([classes.index(labels[i][0]) for i in keep], np.int64)
    mapping = spec.label_map(table_files(table)) if spec.label_map else None
    mapped = [sorted({mapping[c] for c in labs if c in mapping} if mapping else set(labs))
              for labs in labels]
    counts = Counter(c for i in counted for c in mapped[i])
    classes = [c for c in spec.classes if c in counts] if spec.classes else \
        sorted(c for c, n in counts.items() if n >= min_positives)
    keep = [i for i, labs in enumerate(mapped) if labs or spec.keep_unlabelled]
    y = np.zeros((len(keep), len(classes)), dtype=np.float32)
    for j, i in enumerate(keep):
        for c in mapped[i]:
            if c in classes:
                y[j, classes.index(c)] = 1.0
    return classes, keep, y


META = ["ecg_id", "dataset", "record", "patient_id", "split", "labels", "lead_mask"]


@dataclass
class _Rows:
    """A table's rows of one dataset: metadata in memory, signal left in the row groups."""
    table: Path | str
    groups: list[RowGroup]
    group: np.ndarray          # [n]: index into `groups` of each row
    offset: np.ndarray         # [n]: its row within the group
    meta: dict[str, np.ndarray]
    mask: np.ndarray           # bool [n, 12]

    def column(self, name: str) -> np.ndarray:
        return self.meta[name]


def _rows(table: Path | str, spec: TaskSpec, name: str, what: str):
    """(the table's rows of the task's dataset, their positions 0..n-1): metadata and lead
    masks read row group by row group, no signal decoded."""
    n_samples = int(read_manifest(table)["n_samples"])
    groups = row_groups(table)
    cols: dict[str, list] = {c: [] for c in META if c != "lead_mask"}
    group, offset, masks = [], [], []
    for g, a in enumerate(read_row_groups(table, groups, META, n_samples)):
        keep = np.flatnonzero(a.column("dataset") == spec.dataset)
        for c in cols:
            cols[c].append(a.column(c)[keep])
        group.append(np.full(len(keep), g, np.int32))
        offset.append(keep.astype(np.int32))
        masks.append(a.lead_mask[keep])
    if not sum(len(k) for k in offset):
        raise EcgsslError(f"{table} has no {spec.dataset} rows, so it cannot serve task {name}"
                          f"{what}")
    t = _Rows(table, groups, np.concatenate(group), np.concatenate(offset),
              {c: np.concatenate(v) for c, v in cols.items()}, np.concatenate(masks))
    return t, np.arange(len(t.group))


def load_task(name: str, table: str | Path, min_positives: int = 1,
              test_table: str | Path | None = None, cache_bytes: int = CACHE_BYTES) -> TaskData:
    """The task's rows of `table`; with `test_table`, its train/val rows from `table` and
    every row of `test_table` (of the task's dataset) as the test rows. The signal (`x`) is
    read lazily from the tables, at most `cache_bytes` of decoded rows held at once."""
    spec = get_task(name)
    # an s3:// prefix stays one: its row groups are streamed, never mirrored
    table = str(table) if is_s3(table) else Path(table)
    t, rows = _rows(table, spec, name, "")
    parts = [(t, rows, np.asarray(t.column("split"))[rows])]
    if test_table is not None:
        test_table = str(test_table) if is_s3(test_table) else Path(test_table)
        n_main, n_test = (int(read_manifest(p)["n_samples"]) for p in (table, test_table))
        fs_main, fs_test = (int(read_manifest(p)["fs"]) for p in (table, test_table))
        if (n_main, fs_main) != (n_test, fs_test):
            raise EcgsslError(f"--test-data {test_table} has {n_test}-sample windows at "
                              f"{fs_test} Hz, --data {table} {n_main} at {fs_main} Hz; ingest "
                              "both at the same fs and window_s")
        tt, trows = _rows(test_table, spec, name, " (as --test-data)")
        own = parts[0][2]
        keep = own != "test"                 # the table's own test rows are not used
        parts = [(t, rows[keep], own[keep]),
                 (tt, trows, np.full(len(trows), "test", dtype=object))]
    labels = [list(p.column("labels")[i]) for p, r, _ in parts for i in r]
    split_all = np.concatenate([s for _, _, s in parts]).astype(object)
    classes, keep, y = _targets(spec, labels, table, min_positives, split_all,
                                external_test=test_table is not None)
    keep = np.asarray(keep, dtype=np.int64)
    split = split_all[keep]
    if not (split == "test").any():
        raise EcgsslError(f"{test_table or table}: task {name} has no test rows with its "
                          "labels; nothing to evaluate on")
    if spec.classes_from == "train" and not classes:
        raise EcgsslError(f"{table}: task {name} has no labelled {spec.dataset} rows in its "
                          "train split, so \"all present\" finds no class")

    def col(c):
        return np.concatenate([np.asarray(p.column(c), dtype=object)[r] for p, r, _ in parts]
                              )[keep]
    pid, rec = col("patient_id"), col("record")
    # The signal stays in the tables: a store of (table, row group, row) per task row, read
    # (and preprocessed) batch by batch; the lead masks are small and stay in memory.
    mask = np.concatenate([p.mask[r] for p, r, _ in parts])[keep]
    manifest = read_manifest(table)
    gbase = np.cumsum([0] + [len(p.groups) for p, _, _ in parts])
    x = RowStore([p.table for p, _, _ in parts],
                 [(i, g) for i, (p, _, _) in enumerate(parts) for g in p.groups],
                 np.concatenate([p.group[r] + gbase[i] for i, (p, r, _) in enumerate(parts)]
                                )[keep],
                 np.concatenate([p.offset[r] for p, r, _ in parts])[keep],
                 int(manifest["n_samples"]), int(manifest["fs"]), cache_bytes=cache_bytes)
    group = np.array([p if p else r for p, r in zip(pid, rec)], dtype=object)
    if test_table is not None:
        # The same patient or record name in both tables must not join a train group to a
        # test group (bootstrap, label fractions): test groups are the test table's own.
        group = np.array([("test:" if s == "test" else "") + str(g)
                          for g, s in zip(group, split)], dtype=object)
    return TaskData(name, classes, spec.multilabel, x, mask, y, split, group,
                    col("ecg_id"), rec, x.fs)
