"""Challenge 2020's HR records are PTB-XL's ECGs (HR00001 is PTB-XL ecg_id 1): given PTB-XL's
database, they keep PTB-XL's patients and folds, so that PTB-XL's test ECGs are never
pretrained on through this source; without it, ingest says how many were hash-split."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from ecgssl.config import IngestConfig
from ecgssl.data.ingest import ingest
from ecgssl.data.table import read_manifest, read_table
from ecgssl.errors import EcgsslError


def _database(sample, tmp_path, folds: dict[int, int]):
    """The sample's ptbxl_database.csv with the strat_fold of some ecg_ids changed."""
    with open(sample / "ptbxl/ptbxl_database.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["strat_fold"] = folds.get(int(float(r["ecg_id"])), r["strat_fold"])
    path = tmp_path / "ptbxl_database.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _splits(out):
    t = read_table(out, columns=["record", "split", "patient_id"])
    return {r: (s, p) for r, s, p in zip(t.column("record"), t.column("split"),
                                         t.column("patient_id"))}


def test_hr_records_take_ptbxls_folds_and_patients(sample, tmp_path):
    db = _database(sample, tmp_path, {1: 10, 2: 9})          # HR00001 test, HR00002 val
    out = tmp_path / "with"
    ingest("cinc2020", sample / "cinc2020", out, IngestConfig(workers=1), progress=False,
           source_options={"metadata": str(db)})
    got = _splits(out)
    assert got["HR00001"] == ("test", "15709") and got["HR00002"] == ("val", "13243")
    assert got["HR00599"] == ("train", "4389")                 # fold 7
    m = read_manifest(out)
    # the sample's database does not list every HR record: those are hash-split and counted
    assert m["metadata"]["ptbxl_records_by_fold"] == 3
    assert m["metadata"]["ptbxl_records_hash_split"] == 2
    assert "HR06001" in m["metadata"]["warnings"][0]
    # other records keep the hash split; the database's content is part of the cache key
    without = tmp_path / "without"
    ingest("cinc2020", sample / "cinc2020", without, IngestConfig(workers=1), progress=False)
    plain = _splits(without)
    assert all(plain[r] == got[r] for r in plain if not r.startswith("HR"))
    assert plain["HR00001"] == ("train", None)
    assert "without PTB-XL's ptbxl_database.csv" in read_manifest(without)["metadata"][
        "warnings"][0]
    (tmp_path / "edited").mkdir()
    db2 = _database(sample, tmp_path / "edited", {1: 9})
    again = ingest("cinc2020", sample / "cinc2020", out, IngestConfig(workers=1),
                   progress=False, source_options={"metadata": str(db2)})
    assert again.raw["options_key"] != m["options_key"] and _splits(out)["HR00001"][0] == "val"


def test_the_cli_takes_ptbxls_database_for_cinc2020(sample, tmp_path):
    out = tmp_path / "t"
    p = subprocess.run([sys.executable, "-m", "ecgssl.cli", "ingest", "cinc2020", "--input",
                        str(sample / "cinc2020"), "--output", str(out), "--metadata",
                        str(sample / "ptbxl/ptbxl_database.csv"), "--no-progress"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "3 split by PTB-XL's folds" in p.stderr, p.stderr
    assert "2 HR record(s)" in p.stderr and _splits(out)["HR00001"] == ("train", "15709")


def test_options_a_source_does_not_take_are_refused(sample, tmp_path):
    with pytest.raises(EcgsslError, match="cinc2017 takes no option.*metadata.*cinc2020: "
                                          "metadata"):
        ingest("cinc2017", sample / "cinc2017", tmp_path / "o", IngestConfig(workers=1),
               progress=False, source_options={"metadata": "x.csv"})
    p = subprocess.run([sys.executable, "-m", "ecgssl.cli", "ingest", "cinc2020", "--input",
                        str(sample / "cinc2020"), "--output", str(tmp_path / "c"), "--split",
                        "test", "--no-progress"], capture_output=True, text=True)
    assert p.returncode != 0 and "cinc2020 takes no option(s) split" in p.stderr, p.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("ecg_id,patient_id\n1,2\n")
    with pytest.raises(EcgsslError, match="bad.csv: not PTB-XL's ptbxl_database.csv"):
        ingest("cinc2020", sample / "cinc2020", tmp_path / "b", IngestConfig(workers=1),
               progress=False, source_options={"metadata": str(bad)})
