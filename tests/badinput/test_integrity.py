"""Issue 14, the local half: nothing lost, nothing forged. Records outside the input folder,
corrupt signal files, dotted record names, bit rot in shards, failed ingests, readers during a
re-ingest, a full disk, killed workers and parents, huge records and file modes. Everything is
made from the bundled real PhysioNet files (S3 and MLflow cases: tests/integration/)."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from corrupt import flip_a_bit_silently
from test_badinput_wfdb import copy  # the sample-subset copier the WFDB catalogue uses

from ecgssl.config import IngestConfig, ReportsConfig
from ecgssl.data.ingest import ingest
from ecgssl.data.table import read_manifest, read_table
from ecgssl.errors import EcgsslError
from ecgssl.storage import write_json

ROOT = Path(__file__).resolve().parents[2]


def run(source, root, out, **cfg):
    ingest(source, root, out, IngestConfig(workers=1, **cfg), progress=False)
    return read_manifest(out)


def kinds(m) -> dict[str, str]:
    return {q["record"]: q["kind"] for q in m["records_quarantined"]}


def cli(*args, params: Path, **kw):
    """The CLI with a params file of its own (defaults for every key it does not set)."""
    return subprocess.run([sys.executable, "-m", "ecgssl.cli", *map(str, args), "--params",
                           str(params)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          **kw)


@pytest.fixture
def params(tmp_path) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text("ingest:\n  workers: 2\n")
    return p


# --- 2. records outside the input folder ---------------------------------------------------------

def test_records_lines_outside_the_input_are_quarantined_naming_the_line(tmp_path, sample):
    root = copy(sample, "cinc2017", ["A00007", "A00005"], tmp_path / "in")
    copy(sample, "cinc2017", ["A00001"], tmp_path / "secret")
    absolute = copy(sample, "cinc2017", ["A00002"], tmp_path / "abs") / "A00002"
    (root / "A00010.hea").symlink_to(tmp_path / "gone.hea")          # dangling
    (root / "RECORDS").write_text(f"A00007\n../secret/A00001\n{absolute}\n./\n./A00005\n"
                                  "A00010\n")
    m = run("cinc2017", root, tmp_path / "out")
    assert m["records_ok"] == 1
    assert kinds(m) == {"../secret/A00001": "bad_path", str(absolute): "bad_path",
                        "./": "bad_path", "./A00005": "bad_path", "A00010": "missing_file"}
    reasons = {q["record"]: q["reason"] for q in m["records_quarantined"]}
    assert reasons["../secret/A00001"].startswith("RECORDS line 2:")
    assert reasons["A00010"].startswith("RECORDS line 6:")
    assert set(read_table(tmp_path / "out", columns=["record"]).column("record")) == {"A00007"}


def test_ptbxl_filename_outside_the_input_is_quarantined(tmp_path, sample):
    root = tmp_path / "ptbxl"
    shutil.copytree(sample / "ptbxl", root)
    db = root / "ptbxl_database.csv"
    text = db.read_text()
    rec = next((sample / "ptbxl").rglob("*_lr.hea"))
    rel = rec.relative_to(sample / "ptbxl").with_suffix("").as_posix()
    shutil.copytree(root / "records100", tmp_path / "elsewhere")
    db.write_text(text.replace(rel, "../elsewhere/" + rel.split("/", 1)[1], 1))
    with pytest.raises(EcgsslError, match="no record .* could be read"):
        run("ptbxl", root, tmp_path / "out")
    q = read_manifest(tmp_path / "out")["records_quarantined"]
    bad = [x for x in q if x["kind"] == "bad_path"]
    assert len(bad) == 1 and "ptbxl_database.csv line" in bad[0]["reason"]


# --- 9. WFDB checksums, 10. record names with dots -----------------------------------------------

def test_corrupt_samples_that_break_the_header_checksum_are_quarantined(tmp_path, sample):
    root = copy(sample, "cinc2020", ["E07500", "E07501", "JS20000"], tmp_path / "in")
    f = root / "JS20000.mat"
    data = bytearray(f.read_bytes())
    data[5000] ^= 0x10                      # one flipped bit inside the samples
    f.write_bytes(bytes(data))
    m = run("cinc2020", root, tmp_path / "out")
    assert kinds(m) == {"JS20000": "checksum"}
    assert "checksum" in m["records_quarantined"][0]["reason"]
    assert m["records_ok"] == 2


def test_a_record_name_with_dots_reads_its_own_header(tmp_path, sample):
    root = copy(sample, "cinc2017", ["A00006"], tmp_path / "in")
    src = sample / "cinc2017"
    # WFDB's grammar allows no dot inside the header, so only the file name has one
    (root / "A00006_b.mat").write_bytes((src / "A00007.mat").read_bytes())
    (root / "A00006.b.hea").write_text((src / "A00007.hea").read_text()
                                       .replace("A00007.mat", "A00006_b.mat"))
    m = run("cinc2017", root, tmp_path / "out")
    assert m["records_ok"] == 2 and not m["records_quarantined"]
    t = read_table(tmp_path / "out")
    rec = list(t.column("record"))
    a, b = t.signal[rec.index("A00006")], t.signal[rec.index("A00006.b")]
    assert not np.array_equal(a, b)                      # not A00006 read twice
    ref = run("cinc2017", copy(sample, "cinc2017", ["A00007"], tmp_path / "ref"),
              tmp_path / "ref-out")
    assert ref["records_ok"] == 1
    np.testing.assert_array_equal(b, read_table(tmp_path / "ref-out").signal[0])


# --- 14. one huge record -----------------------------------------------------------------------

def test_a_record_over_max_record_mb_is_quarantined(tmp_path, sample):
    root = copy(sample, "cinc2017", ["A00001", "A00005"], tmp_path / "in")
    # A00001: 9,000 samples = 0.036 MB decoded; A00005: 18,000 = 0.072 MB
    m = run("cinc2017", root, tmp_path / "out", max_record_mb=0.05)
    assert kinds(m) == {"A00005": "too_large"}
    assert "max_record_mb" in m["records_quarantined"][0]["reason"]
    assert m["options"]["max_record_mb"] == 0.05


# --- 7. a failed ingest stays failed -----------------------------------------------------------

def test_a_table_with_no_rows_is_never_up_to_date_and_stages_refuse_it(tmp_path, sample,
                                                                       params):
    from ecgssl.reports.stage import run_reports
    root = copy(sample, "cinc2017", ["A00001", "A00002"], tmp_path / "in")
    for f in root.glob("*.mat"):
        f.write_bytes(b"")                               # nothing readable
    out = tmp_path / "out"
    for _ in range(2):                                   # the rerun fails again, never rc 0
        with pytest.raises(EcgsslError, match="no record of .* could be read"):
            run("cinc2017", root, out)
    assert read_manifest(out)["rows"] == 0
    p = cli("ingest", "cinc2017", "--input", root, "--output", out, "--no-progress",
            params=params)
    assert p.returncode == 2 and "up to date" not in p.stderr
    with pytest.raises(EcgsslError, match="empty table"):
        run_reports([out], tmp_path / "rep", ReportsConfig(workers=1), progress=False)
    with pytest.raises(EcgsslError, match="empty table"):
        read_table(out)


# --- 8. bit rot in a shard, 12. readers during a re-ingest -------------------------------------

def test_a_flipped_bit_in_a_shard_is_an_error_and_the_manifest_has_hashes(tables, tmp_path):
    import hashlib
    t = tmp_path / "t"
    shutil.copytree(tables["cinc2017"], t)
    m = read_manifest(t)
    for name in m["shards"]:
        info = m["shard_info"][name]
        assert info["sha256"] == hashlib.sha256((t / name).read_bytes()).hexdigest()
        assert info["rows"] == pq.read_metadata(t / name).num_rows
    shard = t / m["shards"][0]
    flip_a_bit_silently(shard)
    with pytest.raises(EcgsslError, match=f"{shard.name}: unreadable Parquet shard"):
        read_table(t)


def test_a_reader_holding_the_old_manifest_gets_a_rerun_error_not_new_rows(tmp_path, sample):
    root = copy(sample, "cinc2017", ["A00001", "A00002"], tmp_path / "in")
    out = tmp_path / "out"
    run("cinc2017", root, out)
    held = (out / "_manifest.json").read_text()          # what a reader had read
    copy(sample, "cinc2017", ["A00005"], root)           # the input changes: re-ingest
    assert run("cinc2017", root, out)["records_ok"] == 3
    (out / "_manifest.json").write_text(held)            # the reader goes on with its manifest
    with pytest.raises(EcgsslError, match="missing; rerun"):
        read_table(out)


# --- 13. disk full, killed workers, killed parents ---------------------------------------------

def _file_size_limit(nbytes: int):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)    # writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


def test_a_full_disk_is_a_clear_error_naming_the_folder(tmp_path, sample, params):
    # A real write failure without root: a file-size limit makes the kernel refuse the write
    # (EFBIG), as a full disk does (ENOSPC); both take the same path.
    out = tmp_path / "out"
    p = cli("ingest", "cinc2017", "--input", sample / "cinc2017", "--output", out,
            "--workers", "1", "--no-progress", params=params,
            preexec_fn=_file_size_limit(64 * 1024))
    assert p.returncode == 2, p.stderr
    assert "no space left writing to" in p.stderr and str(out) in p.stderr
    assert "Traceback" not in p.stderr


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _many_records(sample: Path, root: Path, n: int = 600) -> Path:
    """n records: hard links (or copies) of the bundled Challenge 2017 files, renamed."""
    src = sorted((sample / "cinc2017").glob("*.hea"))
    root.mkdir()
    for i in range(n):
        hea = src[i % len(src)]
        name = f"R{i:05d}"
        (root / f"{name}.hea").write_text(hea.read_text().replace(hea.stem, name))
        try:
            os.link(hea.with_suffix(".mat"), root / f"{name}.mat")
        except OSError:
            shutil.copyfile(hea.with_suffix(".mat"), root / f"{name}.mat")
    return root


def _start_ingest(root: Path, out: Path, params: Path) -> tuple[subprocess.Popen, list[int]]:
    # Output to a file, not a pipe: orphaned workers would hold a pipe open forever.
    proc = subprocess.Popen([sys.executable, "-m", "ecgssl.cli", "ingest", "cinc2017",
                             "--input", str(root), "--output", str(out), "--workers", "2",
                             "--no-progress", "--params", str(params)],
                            stdout=subprocess.DEVNULL, stderr=open(out.parent / "err.txt", "w"),
                            cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline:
        kids = _children(proc.pid)
        # --workers 2: the parent and one forked worker read records
        if len(kids) >= 1 and list(out.glob("_parts/*.json")) == []:
            return proc, kids
        assert proc.poll() is None, (out.parent / "err.txt").read_text()
        time.sleep(0.05)
    raise AssertionError("no workers started")


def test_a_killed_worker_is_a_clear_error_naming_the_record(tmp_path, sample, params):
    root = _many_records(sample, tmp_path / "in")
    # The first record, which the forked worker reads first, is long (a day at 300 Hz): the
    # worker is amid it when killed, as a worker the OOM killer picks is amid a huge record.
    n = 300 * 86400
    (root / "R00000.hea").write_text(f"R00000 1 300 {n}\nR00000.dat 16 1000/mV 16 0 0 0 0 ECG\n")
    (np.arange(n, dtype="<i2") % 200).tofile(root / "R00000.dat")
    (root / "R00000.mat").unlink()
    proc, kids = _start_ingest(root, tmp_path / "out", params)
    time.sleep(0.3)
    os.kill(kids[0], signal.SIGKILL)                     # as the OOM killer does
    try:
        proc.wait(timeout=60)
    finally:
        for k in _children(proc.pid) + ([] if proc.poll() is not None else [proc.pid]):
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:                   # gone meanwhile
                pass
    err = (tmp_path / "err.txt").read_text()
    assert proc.returncode == 2, err
    assert "worker process died" in err and "while reading record R00000" in err
    assert "Traceback" not in err


def test_workers_die_with_a_killed_parent(tmp_path, sample, params):
    root = _many_records(sample, tmp_path / "in")
    proc, kids = _start_ingest(root, tmp_path / "out", params)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(map(_running, kids)):
        time.sleep(0.1)
    alive = [k for k in kids if _running(k)]
    try:
        assert not alive, f"orphan workers {alive}"
    finally:
        for k in alive:
            os.kill(k, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# --- 16. files shared readers can read ----------------------------------------------------------

def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o002)
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o664


# --- 15. limits of one model request (served: tests/integration/test_registry.py) -------------

def test_model_request_limits():
    from ecgssl.registry.pyfunc import MAX_LABELS, MAX_ROWS, validate_input, validate_labels
    with pytest.raises(EcgsslError, match=f"at most {MAX_ROWS} per request"):
        validate_input(np.zeros((MAX_ROWS + 1, 12, 10), np.float32), 10)
    with pytest.raises(EcgsslError, match="lead_mask is all false"):
        validate_input(np.zeros((1, 12, 10), np.float32), 10, lead_mask=[False] * 12)
    with pytest.raises(EcgsslError, match="empty list"):
        validate_labels([])
    with pytest.raises(EcgsslError, match=f"at most {MAX_LABELS}"):
        validate_labels(["a"] * (MAX_LABELS + 1))
    assert validate_labels(["sinus rhythm"]) == ["sinus rhythm"]
