"""Ingestion on the real sample: values match wfdb, windows/labels/splits follow the rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import wfdb

from ecgssl.config import IngestConfig
from ecgssl.data.ingest import ingest
from ecgssl.data.signal import LEADS
from ecgssl.data.table import read_manifest, read_table
from ecgssl.errors import EcgsslError


def native(source: str, fs: int, tmp_path: Path, sample: Path, records: list[str] | None = None):
    """Ingest at the native rate so that rows can be compared with wfdb sample for sample."""
    src = sample / source
    if records is not None:  # a copy holding only these records keeps the test quick
        src = tmp_path / "in"
        src.mkdir()
        for r in records:
            for f in (sample / source).glob(f"{r}.*"):
                (src / f.name).symlink_to(f)
    out = tmp_path / "out"
    ingest(source, src, out, IngestConfig(fs=fs, workers=1), progress=False)
    return read_table(out)


@pytest.mark.parametrize("source,fs,records", [
    ("mitdb", 360, ["100", "119"]),
    ("cinc2017", 300, ["A00001", "A00005", "A00102"]),
    ("cinc2020", 500, ["E07500", "JS20000", "HR00001", "Q0001"]),
])
def test_signal_equals_wfdb_physical_signal(source, fs, records, tmp_path, sample):
    t = native(source, fs, tmp_path, sample, records)
    ids = t.column("ecg_id")
    for rec in records:
        ref = wfdb.rdrecord(str(sample / source / rec))
        quantum = 1.0 / np.min(ref.adc_gain)
        rows = [i for i, e in enumerate(ids) if e.startswith(f"{source}/{rec}#")]
        assert len(rows) == ref.sig_len // (10 * fs) or (ref.sig_len < 10 * fs and len(rows) == 1)
        for i in rows[:3] + rows[-1:]:
            w = int(ids[i].split("#")[1])
            seg = ref.p_signal[w * 10 * fs:(w + 1) * 10 * fs]
            for ch, name in enumerate(ref.sig_name):
                lead = {"MLII": "II", "ECG": "I"}.get(name, name)
                got = t.signal[i, LEADS.index(lead), :len(seg)]
                np.testing.assert_allclose(got, seg[:, ch], atol=quantum / 2 + 1e-6)
                assert t.lead_mask[i, LEADS.index(lead)]
        absent = [j for j, name in enumerate(LEADS) if name not in
                  {{"MLII": "II", "ECG": "I"}.get(n, n) for n in ref.sig_name}]
        assert not t.lead_mask[rows][:, absent].any()
        assert not t.signal[rows][:, absent].any()


def test_ptbxl_record_matches_wfdb_and_metadata(tables, sample):
    t = read_table(tables["ptbxl"])
    assert len(t) == 1
    ref = wfdb.rdrecord(str(sample / "ptbxl/records100/00000/00001_lr"))
    np.testing.assert_allclose(t.signal[0].T, ref.p_signal, atol=0.5 / 1000 + 1e-6)
    row = t.meta.to_pylist()[0]
    assert row["ecg_id"] == "ptbxl/records100/00000/00001_lr#0"
    assert row["labels"] == ["LVOLT", "NORM", "SR"]
    assert row["report_device"] == "sinusrhythmus periphere niederspannung"
    assert (row["patient_id"], row["strat_fold"], row["split"]) == ("15709", 3, "train")
    assert (row["age"], row["sex"]) == (56.0, "F")
    m = read_manifest(tables["ptbxl"])
    assert m["records_ok"] == 1 and m["quarantined_by_kind"] == {"missing_file": 799}
    assert "scp_statements.csv" in m["sidecars"]
    assert (tables["ptbxl"] / "scp_statements.csv").is_file()


def test_mitdb_windows_labels_and_splits(tables):
    t = read_table(tables["mitdb"])
    m = read_manifest(tables["mitdb"])
    assert m["rows"] == 5 * 180                      # 650000 samples at 360 Hz: 180 full windows
    labels = dict(zip(t.column("ecg_id"), (list(x) for x in t.column("labels"))))
    # Hand-checked against the .atr files: 100 starts with an APC ('A' -> S) among normal
    # beats; its first PVC is at 1518.9 s (window 151); 119 has PVCs from 1.4 s on.
    assert labels["mitdb/100#0"] == ["N", "S"]
    assert labels["mitdb/100#1"] == ["N"]
    assert "V" in labels["mitdb/100#151"] and "V" not in labels["mitdb/100#150"]
    assert labels["mitdb/119#0"] == ["N", "V"]
    assert "V" in labels["mitdb/106#9"]
    split = dict(zip(t.column("record"), t.column("split")))
    assert split == {"100": "test", "105": "test", "101": "train", "106": "train", "119": "train"}
    assert t.lead_mask[:, LEADS.index("II")].all()
    assert t.signal.shape == (900, 12, 1000)


def test_excluded_records_are_named_in_the_manifest(tmp_path, sample):
    src = tmp_path / "mitdb"
    src.mkdir()
    for f in sample.glob("mitdb/100.*"):
        (src / f.name).symlink_to(f)
        (src / f.name.replace("100", "102")).symlink_to(f)
    ingest("mitdb", src, tmp_path / "out", IngestConfig(workers=1), progress=False)
    m = read_manifest(tmp_path / "out")
    assert m["records_excluded"] == [{"record": "102", "reason": "paced record (AAMI EC57)"}]
    assert m["records_ok"] == 1


@pytest.mark.parametrize("source", ["ptbxl", "mitdb", "cinc2017", "cinc2020"])
def test_no_patient_in_two_splits(tables, source):
    t = read_table(tables[source], columns=["record", "patient_id", "split"])
    seen: dict[str, set] = {}
    for rec, pid, split in zip(t.column("record"), t.column("patient_id"), t.column("split")):
        seen.setdefault(pid or rec, set()).add(split)
    assert all(len(s) == 1 for s in seen.values())
    assert set(t.column("split")) <= {"train", "val", "test"}


def test_cinc2017_labels_and_split_fractions(tables, sample):
    t = read_table(tables["cinc2017"], columns=["record", "labels", "split"])
    ref = dict(line.split(",") for line in (sample / "cinc2017/REFERENCE.csv").read_text().split())
    for rec, labs in zip(t.column("record"), t.column("labels")):
        assert list(labs) == [ref[rec]]
    m = read_manifest(tables["cinc2017"])
    assert m["records_ok"] == 210 and not m["records_quarantined"]
    per_split = {s: len({r for r, sp in zip(t.column("record"), t.column("split")) if sp == s})
                 for s in ("train", "val", "test")}
    assert 0.7 < per_split["train"] / 210 < 0.9 and per_split["val"] > 5 and per_split["test"] > 5


def test_cinc2020_labels_and_demographics(tables):
    t = read_table(tables["cinc2020"])
    rows = {r["record"]: r for r in t.meta.to_pylist()}
    assert rows["E07500"]["labels"] == ["426177001", "67741000119109"]
    assert (rows["E07500"]["age"], rows["E07500"]["sex"]) == (78.0, "M")
    assert rows["HR00001"]["labels"] == []        # that source emptied its Dx line
    assert t.lead_mask.all()


def test_table_reader_split_and_columns(tables):
    full = read_table(tables["cinc2017"])
    train = read_table(tables["cinc2017"], split="train", columns=["ecg_id"])
    assert train.meta.column_names == ["ecg_id"]
    assert train.signal.flags["C_CONTIGUOUS"] and train.signal.dtype == np.float32
    idx = {e: i for i, e in enumerate(full.column("ecg_id"))}
    for j, e in enumerate(train.column("ecg_id")[:20]):
        np.testing.assert_array_equal(train.signal[j], full.signal[idx[e]])
    assert len(train) == sum(1 for s in full.column("split") if s == "train")


def test_rerun_is_a_noop(tables):
    out = tables["cinc2020"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    m = ingest("cinc2020", Path(read_manifest(out)["input"]), out, IngestConfig(workers=2),
               progress=False)
    assert m.up_to_date
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_changed_options_rebuild_the_table(tmp_path, sample):
    out = tmp_path / "t"
    ingest("cinc2020", sample / "cinc2020", out, IngestConfig(workers=1), progress=False)
    m = ingest("cinc2020", sample / "cinc2020", out, IngestConfig(workers=1, window_s=5),
               progress=False)
    assert not m.up_to_date and m.raw["n_samples"] == 500
    assert read_table(out).signal.shape[2] == 500


def test_a_changed_ingest_code_rebuilds_the_table(tmp_path, sample):
    """The key named the ecgssl version, which no change bumps: after a fix to how records
    become rows (a new image on Kubeflow, a `git pull` by hand), a rerun said "up to date"
    and kept the old rows, and so did every stage after it (their keys follow this one)."""
    import shutil
    code = tmp_path / "code"
    shutil.copytree(Path(__file__).resolve().parents[2] / "src/ecgssl", code / "ecgssl")
    out = tmp_path / "t"

    def run() -> str:
        p = subprocess.run([sys.executable, "-m", "ecgssl.cli", "ingest", "mitdb", "--input",
                            str(sample / "mitdb"), "--output", str(out), "--workers", "1",
                            "--no-progress"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(code)})
        assert p.returncode == 0, p.stderr
        return p.stdout + p.stderr
    run()
    rows = read_manifest(out)["rows"]
    signal_py = code / "ecgssl/data/signal.py"     # half-overlapping windows from now on
    text = signal_py.read_text()
    assert "range(0, n - size + 1, size))" in text
    signal_py.write_text(text.replace("range(0, n - size + 1, size))",
                                      "range(0, n - size + 1, size // 2))"))
    again = run()
    assert "up to date" not in again
    assert read_manifest(out)["rows"] > rows


def test_killed_ingest_finishes_on_rerun_without_duplicates(tmp_path, sample):
    out = tmp_path / "t"
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  shard_records: 10\n  workers: 1\n")
    cmd = [sys.executable, "-m", "ecgssl.cli", "ingest", "cinc2017", "--input",
           str(sample / "cinc2017"), "--output", str(out), "--params", str(params),
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / "_parts" / "part-00003.json").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "_manifest.json").exists()          # readers see no half table
    with pytest.raises(EcgsslError, match="not a complete ECG table"):
        read_table(out)
    # A shard counts as finished once its sidecar is written; others are redone.
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")
            if (out / "_parts" / ("-".join(p.stem.split("-")[:2]) + ".json")).exists()}
    assert len(kept) >= 4
    subprocess.run(cmd, check=True, capture_output=True)
    m = read_manifest(out)
    ids = read_table(out, columns=["ecg_id"]).column("ecg_id")
    assert len(ids) == len(set(ids)) == m["rows"] == 664
    assert m["records_ok"] == 210
    for name, mtime in kept.items():                   # finished shards were not redone
        assert (out / name).stat().st_mtime_ns == mtime
    assert not list(out.glob(".*.tmp")) and not list(out.glob("_parts/.*.tmp"))
    for shard in m["shards"]:
        assert pq.read_metadata(out / shard).num_rows > 0


def test_missing_input_and_empty_input_are_errors(tmp_path):
    with pytest.raises(EcgsslError, match="does not exist"):
        ingest("mitdb", tmp_path / "nope", tmp_path / "o", IngestConfig(), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EcgsslError, match="no records found"):
        ingest("cinc2017", tmp_path / "empty", tmp_path / "o", IngestConfig(), progress=False)


def test_a_folder_of_another_source_names_the_exclusion_not_missing_headers(tmp_path, sample):
    """`ingest mitdb --input <cinc2017 folder>` said "no .hea headers" of a folder full of
    them: every record was found and excluded by MIT-BIH's rules (not in DS1/DS2)."""
    with pytest.raises(EcgsslError, match=r"none of the 210 records .* mitdb.*A00001: not in "
                       r"DS1 or DS2.*SOURCE") as e:
        ingest("mitdb", sample / "cinc2017", tmp_path / "o", IngestConfig(), progress=False)
    assert "no .hea headers" not in str(e.value)


