"""PhysioNet/CinC Challenge 2017: single-lead AliveCor ECGs, 300 Hz, 9-61 s, labels N/A/O/~.

Labels come from REFERENCE.csv (or the original challenge's REFERENCE-v3.csv). The data has
no patient ids, so the 80/10/10 split is a stable hash of the record name.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ecgssl.data.sources.base import Recording, Source, Task, hash_split, list_records, read_wfdb
from ecgssl.errors import EcgsslError

REFERENCE_FILES = ("REFERENCE.csv", "REFERENCE-v3.csv")
CLASSES = ("N", "A", "O", "~")


def read_reference(root: Path) -> dict[str, str]:
    for name in REFERENCE_FILES:
        path = root / name
        if path.is_file():
            labels = {}
            with open(path, newline="", encoding="utf-8-sig") as fh:
                for lineno, row in enumerate(csv.reader(fh), 1):
                    if not row or row == ["record", "label"]:
                        continue
                    if len(row) < 2 or row[1].strip() not in CLASSES:
                        raise EcgsslError(f"{path}:{lineno}: expected 'record,label' with label "
                                          f"in {'/'.join(CLASSES)}, got {','.join(row)!r}")
                    labels[row[0].strip()] = row[1].strip()
            return labels
    return {}


class Cinc2017Source(Source):
    name = "cinc2017"
    n_leads = 1

    def plan(self, root: Path) -> tuple[list[Task], list[dict]]:
        labels, where = read_reference(root), {}
        tasks = [Task(rec, {"labels": [labels[Path(rec).name]] if Path(rec).name in labels else [],
                            "listed_at": where.get(rec)})
                 for rec in list_records(root, where)]
        return tasks, []

    def read(self, root: Path, task: Task) -> Recording:
        sig, fs, leads, _ = read_wfdb(root, task.record, self.max_record_mb, self.n_leads)
        name = Path(task.record).name
        return Recording(signal=sig, fs=fs, leads=leads, split=hash_split(f"cinc2017/{name}"),
                         patient_id=None, labels=task.meta["labels"])
