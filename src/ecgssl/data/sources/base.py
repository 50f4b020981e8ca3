"""What a source is, and the WFDB reading every source shares.

A source turns an input folder into `Task`s (one per record, small and picklable, planned in
the parent process) and reads one task into a `Recording` at its native rate (in a worker).
Everything after that (lead mapping, resampling, windowing, rows) is common: see ingest.py.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import wfdb

from ecgssl.data import wfdb_fast
from ecgssl.errors import EcgsslError, RecordError


@dataclass(frozen=True)
class Task:
    record: str                      # path relative to the input root, no extension
    meta: dict = field(default_factory=dict)


@dataclass
class Recording:
    signal: np.ndarray               # [C, N] float32, mV
    fs: float
    leads: list[str]
    split: str
    patient_id: str | None = None
    labels: list[str] = field(default_factory=list)
    # Per-window labels for sources annotated in time (MIT-BIH beats): times in seconds
    # and a label each; a window's labels are the distinct labels inside it.
    events: tuple[np.ndarray, np.ndarray] | None = None
    strat_fold: int | None = None
    report_device: str | None = None
    age: float | None = None
    sex: str | None = None


class Source:
    """Subclasses set `name`/`n_leads` and implement `plan` and `read`; every source is built
    the same way, `SourceClass(fs)`, with the rate of the table it will feed."""
    name: str = ""
    n_leads: int | None = None       # leads every record must have; None = any
    split_rule: str = "train/val/test 80/10/10 by a stable hash of the patient (or record)"

    def __init__(self, fs: float = 100):
        self.fs = fs

    def plan(self, root: Path) -> tuple[list[Task], list[dict]]:
        """Tasks to read, and records left out on purpose as [{record, reason}]."""
        raise NotImplementedError

    def read(self, root: Path, task: Task) -> Recording:
        raise NotImplementedError

    def sidecars(self, root: Path, out_dir: Path) -> list[str]:
        """Copy files later stages need next to the table; returns their names."""
        return []


def hash_split(key: str, val: float = 0.1, test: float = 0.1) -> str:
    """Deterministic train/val/test split from a stable hash of the key (record or patient)."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if u < test else "val" if u < test + val else "train"


def list_records(root: Path) -> list[str]:
    """Record names under root: from RECORDS files (PhysioNet layout, folders expanded) or,
    without one, every header below root."""
    def expand(folder: Path) -> list[str]:
        listing = folder / "RECORDS"
        if not listing.is_file():
            return sorted(str(p.relative_to(root).with_suffix(""))
                          for p in folder.rglob("*.hea"))
        names = []
        for line in listing.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            if line.endswith("/"):
                names.extend(expand(folder / line))
            else:
                names.append(str((folder / line).relative_to(root)))
        return names
    return expand(root)


def read_wfdb(root: Path, record: str) -> tuple[np.ndarray, float, list[str], list[str]]:
    """Read one WFDB record: ([C, N] float32 mV, fs, lead names, header comments).

    Raises RecordError naming what is wrong with the files.
    """
    try:
        sig, h = wfdb_fast.read_record(root / record)
        names, units, comments, fs = h.sig_name, h.units, h.comments, h.fs
    except (wfdb_fast.Unsupported, OSError, ValueError):
        sig, names, units, comments, fs = _read_with_wfdb(root, record)
    bad = ~np.isfinite(sig)
    if bad.any():
        lead = names[int(np.nonzero(bad.any(axis=1))[0][0])]
        raise RecordError(f"{int(bad.sum())} NaN/inf samples in {record} (first in lead {lead})",
                          "nonfinite")
    for i, unit in enumerate(units):
        scale = _UNIT_TO_MV.get((unit or "mv").strip().lower())
        if scale is None:
            raise RecordError(f"{record}: lead {names[i]} has unknown unit {unit!r}",
                              "bad_header")
        if scale != 1.0:
            sig[i] *= scale
    if not math.isfinite(fs) or fs <= 0:
        raise RecordError(f"{record}: invalid sampling rate {fs!r}", "bad_header")
    return sig, fs, names, comments


_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3}


def _read_with_wfdb(root: Path, record: str):
    try:
        rec = wfdb.rdrecord(str(root / record), return_res=32)
    except Exception as exc:  # wfdb raises bare ValueError/IndexError/...: say which file
        raise _diagnose(root, record, exc) from None
    sig = rec.p_signal
    if sig is None or sig.shape[0] != rec.sig_len or not rec.sig_len:
        got = 0 if sig is None else sig.shape[0]
        raise RecordError(f"truncated signal file for {record}: header says {rec.sig_len} "
                          f"samples, file holds {got}", "truncated")
    return (np.ascontiguousarray(sig.T), list(rec.sig_name), list(rec.units or []),
            list(rec.comments or []), float(rec.fs))


def _diagnose(root: Path, record: str, exc: Exception) -> RecordError:
    """Turn a failed wfdb read into a reason; only runs on the failure path."""
    path = root / record
    if not path.with_suffix(".hea").is_file():
        return RecordError(f"waveform header missing: {record}.hea", "missing_file")
    try:
        header = wfdb.rdheader(str(path))
    except Exception as hexc:
        return RecordError(f"unreadable header {record}.hea: {hexc}", "bad_header")
    for f in sorted(set(header.file_name or [])):
        if not (path.parent / f).is_file():
            return RecordError(f"signal file missing: {Path(record).parent / f}", "missing_file")
    return RecordError(f"truncated or corrupt signal file for {record}: "
                       f"{type(exc).__name__}: {exc}", "truncated")


def require_file(root: Path, name: str) -> Path:
    p = root / name
    if not p.is_file():
        raise EcgsslError(f"{p} not found: the {name} file is required at the input root")
    return p