def test_concurrent_ingest_into_one_output_refuses(tmp_path, sample):
    from filelock import FileLock
    out = tmp_path / "t"
    out.mkdir()
    with FileLock(str(out / ".ecgssl.lock")):
        with pytest.raises(EcgsslError, match="another `ecgssl ingest` is writing"):
            ingest("cinc2020", sample / "cinc2020", out, IngestConfig(workers=1),
                   progress=False)


def test_manifest_contract(tables):
    m = json.loads((tables["mitdb"] / "_manifest.json").read_text())
    for key in ("rows", "records_ok", "records_quarantined", "schema_version", "fs", "window_s",
                "source", "input_fingerprint"):
        assert key in m
    assert (m["fs"], m["window_s"], m["source"]) == (100, 10.0, "mitdb")


# --- fanned-out ingestion: `--part K/N` slices into one folder ------------------------------

def _slice_input(sample: Path, root: Path, broken: tuple[str, ...] = ()) -> Path:
    """The Challenge 2017 sample as links, with the headers of `broken` records made
    unreadable (quarantined, each in its own slice)."""
    root.mkdir()
    for f in (sample / "cinc2017").iterdir():
        if f.suffix == ".hea" and f.stem in broken:
            (root / f.name).write_text("not a header\n")
        else:
            (root / f.name).symlink_to(f)
    return root


