"""PhysioNet/CinC Challenge 2020/2021: 12-lead ECGs with SNOMED-CT `# Dx:` codes in the header.

Rates and lengths vary by source database. Age and sex come from the header comments. Without
patient ids, the 80/10/10 split is a stable hash of the record name.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ecgssl.data.sources.base import Recording, Source, Task, hash_split, list_records, read_wfdb

_COMMENT = re.compile(r"^\s*#?\s*(\w+)\s*:\s*(.*)$")


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

    def plan(self, root: Path) -> tuple[list[Task], list[dict]]:
        where = {}
        return [Task(rec, {"listed_at": where.get(rec)}) for rec in list_records(root, where)], []

    def read(self, root: Path, task: Task) -> Recording:
        sig, fs, leads, comments = read_wfdb(root, task.record, self.max_record_mb, self.n_leads)
        meta = parse_comments(comments)
        dx = [c.strip() for c in meta.get("dx", "").split(",") if c.strip()]
        name = Path(task.record).name
        return Recording(signal=sig, fs=fs, leads=leads, split=hash_split(f"cinc2020/{name}"),
                         labels=sorted(set(dx)), age=parse_age(meta.get("age")),
                         sex=parse_sex(meta.get("sex")))
