"""What a source is, and the WFDB reading every source shares.

A source turns an input folder into `Task`s (one per record, small and picklable, planned in
the parent process) and reads one task into a `Recording` at its native rate (in a worker).
Everything after that (lead mapping, resampling, windowing, rows) is common: see ingest.py.
"""

from __future__ import annotations

import hashlib
import math
import os
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
    max_record_mb: float | None = None   # set by ingest (ingest.max_record_mb); passed to read_wfdb
    option_names: tuple[str, ...] = ()   # constructor options it takes (ingest.source_options)

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

    def options(self) -> dict:
        """Constructor options beyond `fs` (e.g. the wfdb source's metadata CSV): rebuilt from
        this in worker processes, and part of the ingest cache key."""
        return {}

    def warnings(self) -> list[str]:
        """Things about the input the user should be told after planning (not errors)."""
        return []


def hash_split(key: str, val: float = 0.1, test: float = 0.1) -> str:
    """Deterministic train/val/test split from a stable hash of the key (record or patient)."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if u < test else "val" if u < test + val else "train"


def list_records(root: Path, where: dict[str, str] | None = None) -> list[str]:
    """Record names under root: from RECORDS files (PhysioNet layout, folders expanded) or,
    without one, every header below root. A line naming something outside root (absolute,
    '..', '.', a folder listed twice) is kept as written, so that the record is quarantined
    with a reason instead of read; `where` gets `{record: "RECORDS line N"}` for every listed
    record, for those reasons."""
    seen: set[str] = set()

    def expand(folder: Path) -> list[str]:
        real = os.path.realpath(folder)
        if real in seen:        # 'sub/' listed twice, or a RECORDS loop through './'
            return []
        seen.add(real)
        listing = folder / "RECORDS"
        if not listing.is_file():
            return sorted(p.relative_to(root).as_posix()[:-len(".hea")]
                          for p in folder.rglob("*.hea"))
        names = []
        rel = listing.relative_to(root).as_posix()
        # names by string: a pathlib join per line costs more than the rest of planning
        prefix = "" if folder == root else folder.relative_to(root).as_posix() + "/"
        for n, line in enumerate(listing.read_text(errors="replace").splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            if line.endswith("/") and not unsafe_name(line.rstrip("/")):
                names.extend(expand(folder / line))
                continue
            name = line if unsafe_name(line) else prefix + line
            names.append(name)
            if where is not None:
                where.setdefault(name, f"{rel} line {n}")
        return names
    # a record listed twice (two lists pasted together, `sub/` and `sub/rec`) is read once:
    # its rows twice would break ecg_id's uniqueness
    return list(dict.fromkeys(expand(root)))


def unsafe_name(name: str) -> str | None:
    """Why a record name from a listing (RECORDS, ptbxl_database.csv) is refused, or None."""
    if not name:
        return "empty name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if any(p in ("", ".", "..") for p in name.replace("\\", "/").split("/")):
        return "'.', '..' or empty path parts"
    return None


def check_record_path(root: Path, task: Task) -> None:
    """RecordError("bad_path") unless the task's record is a plain relative name below root
    (no absolute path, no '..'); a dangling link is a missing file. Files that are symlinks
    are followed wherever they point (a folder of links, a DVC cache): whoever put the link
    in the input folder chose it; a line in a listing cannot."""
    where = task.meta.get("listed_at") or "record list"
    why = unsafe_name(task.record)
    if why:
        raise RecordError(f"{where}: record {task.record!r} is refused ({why}): records must "
                          "lie inside the input folder", "bad_path")
    hea = os.path.join(root, task.record + ".hea")
    if os.path.islink(hea) and not os.path.exists(hea):
        raise RecordError(f"{where}: {task.record}.hea is a dangling symlink", "missing_file")


def read_wfdb(root: Path, record: str, max_mb: float | None = None,
              n_leads: int | None = None) -> tuple[np.ndarray, float, list[str], list[str]]:
    """Read one WFDB record: ([C, N] float32 mV, fs, lead names, header comments).

    Raises RecordError naming what is wrong with the files: among others `checksum` when the
    samples do not match the header's checksums, `too_large` when the decoded signal would be
    over `max_mb` MB (reading takes a multiple of that in memory), `lead_count` when the
    header has other than `n_leads` signals (said before the samples are judged).
    """
    try:
        path = root / record
        h = wfdb_fast.read_header(path)
        _check_size(record, h.sig_len, len(h.sig_name), max_mb)
        if n_leads is not None and len(h.sig_name) != n_leads:
            raise RecordError(f"{record}: expected {n_leads} leads, found {len(h.sig_name)} "
                              f"({', '.join(h.sig_name)})", "lead_count")
        sig, h = wfdb_fast.read_record(path, h)
        names, units, comments, fs = h.sig_name, h.units, h.comments, h.fs
    except wfdb_fast.BadRecord as exc:
        raise RecordError(f"{record}: {exc}", exc.kind) from None
    except (wfdb_fast.Unsupported, OSError, ValueError):
        sig, names, units, comments, fs = _read_with_wfdb(root, record, max_mb)
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


def _check_size(record: str, sig_len: int | None, n_sig: int | None,
                max_mb: float | None) -> None:
    mb = (sig_len or 0) * (n_sig or 0) * 4 / 1e6
    if max_mb is not None and mb > max_mb:
        raise RecordError(f"{record}: {n_sig} signals x {sig_len} samples decode to {mb:.0f} MB, "
                          f"over ingest.max_record_mb = {max_mb:g}", "too_large")


_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}   # micro sign, Greek mu


def _read_with_wfdb(root: Path, record: str, max_mb: float | None = None):
    try:
        header = wfdb.rdheader(str(root / record))
        if not isinstance(header, wfdb.Record):
            # Read as one, its samples would come twice wherever its segments (headers of
            # their own) are listed too, as every header is without a RECORDS file.
            raise RecordError(f"{record}: a multi-segment record ({len(header.seg_name or [])}"
                              " segments) is not read as one; its segments are records of "
                              "their own: list those", "bad_header")
        for f in set(header.file_name or []):
            wfdb_fast.check_file_name(f, root / record)
        _check_size(record, header.sig_len, header.n_sig, max_mb)
        # the digital samples first, for the checksums the fast path checks too, then wfdb's
        # own conversion (what rdrecord(return_res=32) returns, to the bit)
        rec = wfdb.rdrecord(str(root / record), return_res=32, physical=False)
        if rec.d_signal is not None and rec.d_signal.shape[0] == rec.sig_len:
            _check_checksums(record, rec)
            rec.dac(expanded=False, return_res=32, inplace=True)
    except wfdb_fast.BadRecord as exc:
        raise RecordError(f"{record}: {exc}", exc.kind) from None
    except RecordError:
        raise
    except Exception as exc:  # wfdb raises bare ValueError/IndexError/...: say which file
        raise _diagnose(root, record, exc) from None
    sig = rec.p_signal
    if sig is None or sig.shape[0] != rec.sig_len or not rec.sig_len:
        held = sig if sig is not None else rec.d_signal
        got = 0 if held is None else held.shape[0]
        raise RecordError(f"truncated signal file for {record}: header says {rec.sig_len} "
                          f"samples, file holds {got}", "truncated")
    with open(wfdb_fast.header_path(root / record), "rb") as fh:
        units = wfdb_fast.units_as_written(fh.read(), list(rec.units or []))
    return (np.ascontiguousarray(sig.T), list(rec.sig_name), units,
            list(rec.comments or []), float(rec.fs))


def _check_checksums(record: str, rec: wfdb.Record) -> None:
    """RecordError("checksum") as the fast path raises it, for a record wfdb read (digital).
    Not for multi-frequency or skewed signals: their stored samples are not what was read."""
    if any((s or 1) != 1 for s in rec.samps_per_frame or []) or any(rec.skew or []):
        return
    bad = wfdb_fast.checksum_mismatch(rec.d_signal.T, list(rec.checksum or []))
    if bad is not None:
        raise RecordError(f"{record}: signal {rec.sig_name[bad]} does not match its header "
                          f"checksum {rec.checksum[bad]} (corrupt {rec.file_name[bad]}?)",
                          "checksum")


def _diagnose(root: Path, record: str, exc: Exception) -> RecordError:
    """Turn a failed wfdb read into a reason; only runs on the failure path."""
    path = root / record
    if not wfdb_fast.header_path(path).is_file():
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