def test_slices_give_the_table_one_ingest_gives(tmp_path, sample, tables):
    cfg = IngestConfig(workers=2, shard_records=16)     # 14 parts over 3 slices
    root = _slice_input(sample, tmp_path / "in", broken=("A00001", "A00040"))
    out = tmp_path / "t"
    for k in (2, 0):
        m = ingest("cinc2017", root, out, cfg, progress=False, part=(k, 3))
        assert not m.complete and not (out / "_manifest.json").exists()
        with pytest.raises(EcgsslError, match="not a complete ECG table"):
            read_table(out)
    m = ingest("cinc2017", root, out, cfg, progress=False, part=(1, 3))   # the last one
    assert m.complete and (out / "_manifest.json").exists()
    whole = ingest("cinc2017", root, tmp_path / "one", IngestConfig(workers=1,
                                                                     shard_records=16),
                   progress=False)
    a, b = read_table(out), read_table(tmp_path / "one")
    assert a.meta.equals(b.meta)
    np.testing.assert_array_equal(a.signal, b.signal)
    np.testing.assert_array_equal(a.lead_mask, b.lead_mask)
    # quarantined records of two slices, summed
    assert m.records_total == whole.records_total == 210 and m.records_ok == 208
    assert sorted(q["record"] for q in m.records_quarantined) == ["A00001", "A00040"]
    assert m.quarantined_by_kind == whole.quarantined_by_kind
    assert read_manifest(out)["shards"] == read_manifest(tmp_path / "one")["shards"]
    # the same rows as the session's 2-worker table of the unbroken sample, less two records
    full = read_table(tables["cinc2017"], columns=["record"])
    assert len(a) == len(full) - sum(r in ("A00001", "A00040") for r in full.column("record"))


