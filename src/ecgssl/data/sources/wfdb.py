"""Any folder of WFDB records ("bring your own data"), with an optional labels CSV.

    ecgssl ingest wfdb --input DIR [--metadata FILE.csv] [--split test] [--dataset NAME]

Records are found recursively (a PhysioNet RECORDS file where there is one, else every `.hea`
below DIR), at any rate and with any lead set. Lead names are mapped to the canonical 12
(`lead_name`): the usual spellings (`I`, `aVR`, `V1`, `MLII`, `lead II`, `D1`, ...); a record
with a single lead of a name we cannot place (`ECG`, `ECG1`, `Lead`, ...) takes it as lead I,
the axis a one-lead device (hand to hand) records; in a record with several leads, leads with
unknown names are left out (and the record is quarantined as `unknown_lead` when none is left).

The CSV (optional) has a `record` column (path relative to DIR, no extension) and optionally
`labels` (`;`-separated), `patient_id`, `split` (train/val/test), `report_device`, `age`, `sex`.
Splits: `--split` forces one split for every record; else the CSV's `split` where given; else
80/10/10 by a stable hash of the patient (or, without one, the record), as other sources do.
Records without labels (no CSV row, or an empty `labels`) and CSV rows naming no record found
are counted, warned about and listed in the manifest (`metadata`).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ecgssl.data.signal import LEADS, lead_index
from ecgssl.data.sources.base import Recording, Source, Task, hash_split, list_records, read_wfdb
from ecgssl.data.sources.cinc2020 import parse_age, parse_sex
from ecgssl.errors import EcgsslError, RecordError

SPLITS = ("train", "val", "test")
COLUMNS = ("record", "labels", "patient_id", "split", "report_device", "age", "sex")
EXAMPLES = 20          # how many record names the manifest lists per kind of warning

# Spellings seen outside PhysioNet's own databases, upper-cased, after `_clean`.
_EXTRA = {"D1": "I", "D2": "II", "D3": "III", "DI": "I", "DII": "II", "DIII": "III",
          "LI": "I", "LII": "II", "LIII": "III", "AVR": "aVR", "AVL": "aVL", "AVF": "aVF",
          **{f"MLV{i}": f"V{i}" for i in range(1, 7)}, **{f"MV{i}": f"V{i}" for i in range(1, 7)}}
_PREFIX = re.compile(r"^(LEAD|ECG|EKG)[\s_\-]*(?=\S)", re.I)


def _clean(name: str) -> str:
    return _PREFIX.sub("", name.strip()).strip().upper().replace(" ", "")


def lead_name(name: str) -> str | None:
    """The canonical lead a header's signal name stands for, or None when we cannot place it."""
    try:
        return LEADS[lead_index(name)]
    except RecordError:
        pass
    c = _clean(name)
    if c in _EXTRA:
        return _EXTRA[c]
    try:
        return LEADS[lead_index(c)]
    except RecordError:
        return None


def read_metadata(path: Path) -> dict[str, dict]:
    """{record: row} of the labels CSV; EcgsslError naming the file and line when malformed."""
    if not path.is_file():
        raise EcgsslError(f"metadata file not found: {path}")
    rows: dict[str, dict] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        if "record" not in header:
            raise EcgsslError(f"{path}: the CSV needs a 'record' column (path relative to the "
                              f"input folder, no extension); found columns {header}")
        for lineno, raw in enumerate(reader, 2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()
                   if isinstance(v, str)}
            rec = row.get("record", "").replace("\\", "/")
            while rec.startswith("./"):
                rec = rec[2:]
            for ext in (".hea", ".dat", ".mat"):
                rec = rec.removesuffix(ext)
            if not rec:
                raise EcgsslError(f"{path}:{lineno}: empty 'record'")
            if rec in rows:
                raise EcgsslError(f"{path}:{lineno}: record {rec!r} is listed twice")
            split = row.get("split", "").lower()
            if split and split not in SPLITS:
                raise EcgsslError(f"{path}:{lineno}: split {row['split']!r} is not one of "
                                  f"{', '.join(SPLITS)}")
            row["split"] = split
            row["line"] = lineno
            rows[rec] = row
    return rows


