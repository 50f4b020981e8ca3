"""MIT-BIH Arrhythmia Database: 2-lead 360 Hz records with beat annotations (.atr).

Splits follow de Chazal et al. (2004): DS1 trains, DS2 tests. No DS1 record is set aside as val:
a few records (207, 208, 119) hold most of DS1's fusion and many of its ventricular beats, and
holding any of them out starves training of those classes. Evaluation validates on
patient-level folds of DS1 instead. Paced records are excluded (AAMI EC57 practice). Record 201
is excluded too: it is the same subject as DS2's 202, and keeping it would put one patient in
both train and test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import wfdb

from ecgssl.data.sources.base import RecordError, Recording, Source, Task, list_records, read_wfdb

DS1 = {"101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122", "124",
       "201", "203", "205", "207", "208", "209", "215", "220", "223", "230"}
DS2 = {"100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210", "212",
       "213", "214", "219", "221", "222", "228", "231", "232", "233", "234"}
EXCLUDED = {
    "102": "paced record (AAMI EC57)", "104": "paced record (AAMI EC57)",
    "107": "paced record (AAMI EC57)", "217": "paced record (AAMI EC57)",
    "201": "same subject as DS2 record 202: excluded to keep patients in one split",
}

# AAMI EC57 beat classes from MIT-BIH beat symbols; other annotations are not beats.
AAMI = {**dict.fromkeys("NLRej", "N"), **dict.fromkeys("aAJS", "S"),
        **dict.fromkeys("VE", "V"), "F": "F", **dict.fromkeys("/fQ", "Q")}


def split_of(record: str) -> str | None:
    name = Path(record).name
    if name in DS1:
        return "train"
    return "test" if name in DS2 else None


class MitdbSource(Source):
    name = "mitdb"
    n_leads = 2
    split_rule = ("DS1 -> train, DS2 -> test (de Chazal 2004); no val split: evaluation "
                  "validates on patient-level folds of DS1, so the F/V-rich records stay in "
                  "training")

    def plan(self, root: Path) -> tuple[list[Task], list[dict]]:
        tasks, excluded, where = [], [], {}
        for rec in list_records(root, where):
            name = Path(rec).name
            if name in EXCLUDED:
                excluded.append({"record": rec, "reason": EXCLUDED[name]})
            elif split_of(rec) is None:
                excluded.append({"record": rec, "reason": "not in DS1 or DS2"})
            else:
                tasks.append(Task(rec, {"listed_at": where.get(rec)}))
        return tasks, excluded

    def read(self, root: Path, task: Task) -> Recording:
        sig, fs, leads, comments = read_wfdb(root, task.record, self.max_record_mb, self.n_leads)
        if not (root / f"{task.record}.atr").is_file():
            raise RecordError(f"annotation file missing: {task.record}.atr", "missing_file")
        try:
            ann = wfdb.rdann(str(root / task.record), "atr")
        except Exception as exc:
            raise RecordError(f"unreadable annotations {task.record}.atr: {exc}",
                              "bad_annotations") from None
        symbols = np.asarray(ann.symbol, dtype=object)
        is_beat = np.array([s in AAMI for s in symbols], dtype=bool)
        times = np.asarray(ann.sample, dtype=np.float64)[is_beat] / fs
        classes = np.array([AAMI[s] for s in symbols[is_beat]], dtype=object)
        age, sex = _demographics(comments)
        name = Path(task.record).name
        return Recording(signal=sig, fs=fs, leads=leads, split=split_of(task.record),
                         patient_id=name, events=(times, classes), age=age, sex=sex)


def _demographics(comments: list[str]) -> tuple[float | None, str | None]:
    # MIT-BIH headers start their comments with "<age> <sex> ...", e.g. "69 M 1085 1629 x1".
    if not comments:
        return None, None
    parts = comments[0].split()
    age = float(parts[0]) if parts and parts[0].isdigit() else None
    sex = parts[1] if len(parts) > 1 and parts[1] in ("M", "F") else None
    return age, sex
