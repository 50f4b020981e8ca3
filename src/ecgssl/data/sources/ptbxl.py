"""PTB-XL: 12-lead 10 s ECGs with SCP-ECG statements and the device's free-text report.

`ptbxl_database.csv` and `scp_statements.csv` sit at the input root with the waveform folders
`records100/` (100 Hz, `filename_lr`) and `records500/` (500 Hz, `filename_hr`). Target rates up
to 100 Hz read the 100 Hz files; higher rates read the 500 Hz files, so a resample never has to
invent bandwidth the file set does not have. Splits are PTB-XL's own patient-wise folds.
"""

from __future__ import annotations

import ast
import csv
import shutil
from pathlib import Path

from ecgssl.data.sources.base import RecordError, Recording, Source, Task, read_wfdb, require_file
from ecgssl.errors import EcgsslError

DATABASE = "ptbxl_database.csv"
STATEMENTS = "scp_statements.csv"
REQUIRED = ("ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "strat_fold",
            "filename_lr", "filename_hr")


def read_statements(folder: str | Path) -> dict[str, dict[str, str]]:
    """`folder/scp_statements.csv` as {code: row}: the one reader of PTB-XL's statement table
    (evaluation's label maps and zero-shot prompts both use it). The code is the first,
    unnamed column."""
    path = Path(folder) / STATEMENTS
    if not path.is_file():
        raise EcgsslError(f"{folder}: {STATEMENTS} is missing next to the table; ingest PTB-XL "
                          "with `ecgssl ingest ptbxl` (it copies the file)")
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        return {row[0]: dict(zip(header[1:], (v.strip() for v in row[1:])))
                for row in reader if row and row[0]}


def read_database(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a ptbxl_database.csv; EcgsslError naming it when a `required` column is
    missing. A stray non-UTF-8 byte in one report must not sink the whole database: it
    becomes U+FFFD in that report, and the row is used as usual."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise EcgsslError(f"{path}: not PTB-XL's ptbxl_database.csv, missing required "
                              f"columns: {', '.join(missing)}")
        return list(reader)


def fold_split(fold: int) -> str:
    return "test" if fold == 10 else "val" if fold == 9 else "train"


class PtbxlSource(Source):
    name = "ptbxl"
    n_leads = 12
    split_rule = "PTB-XL strat_fold 1-8 -> train, 9 -> val, 10 -> test (patient-wise folds)"

    @property
    def file_column(self) -> str:
        return "filename_lr" if self.fs <= 100 else "filename_hr"

    def plan(self, root: Path) -> tuple[list[Task], list[dict]]:
        db = require_file(root, DATABASE)
        require_file(root, STATEMENTS)
        rows = read_database(db, REQUIRED)
        tasks = []
        for i, row in enumerate(rows, start=2):
            rec = (row.get(self.file_column) or "").strip()
            tasks.append(Task(rec or f"{DATABASE}:line{i}", {
                **{k: row.get(k) for k in REQUIRED},
                "listed_at": f"{DATABASE} line {i} ({self.file_column})"}))
        return tasks, []

    def read(self, root: Path, task: Task) -> Recording:
        m = task.meta
        if not (m.get(self.file_column) or "").strip():
            raise RecordError(f"ecg_id {m.get('ecg_id')!r}: empty {self.file_column}",
                              "bad_metadata")
        try:
            codes = ast.literal_eval(m["scp_codes"] or "{}")
        except (ValueError, SyntaxError):
            codes = None
        if not isinstance(codes, dict):
            raise RecordError(f"ecg_id {m.get('ecg_id')!r}: scp_codes is not a dict literal: "
                              f"{m['scp_codes']!r}", "bad_metadata")
        fold = _float(m["strat_fold"])
        if fold is None or fold not in range(1, 11):
            raise RecordError(f"ecg_id {m.get('ecg_id')!r}: strat_fold {m['strat_fold']!r} is "
                              "not a fold 1..10", "bad_metadata")
        fold = int(fold)
        sig, fs, leads, _ = read_wfdb(root, task.record, self.max_record_mb, self.n_leads)
        return Recording(
            signal=sig, fs=fs, leads=leads, split=fold_split(fold),
            patient_id=_int_text(m["patient_id"]), labels=sorted(str(k) for k in codes),
            strat_fold=fold, report_device=(m["report"] or None),
            age=_float(m["age"]), sex={"0": "M", "1": "F"}.get(_int_text(m["sex"]) or ""))

    def sidecars(self, root: Path, out_dir: Path) -> list[str]:
        # Evaluation maps SCP codes to super/sub classes; ship the mapping with the table.
        shutil.copyfile(root / STATEMENTS, out_dir / STATEMENTS)
        return [STATEMENTS]


def _float(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _int_text(text: str | None) -> str | None:
    v = _float(text)
    return None if v is None or v != v else str(int(v))
