"""A fast path for the WFDB records ECG databases are made of.

`wfdb.rdrecord` spends most of its time (~70 % on a 12-lead record) in header parsing that
goes through pandas lookups per field. For the common layout (one segment; every signal in one
file, format 16 or 212, one sample per frame, no skew) this module parses the header with
wfdb's own grammar (`wfdb.io.header`) and decodes the samples with numpy. Anything else
raises `Unsupported`, and the caller reads the record with `wfdb.rdrecord` instead.
tests/data/test_wfdb_fast.py checks both paths give the same numbers on every bundled record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from wfdb.io.header import parse_header_content, rx_record, rx_signal

INVALID = {"16": -32768, "212": -2048}   # WFDB's "no sample here" digital values


class Unsupported(Exception):
    """Not a layout the fast path reads; use wfdb.rdrecord."""


class BadRecord(Exception):
    """A record the fast path can read but must not use: `kind` as in RecordError."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def header_path(path: Path) -> Path:
    """record path -> its .hea. Not `with_suffix`: a record named `A00006.b` would read
    `A00006.hea`, another record's header."""
    return path.parent / (path.name + ".hea")


def checksum_mismatch(d: np.ndarray, checksums: list[int | None]) -> int | None:
    """Index of the first signal whose 16-bit sum of digital samples differs from its header
    checksum, else None. A header checksum of 0 (or none) is taken as "not recorded":
    Challenge 2017's headers carry 0 for every record."""
    sums = d.sum(axis=1, dtype=np.int64)
    for i, c in enumerate(checksums):
        if c and (int(sums[i]) - c) % 65536:
            return i
    return None


@dataclass
class Header:
    fs: float
    sig_len: int
    file_name: str
    fmt: str
    byte_offset: int
    adc_gain: np.ndarray
    baseline: np.ndarray
    units: list[str]
    sig_name: list[str]
    comments: list[str]
    checksum: list[int | None]


def read_header(path: Path) -> Header:
    # plain strings on this path (and in read_digital): pathlib's joins cost ~7 us each,
    # a tenth of reading a short record
    with open(f"{path}.hea", "rb") as fh:
        raw = fh.read()
    text = raw.decode("ascii", errors="ignore")     # as wfdb reads it
    lines, comments = parse_header_content(text)
    rec = rx_record.match(lines[0]) if lines else None
    if rec is None or rec["n_seg"] or not rec["sig_len"]:
        raise Unsupported("multi-segment or unusual record line")
    n_sig = int(rec["n_sig"])
    sigs = [rx_signal.match(line) for line in lines[1:1 + n_sig]]
    if n_sig == 0 or len(sigs) != n_sig or any(s is None for s in sigs):
        raise Unsupported("signal lines")
    if len({(s["file_name"], s["fmt"], s["byte_offset"]) for s in sigs}) != 1:
        raise Unsupported("signals in several files or formats")
    s0 = sigs[0]
    check_file_name(s0["file_name"], path)
    if s0["fmt"] not in INVALID or any(s["samps_per_frame"] not in ("", "1") or
                                       s["skew"] not in ("", "0") or not s["sig_name"]
                                       for s in sigs):
        raise Unsupported(f"format {s0['fmt']} or multi-frequency signals")
    gain = np.array([float(s["adc_gain"] or 0) or 200.0 for s in sigs])  # 0 means 200 (spec)
    base = np.array([int(s["baseline"]) if s["baseline"] else int(s["adc_zero"] or 0)
                     for s in sigs])
    return Header(fs=float(rec["fs"] or 250), sig_len=int(rec["sig_len"]),
                  file_name=s0["file_name"], fmt=s0["fmt"],
                  byte_offset=int(s0["byte_offset"] or 0), adc_gain=gain, baseline=base,
                  units=units_as_written(raw, [s["units"] or "mV" for s in sigs]),
                  sig_name=[s["sig_name"] for s in sigs],
                  comments=[c.strip(" \t#") for c in comments],
                  checksum=[int(s["checksum"]) if s["checksum"] else None for s in sigs])


def units_as_written(raw: bytes, units: list[str]) -> list[str]:
    """`units` as the ASCII read of header `raw` gives them (wfdb's read, and ours), with those
    that hold non-ASCII letters as written: that read drops the bytes, so a lead in "µV" read
    as "V" and came out 10^6 times too large."""
    if raw.isascii():
        return units
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    out = list(units)
    for i, line in enumerate(parse_header_content(text)[0][1:1 + len(units)]):
        s = rx_signal.match(line)
        if s and not s["units"].isascii():
            out[i] = s["units"]
    return out


def check_file_name(name: str, path: Path) -> None:
    """A header names its signal file; one in another folder ('../x.dat', '/etc/x') would make
    us read a file outside the input folder."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise BadRecord(f"{header_path(path).name}: signal file name {name!r} points outside "
                        "the record's folder", "bad_header")


def read_digital(path: Path, h: Header) -> np.ndarray:
    """[C, N] int16/int32 digital samples."""
    n_sig = len(h.sig_name)
    n = n_sig * h.sig_len
    f = os.path.join(os.path.dirname(path), h.file_name)
    try:
        size = os.stat(f).st_size - h.byte_offset
    except FileNotFoundError:
        raise Unsupported("signal file missing") from None
    if h.fmt == "16":
        if size < 2 * n:
            raise Unsupported("short file")
        d = np.fromfile(f, dtype="<i2", count=n, offset=h.byte_offset)
    else:  # 212: two 12-bit samples in three bytes
        nbytes = (3 * n + 1) // 2
        if size < nbytes:
            raise Unsupported("short file")
        raw = np.fromfile(f, dtype=np.uint8, count=nbytes, offset=h.byte_offset)
        raw = np.pad(raw, (0, -len(raw) % 3)).reshape(-1, 3).astype(np.int16)
        pairs = np.empty((raw.shape[0], 2), dtype=np.int16)
        pairs[:, 0] = raw[:, 0] | ((raw[:, 1] & 0x0F) << 8)
        pairs[:, 1] = raw[:, 2] | ((raw[:, 1] & 0xF0) << 4)
        d = pairs.reshape(-1)[:n]
        d[d >= 2048] -= 4096
    return d.reshape(h.sig_len, n_sig).T


def read_record(path: Path, h: Header | None = None) -> tuple[np.ndarray, Header]:
    """([C, N] float32 physical signal, header); NaN where the digital value is invalid.
    Raises BadRecord("checksum") when the samples do not sum to the header's checksums."""
    h = h or read_header(path)
    d = read_digital(path, h)
    bad = checksum_mismatch(d, h.checksum)
    if bad is not None:
        raise BadRecord(f"signal {h.sig_name[bad]} of {path.name} does not match its header "
                        f"checksum {h.checksum[bad]} (corrupt {h.file_name}?)", "checksum")
    gain32 = h.adc_gain.astype(np.float32)
    if np.array_equal(gain32, h.adc_gain):
        # a gain float32 holds exactly (200, 1000, ...): float32 arithmetic rounds once, to
        # the very float32 wfdb gets from its float64 division
        sig = (d.astype(np.float32) - h.baseline[:, None].astype(np.float32)) / gain32[:, None]
    else:
        # a gain like 0.3 or 37.7 would be rounded to float32 first, then the quotient: 1 ulp
        # off wfdb (and the fallback path) on a third of the samples. Divide as wfdb does.
        sig = ((d - h.baseline[:, None]) / h.adc_gain[:, None]).astype(np.float32)
    sig[d == INVALID[h.fmt]] = np.nan
    return sig, h
