"""PhysioNet/CinC Challenge 2020/2021: 12-lead ECGs with SNOMED-CT `# Dx:` codes in the header.

Rates and lengths vary by source database. Age and sex come from the header comments. Without
patient ids, the 80/10/10 split is a stable hash of the record name.

Its `HR<ecg_id>` records are PTB-XL's ECGs (HR00001 is PTB-XL ecg_id 1, the same patient, age
and sex). Split by the record hash, most of PTB-XL's test folds would be pretrained on through
this source, and PTB-XL training ECGs (whose device reports state the diagnosis) would be
Challenge test records. Given PTB-XL's `ptbxl_database.csv` as `metadata`
(`ingest.source_options: {cinc2020: {metadata: .../ptbxl_database.csv}}`), HR records take
PTB-XL's patient and strat_fold instead (9 val, 10 test), as the ptbxl source splits them;
without it, ingest warns how many HR records were hash-split.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ecgssl.data.sources.base import Recording, Source, Task, hash_split, list_records, read_wfdb
from ecgssl.data.sources.ptbxl import fold_split, read_database
from ecgssl.errors import EcgsslError

_COMMENT = re.compile(r"^\s*#?\s*(\w+)\s*:\s*(.*)$")
_PTBXL_RECORD = re.compile(r"^HR(\d{5})$")      # a Challenge record that is a PTB-XL ECG


def read_ptbxl_folds(path: str | Path) -> dict[int, tuple[str, int]]:
    """{ecg_id: (patient_id, strat_fold)} of PTB-XL's ptbxl_database.csv; EcgsslError naming
    the file and line where it cannot be read so."""
    path = Path(path)
    if not path.is_file():
        raise EcgsslError(f"cinc2020 metadata (PTB-XL's ptbxl_database.csv) not found: {path}")
    out = {}
    for line, row in enumerate(read_database(path, ("ecg_id", "patient_id", "strat_fold")), 2):
        try:
            ecg, patient, fold = (int(float(row[k])) for k in ("ecg_id", "patient_id",
                                                               "strat_fold"))
        except (TypeError, ValueError):
            raise EcgsslError(f"{path}:{line}: ecg_id, patient_id and strat_fold must be "
                              "numbers") from None
        out[ecg] = (str(patient), fold)
    return out


def parse_comments(comments: list[str]) -> dict[str, str]:
    out = {}
    for c in comments:
        m = _COMMENT.match(c)
        if m:
            out[m.group(1).lower()] = m.group(2).strip()
    return out


def parse_age(text: str | None) -> float | None:
    try:
        age = float(text)
    except (TypeError, ValueError):
        return None
    return age if math.isfinite(age) and 0 <= age < 130 else None


def parse_sex(text: str | None) -> str | None:
    t = (text or "").strip().lower()
    return "M" if t in ("male", "m") else "F" if t in ("female", "f") else None


class Cinc2020Source(Source):
    name = "cinc2020"
    n_leads = 12
    option_names = ("metadata",)
    split_rule = ("80/10/10 by a stable hash of the record; with `metadata` (PTB-XL's "
                  "ptbxl_database.csv), HR records by PTB-XL's patient and strat_fold "
                  "(1-8 train, 9 val, 10 test)")

    def __init__(self, fs: float = 100, metadata: str | None = None):
        super().__init__(fs)
        self.metadata = metadata
        self.report: dict = {}

    def options(self) -> dict:
        return {"metadata": self.metadata} if self.metadata else {}

    def plan(self, root: Path) -> tuple[list[Task], list[dict]]:
        where = {}
        folds = read_ptbxl_folds(self.metadata) if self.metadata else {}
        tasks, hashed = [], []
        for rec in list_records(root, where):
            meta = {"listed_at": where.get(rec)}
            m = _PTBXL_RECORD.match(Path(rec).name)
            if m and int(m.group(1)) in folds:
                meta["ptbxl"] = folds[int(m.group(1))]
            elif m:
                hashed.append(rec)
            tasks.append(Task(rec, meta))
        matched = sum("ptbxl" in t.meta for t in tasks)
        self.report = {**({"file": str(self.metadata)} if self.metadata else {}),
                       "ptbxl_records_by_fold": matched,
                       "ptbxl_records_hash_split": len(hashed),
                       "ptbxl_records_hash_split_examples": hashed[:3]} \
            if self.metadata or hashed else {}
        return tasks, []

    def warnings(self) -> list[str]:
        n = self.report.get("ptbxl_records_hash_split")
        if not n:
            return []
        where = f"not in {self.metadata}" if self.metadata else \
            "without PTB-XL's ptbxl_database.csv (ingest.source_options.cinc2020.metadata)"
        return [f"{n} HR record(s) (PTB-XL's ECGs, e.g. "
                f"{', '.join(self.report['ptbxl_records_hash_split_examples'])}) split by a "
                f"record hash, {where}: with PTB-XL in the same pretraining, its test ECGs "
                "may be trained on"]

    def read(self, root: Path, task: Task) -> Recording:
        sig, fs, leads, comments = read_wfdb(root, task.record, self.max_record_mb, self.n_leads)
        meta = parse_comments(comments)
        dx = [c.strip() for c in meta.get("dx", "").split(",") if c.strip()]
        name = Path(task.record).name
        patient, fold = task.meta.get("ptbxl") or (None, None)
        split = fold_split(fold) if fold else hash_split(f"cinc2020/{name}")
        return Recording(signal=sig, fs=fs, leads=leads, split=split,
                         patient_id=patient,      # PTB-XL's, as in a ptbxl table
                         labels=sorted(set(dx)), age=parse_age(meta.get("age")),
                         sex=parse_sex(meta.get("sex")))