def test_a_rerun_of_a_slice_is_a_noop(tmp_path, sample):
    cfg = IngestConfig(workers=1, shard_records=32)
    out = tmp_path / "t"
    ingest("cinc2017", sample / "cinc2017", out, cfg, progress=False, part=(0, 2))
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    m = ingest("cinc2017", sample / "cinc2017", out, cfg, progress=False, part=(0, 2))
    assert not m.complete and m.rows > 0          # its parts were there: nothing redone
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == before
    ingest("cinc2017", sample / "cinc2017", out, cfg, progress=False, part=(1, 2))
    done = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for k in (0, 1):
        assert ingest("cinc2017", sample / "cinc2017", out, cfg, progress=False,
                      part=(k, 2)).up_to_date
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == done
    # a whole-source run into the folder reuses the slices' parts
    assert ingest("cinc2017", sample / "cinc2017", out, cfg, progress=False).up_to_date


def test_slices_run_at_once_write_one_manifest(tmp_path, sample):
    out = tmp_path / "t"
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  shard_records: 8\n  workers: 1\n")
    procs = [subprocess.Popen([sys.executable, "-m", "ecgssl.cli", "ingest", "cinc2017",
                               "--input", str(sample / "cinc2017"), "--output", str(out),
                               "--params", str(params), "--part", f"{k}/4", "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k in range(4)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    # one slice (the last to finish) wrote the table; any other finds it written
    assert sum("rows (windows)" in log for log in logs) == 1, logs
    m = read_manifest(out)
    assert m["rows"] == 664 and m["records_ok"] == 210 and len(m["shards"]) == 27
    ids = read_table(out, columns=["ecg_id"]).column("ecg_id")
    assert len(set(ids)) == 664
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".sidecars-*"))


def test_part_option_is_checked(tmp_path, sample):
    from ecgssl.data.ingest import parse_part
    assert parse_part("2/4") == (2, 4) and parse_part(None) == (0, 1)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(EcgsslError, match="--part takes K/N"):
            parse_part(bad)


def test_a_record_listed_twice_is_ingested_once(tmp_path, sample):
    # A RECORDS file naming a record twice (two lists pasted together, or `sub/` plus
    # `sub/rec`) made two copies of its rows: ecg_id is the table's unique key.
    src = tmp_path / "cinc2017"
    (src / "sub").mkdir(parents=True)
    for r in ("A00001", "A00002"):
        for f in sample.glob(f"cinc2017/{r}.*"):
            (src / "sub" / f.name).symlink_to(f)
    (src / "RECORDS").write_text("sub/A00001\nsub/A00002\nsub/A00001\nsub/\n")
    ingest("cinc2017", src, tmp_path / "out", IngestConfig(workers=1), progress=False)
    m = read_manifest(tmp_path / "out")
    ids = read_table(tmp_path / "out", columns=["ecg_id"]).column("ecg_id")
    assert m["records_total"] == m["records_ok"] == 2
    assert len(ids) == len(set(ids)) == m["rows"]


def test_a_killed_slice_s_sidecar_staging_folder_is_removed_by_the_next_run(tmp_path, sample):
    """A slice killed while copying its sidecars leaves a `.sidecars-*` folder in the table;
    they piled up. The next writer, which holds the folder's lock as every copier does, must
    remove them."""
    out = tmp_path / "t"
    stale = out / ".sidecars-k1ll3d"
    stale.mkdir(parents=True)
    (stale / "scp_statements.csv").write_text("half a file")
    cfg = IngestConfig(workers=1)
    ingest("ptbxl", sample / "ptbxl", out, cfg, progress=False, part=(0, 2))
    assert not list(out.glob(".sidecars-*"))
    stale.mkdir()
    ingest("ptbxl", sample / "ptbxl", out, cfg, progress=False, part=(1, 2))
    assert read_manifest(out)["rows"] > 0 and not list(out.glob(".sidecars-*"))
    stale.mkdir()        # a whole-source run into the folder (up to date) removes it too
    assert ingest("ptbxl", sample / "ptbxl", out, cfg, progress=False).up_to_date
    assert not list(out.glob(".sidecars-*"))
