"""Each kind of bad WFDB input, made by corrupting copies of real files: it is quarantined
with a reason (or handled by the documented rule) and the good records still land."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ecgssl.config import IngestConfig
from ecgssl.data.ingest import ingest
from ecgssl.data.table import read_manifest, read_table

GOOD = ["E07500", "E07501"]


def copy(sample: Path, source: str, records: list[str], dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for r in records:
        for f in (sample / source).glob(f"{r}.*"):
            shutil.copyfile(f, dst / f.name)
    return dst


def run(source, root, tmp_path, **cfg):
    out = tmp_path / "out"
    ingest(source, root, out, IngestConfig(workers=1, **cfg), progress=False)
    return read_manifest(out), out


def edit_header(path: Path, fn) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


@pytest.fixture
def c2020(tmp_path, sample):
    return copy(sample, "cinc2020", GOOD + ["JS20000"], tmp_path / "in")


def quarantined(m) -> dict[str, str]:
    return {q["record"]: q["kind"] for q in m["records_quarantined"]}


def test_missing_dat(c2020, tmp_path):
    (c2020 / "JS20000.mat").unlink()
    m, _ = run("cinc2020", c2020, tmp_path)
    assert quarantined(m) == {"JS20000": "missing_file"}
    assert "JS20000.mat" in m["records_quarantined"][0]["reason"]
    assert m["records_ok"] == 2


def test_truncated_dat(c2020, tmp_path):
    f = c2020 / "JS20000.mat"
    f.write_bytes(f.read_bytes()[:5000])
    m, _ = run("cinc2020", c2020, tmp_path)
    assert quarantined(m) == {"JS20000": "truncated"}


def test_unreadable_header(c2020, tmp_path):
    (c2020 / "JS20000.hea").write_bytes(b"\x00\xff garbage header\nnot wfdb at all\n")
    m, _ = run("cinc2020", c2020, tmp_path)
    assert quarantined(m) == {"JS20000": "bad_header"}


def test_wrong_lead_count(c2020, tmp_path):
    # Declare 8 signals in the header of a 12-lead file.
    edit_header(c2020 / "JS20000.hea",
                lambda ls: [ls[0].replace(" 12 ", " 8 ", 1)] + ls[1:9] + ls[13:])
    m, _ = run("cinc2020", c2020, tmp_path)
    assert quarantined(m) == {"JS20000": "lead_count"}
    assert "expected 12 leads, found 8" in m["records_quarantined"][0]["reason"]


def rewrite(root: Path, name: str, fn) -> None:
    """Rewrite a real record's digital samples through fn (as a format-16 .dat)."""
    import wfdb
    rec = wfdb.rdrecord(str(root / name), physical=False)
    wfdb.wrsamp(name, fs=rec.fs, units=rec.units, sig_name=rec.sig_name,
                d_signal=fn(rec.d_signal.copy()), fmt=["16"] * rec.n_sig, adc_gain=rec.adc_gain,
                baseline=rec.baseline, comments=rec.comments, write_dir=str(root))
    (root / f"{name}.mat").unlink()


def test_nan_samples(c2020, tmp_path):
    def invalid(d):
        d[1000:1010, 3] = -32768                          # WFDB's "no sample" value
        return d
    rewrite(c2020, "JS20000", invalid)
    m, _ = run("cinc2020", c2020, tmp_path)
    assert quarantined(m) == {"JS20000": "nonfinite"}
    assert "10 NaN/inf samples" in m["records_quarantined"][0]["reason"]


def test_unknown_lead_name(c2020, tmp_path):
    edit_header(c2020 / "JS20000.hea", lambda ls: [ls[0], ls[1].rsplit(" ", 1)[0] + " V7"]
                + ls[2:])
    m, _ = run("cinc2020", c2020, tmp_path)
    assert quarantined(m) == {"JS20000": "unknown_lead"}
    assert "'V7'" in m["records_quarantined"][0]["reason"]


def test_flat_lead_is_masked_not_quarantined(c2020, tmp_path):
    def flat_v3(d):
        d[:, 8] = 7
        return d
    rewrite(c2020, "JS20000", flat_v3)
    m, out = run("cinc2020", c2020, tmp_path)
    assert m["records_ok"] == 3 and not m["records_quarantined"]
    t = read_table(out)
    i = list(t.column("record")).index("JS20000")
    assert not t.lead_mask[i, 8] and t.lead_mask[i].sum() == 11
    assert not t.signal[i, 8].any()


def test_all_leads_flat_is_quarantined(tmp_path, sample):
    root = copy(sample, "cinc2017", ["A00001", "A00002"], tmp_path / "in")
    rewrite(root, "A00001", np.zeros_like)
    m, _ = run("cinc2017", root, tmp_path)
    assert quarantined(m) == {"A00001": "flat"}


def test_short_record_rule(tmp_path, sample):
    root = copy(sample, "cinc2017", ["A00001", "A00002", "A00005"], tmp_path / "in")
    # 7 s keeps one zero-padded window; 3 s is under half a window and is quarantined.
    edit_header(root / "A00001.hea", lambda ls: [" ".join(ls[0].split()[:3] + ["2100"])] + ls[1:])
    edit_header(root / "A00002.hea", lambda ls: [" ".join(ls[0].split()[:3] + ["900"])] + ls[1:])
    m, out = run("cinc2017", root, tmp_path)
    assert quarantined(m) == {"A00002": "short"}
    t = read_table(out)
    i = list(t.column("record")).index("A00001")
    assert t.signal[i, 0, 700:].sum() == 0 and np.abs(t.signal[i, 0, :700]).sum() > 0


def test_bad_metadata_row_and_missing_columns(tmp_path, sample):
    root = tmp_path / "in"
    shutil.copytree(sample / "ptbxl", root)
    db = root / "ptbxl_database.csv"
    lines = db.read_text().splitlines()
    lines[1] = lines[1].replace("{'NORM': 100.0", "{'NORM': oops", 1)
    db.write_text("\n".join(lines) + "\n")
    from ecgssl.errors import EcgsslError
    with pytest.raises(EcgsslError, match="scp_codes is not a dict literal"):
        run("ptbxl", root, tmp_path)       # the sample's only PTB-XL waveform is that row
    assert quarantined(read_manifest(tmp_path / "out"))["records100/00000/00001_lr"] == \
        "bad_metadata"
    db.write_text(db.read_text().replace("strat_fold", "fold"))
    with pytest.raises(EcgsslError, match="missing required columns: strat_fold"):
        run("ptbxl", root, tmp_path)


def test_nothing_readable_is_an_error_but_keeps_the_manifest(c2020, tmp_path):
    from ecgssl.errors import EcgsslError
    for f in c2020.glob("*.mat"):
        f.unlink()
    with pytest.raises(EcgsslError, match="no record of .* could be read"):
        run("cinc2020", c2020, tmp_path)
    assert len(read_manifest(tmp_path / "out")["records_quarantined"]) == 3
