"""The fast WFDB path reads the same numbers, names and rates as wfdb.rdrecord."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import wfdb

from ecgssl.data import wfdb_fast
from ecgssl.data.sources.base import list_records, read_wfdb
from ecgssl.errors import RecordError


@pytest.mark.parametrize("source", ["ptbxl", "mitdb", "cinc2017", "cinc2020"])
def test_fast_path_equals_wfdb_on_every_bundled_record(sample, source):
    root = sample / source
    records = (["records100/00000/00001_lr"] if source == "ptbxl" else list_records(root))
    for rec in records:
        sig, h = wfdb_fast.read_record(root / rec)
        ref = wfdb.rdrecord(str(root / rec))
        assert h.sig_name == ref.sig_name and h.fs == ref.fs and h.units == ref.units
        assert h.comments == ref.comments
        np.testing.assert_allclose(sig.T, ref.p_signal, rtol=1e-6, atol=1e-6, err_msg=rec)


def test_other_layouts_are_left_to_wfdb(tmp_path):
    d = np.arange(200, dtype=np.int32).reshape(100, 2)
    wfdb.wrsamp("r", fs=250, units=["mV", "mV"], sig_name=["I", "II"], d_signal=d,
                fmt=["24", "24"], adc_gain=[200.0, 200.0], baseline=[0, 0], write_dir=str(tmp_path))
    with pytest.raises(wfdb_fast.Unsupported):
        wfdb_fast.read_record(tmp_path / "r")


def _ptbxl_copy(sample, tmp_path, edit):
    """The real PTB-XL record 00001_lr in tmp_path, its header passed through `edit`."""
    src = sample / "ptbxl" / "records100" / "00000"
    shutil.copyfile(src / "00001_lr.dat", tmp_path / "00001_lr.dat")
    hea = (src / "00001_lr.hea").read_bytes()
    (tmp_path / "00001_lr.hea").write_bytes(edit(hea))
    return tmp_path / "00001_lr"


def test_gain_float32_cannot_hold_gives_wfdbs_bits(sample, tmp_path):
    # 1000.0 -> 37.7 (and 0.3): the fast path rounded the gain to float32 before dividing,
    # 1 ulp away from wfdb.rdrecord (and the fallback path) on many samples.
    path = _ptbxl_copy(sample, tmp_path, lambda h: h.replace(b" 1000.0(0)/mV", b" 37.7(0)/mV", 6)
                       .replace(b" 1000.0(0)/mV", b" 0.3(0)/mV"))
    sig, h = wfdb_fast.read_record(path)
    ref = wfdb.rdrecord(str(path), return_res=32).p_signal.T
    assert list(h.adc_gain) == [37.7] * 6 + [0.3] * 6
    np.testing.assert_array_equal(sig, ref)


@pytest.mark.parametrize("fmt", ["16", "24"])      # the fast path, and wfdb's (format 24)
@pytest.mark.parametrize("micro, encoding", [("µ", "utf-8"), ("µ", "latin-1"),  # micro sign
                                             ("μ", "utf-8")])                    # Greek mu
def test_microvolt_units_written_with_mu_are_scaled_to_mv(sample, tmp_path, fmt, micro, encoding):
    # wfdb reads headers as ASCII dropping other bytes: "µV" came out as "V" (x1000 instead
    # of /1000, a 10^6 error), silently. Reading the same record in mV gives the reference.
    ref, _, _, _ = read_wfdb(sample / "ptbxl", "records100/00000/00001_lr")
    path = _ptbxl_copy(sample, tmp_path, lambda h: h.replace(b"1000.0(0)/mV", b"1.0(0)/" + (
        micro + "V").encode(encoding)))
    if fmt == "24":       # the same samples in a format only wfdb reads
        rec = wfdb.rdrecord(str(path), physical=False)
        wfdb.wrsamp("r24", fs=rec.fs, units=["mV"] * 12, sig_name=rec.sig_name,
                    d_signal=rec.d_signal, fmt=["24"] * 12, adc_gain=rec.adc_gain,
                    baseline=rec.baseline, write_dir=str(tmp_path))
        hea = (tmp_path / "r24.hea").read_bytes().replace(b"/mV", b"/" + (micro + "V").encode(
            encoding))
        (tmp_path / "r24.hea").write_bytes(hea)
        path = tmp_path / "r24"
        with pytest.raises(wfdb_fast.Unsupported):
            wfdb_fast.read_header(path)
    sig, _, _, _ = read_wfdb(tmp_path, path.name)
    np.testing.assert_allclose(sig, ref, rtol=1e-6)


def _as_format_24(sample, tmp_path):
    """The real PTB-XL record 00001_lr rewritten by wfdb in format 24 (one the fast path leaves
    to wfdb.rdrecord), header checksums included."""
    rec = wfdb.rdrecord(str(sample / "ptbxl/records100/00000/00001_lr"), physical=False)
    wfdb.wrsamp("r24", fs=rec.fs, units=rec.units, sig_name=rec.sig_name, d_signal=rec.d_signal,
                fmt=["24"] * 12, adc_gain=rec.adc_gain, baseline=rec.baseline,
                write_dir=str(tmp_path))
    with pytest.raises(wfdb_fast.Unsupported):
        wfdb_fast.read_header(tmp_path / "r24")
    return tmp_path / "r24"


def test_fallback_path_checks_header_checksums_too(sample, tmp_path):
    # A corrupt byte in a format-16 file is quarantined as `checksum` (fast path); in a format
    # wfdb reads it was taken as signal.
    path = _as_format_24(sample, tmp_path)
    sig, _, _, _ = read_wfdb(tmp_path, "r24")                # intact: read, same as wfdb
    np.testing.assert_array_equal(sig, wfdb.rdrecord(str(path), return_res=32).p_signal.T)
    raw = bytearray((tmp_path / "r24.dat").read_bytes())
    raw[3 * 12 * 500 + 1] ^= 0x10                            # sample 500 of lead I
    (tmp_path / "r24.dat").write_bytes(bytes(raw))
    with pytest.raises(RecordError, match="r24.*checksum") as exc:
        read_wfdb(tmp_path, "r24")
    assert exc.value.kind == "checksum"


def test_multi_segment_record_is_quarantined_with_its_reason(sample, tmp_path):
    # The fast path leaves multi-segment records to wfdb; the fallback asked the MultiRecord
    # header for `file_name`: an AttributeError quarantined as kind `error`, no reason given.
    src = sample / "ptbxl/records100/00000/00001_lr"
    for seg in ("seg1", "seg2"):
        shutil.copyfile(f"{src}.dat", tmp_path / f"{seg}.dat")
        (tmp_path / f"{seg}.hea").write_text(
            src.with_suffix(".hea").read_text().replace("00001_lr", seg))
    (tmp_path / "ms.hea").write_text("ms/2 12 100 2000\nseg1 1000\nseg2 1000\n")
    with pytest.raises(RecordError, match="ms: a multi-segment record") as exc:
        read_wfdb(tmp_path, "ms")
    assert exc.value.kind == "bad_header"
    assert read_wfdb(tmp_path, "seg1")[0].shape == (12, 1000)      # a segment reads