def parse_labels(text: str | None) -> list[str]:
    """`;`-separated labels, stripped, empty ones dropped, first occurrence order kept (a
    multi-class task reads the first)."""
    out: list[str] = []
    for lab in (text or "").split(";"):
        lab = lab.strip()
        if lab and lab not in out:
            out.append(lab)
    return out


class WfdbSource(Source):
    name = "wfdb"
    n_leads = None
    option_names = ("metadata", "split", "dataset")
    split_rule = ("--split for every record, else the metadata CSV's split column, else "
                  "train/val/test 80/10/10 by a stable hash of the patient (or record)")

    def __init__(self, fs: float = 100, metadata: str | None = None, split: str | None = None,
                 dataset: str | None = None):
        super().__init__(fs)
        if split is not None and split not in SPLITS:
            raise EcgsslError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
        if dataset is not None and (not dataset.strip() or "/" in dataset):
            raise EcgsslError(f"--dataset must be a non-empty name without '/', got "
                              f"{dataset!r}")
        self.metadata, self.split = metadata, split
        self.name = dataset or WfdbSource.name
        self.report: dict = {}

    def options(self) -> dict:
        return {"metadata": self.metadata, "split": self.split, "dataset": self.name}

    def plan(self, root: Path) -> tuple[list[Task], list[dict]]:
        where: dict[str, str] = {}
        records = list_records(root, where)
        meta = read_metadata(Path(self.metadata)) if self.metadata else None
        tasks, unlabelled = [], []
        for rec in records:
            row = meta.get(rec, {}) if meta is not None else {}
            labels = parse_labels(row.get("labels"))
            if meta is not None and not labels:
                unlabelled.append(rec)
            patient = row.get("patient_id") or None
            split = self.split or row.get("split") or \
                hash_split(f"{self.name}/{patient or rec}")
            tasks.append(Task(rec, {"listed_at": where.get(rec), "labels": labels,
                                    "patient_id": patient, "split": split,
                                    "report_device": row.get("report_device") or None,
                                    "age": parse_age(row.get("age")),
                                    "sex": parse_sex(row.get("sex"))}))
        found = set(records)
        orphans = [r for r in (meta or {}) if r not in found]
        self.report = {} if meta is None else {
            "file": str(self.metadata), "rows": len(meta),
            "records_without_labels": len(unlabelled),
            "records_without_labels_examples": unlabelled[:EXAMPLES],
            "rows_without_record": len(orphans),
            "rows_without_record_examples": [
                {"record": r, "line": meta[r]["line"]} for r in orphans[:EXAMPLES]]}
        return tasks, []

    def warnings(self) -> list[str]:
        """What the user should know about the metadata (also in the manifest)."""
        r, out = self.report, []
        if r.get("records_without_labels"):
            out.append(f"{r['records_without_labels']} record(s) have no labels in {r['file']} "
                       f"(ingested unlabelled), e.g. "
                       f"{', '.join(r['records_without_labels_examples'][:3])}")
        if r.get("rows_without_record"):
            out.append(f"{r['rows_without_record']} row(s) of {r['file']} name no record found "
                       "in the input folder, e.g. " + ", ".join(
                           f"{e['record']} (line {e['line']})"
                           for e in r["rows_without_record_examples"][:3]))
        return out

    def read(self, root: Path, task: Task) -> Recording:
        sig, fs, names, _ = read_wfdb(root, task.record, self.max_record_mb)
        leads = [lead_name(n) for n in names]
        if len(names) == 1 and leads[0] is None:
            leads = ["I"]             # one unnamed lead: a hand-to-hand device's lead I
        keep = [i for i, lead in enumerate(leads) if lead is not None]
        if not keep:
            raise RecordError(f"{task.record}: no lead name we can place among "
                              f"{', '.join(map(repr, names))}", "unknown_lead")
        m = task.meta
        return Recording(signal=sig[keep], fs=fs, leads=[leads[i] for i in keep],
                         split=m["split"], patient_id=m["patient_id"], labels=m["labels"],
                         report_device=m["report_device"], age=m["age"], sex=m["sex"])
