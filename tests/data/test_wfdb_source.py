"""`ecgssl ingest wfdb`: any folder of real WFDB records with a labels CSV."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ecgssl.data.signal import LEADS
from ecgssl.data.sources.wfdb import lead_name
from ecgssl.data.table import read_table

ECGSSL = shutil.which("ecgssl") or f"{sys.executable} -m ecgssl.cli"


def cli(*args):
    return subprocess.run(ECGSSL.split() + [str(a) for a in args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})


def _copy(sample, source, record, dest):
    dest.mkdir(parents=True, exist_ok=True)
    for f in (sample / source).glob(f"{record}.*"):
        shutil.copyfile(f, dest / f.name)


@pytest.fixture
def folder(sample, tmp_path):
    """Records of three real databases in nested folders, no RECORDS file: cinc2017
    (one lead named ECG, 300 Hz), mitdb (MLII + V1/V5, 360 Hz), cinc2020 (12 leads, 500 Hz,
    header renamed the way other exporters spell leads, one lead of unknown name)."""
    root = tmp_path / "in"
    for r in ("A00001", "A00002", "A00005", "A00006"):
        _copy(sample, "cinc2017", r, root / "af" / "site1")
    _copy(sample, "mitdb", "100", root / "holter")
    _copy(sample, "cinc2020", "E07500", root / "twelve")
    hea = root / "twelve" / "E07500.hea"
    lines = hea.read_text().splitlines()
    for i, new in ((1, "lead I"), (2, "D2"), (7, "MV1"), (12, "Resp")):
        lines[i] = lines[i].rsplit(" ", 1)[0] + " " + new
    hea.write_text("\n".join(lines) + "\n")
    return root


def test_lead_names_map_to_the_standard_twelve():
    assert [lead_name(n) for n in ("MLII", "V5", "ECG", "lead I", "D2", "MV1", "avf",
                                   "Resp")] == ["II", "V5", "I", "I", "II", "V1", "aVF", None]


def test_ingest_wfdb_folder_with_labels_csv(folder, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("record,labels,patient_id,split,age,sex,report_device\n"
                   "af/site1/A00001,N,p1,,61,F,sinus rhythm\n"
                   "./af/site1/A00002.hea,N; O,p1,,,,\n"
                   "af/site1/A00005,A,p2,test,70,male,\n"
                   "holter/100,,p3,,,,\n"
                   "gone/X1,N,p9,,,,\n")
    out = tmp_path / "table"
    p = cli("ingest", "wfdb", "--input", folder, "--metadata", csv, "--output", out,
            "--workers", "2", "--no-progress")
    assert p.returncode == 0, p.stderr
    # Unlabelled records (holter/100 with empty labels, A00006 and E07500 without a row)
    # and the row naming no record are counted and warned about.
    assert "3 record(s) have no labels" in p.stderr and "1 row(s)" in p.stderr, p.stderr
    assert "gone/X1 (line 6)" in p.stderr
    m = json.loads((out / "_manifest.json").read_text())
    assert m["source"] == "wfdb" and m["records_ok"] == 6 and not m["records_quarantined"]
    meta = m["metadata"]
    assert meta["records_without_labels"] == m["records_without_labels"] == 3
    assert meta["rows_without_record"] == m["rows_without_record"] == 1
    assert sorted(meta["records_without_labels_examples"]) == [
        "af/site1/A00006", "holter/100", "twelve/E07500"]
    assert meta["rows_without_record_examples"] == [{"record": "gone/X1", "line": 6}]

    t = read_table(out)
    rec = t.column("record")
    by = {r: i for i, r in reversed(list(enumerate(rec)))}        # first row of each record
    assert set(rec) == {"af/site1/A00001", "af/site1/A00002", "af/site1/A00005",
                        "af/site1/A00006", "holter/100", "twelve/E07500"}
    assert list(t.column("labels")[by["af/site1/A00002"]]) == ["N", "O"]
    assert t.column("split")[by["af/site1/A00005"]] == "test"           # the CSV's split
    # same patient, same hashed split
    assert t.column("split")[by["af/site1/A00001"]] == t.column("split")[by["af/site1/A00002"]]
    assert t.column("patient_id")[by["af/site1/A00001"]] == "p1"
    assert t.column("age")[by["af/site1/A00001"]] == 61 and \
        t.column("sex")[by["af/site1/A00005"]] == "M"
    assert t.column("report_device")[by["af/site1/A00001"]] == "sinus rhythm"
    assert set(t.column("dataset")) == {"wfdb"}
    # Leads: the single ECG lead is I; MLII -> II and V5; renamed leads mapped, the unknown
    # one ("Resp") left out of an otherwise 12-lead record.
    on = lambda r: [LEADS[j] for j in np.flatnonzero(t.lead_mask[by[r]])]   # noqa: E731
    assert on("af/site1/A00001") == ["I"]
    assert on("holter/100") == ["II", "V5"]
    assert on("twelve/E07500") == [x for x in LEADS if x != "V6"]


def test_split_option_forces_one_split_and_no_csv_works(folder, tmp_path):
    out = tmp_path / "ext"
    p = cli("ingest", "wfdb", "--input", folder, "--split", "test", "--dataset", "external",
            "--output", out, "--workers", "1", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "warning" not in p.stderr                 # no CSV: nothing to warn about
    t = read_table(out)
    assert set(t.column("split")) == {"test"} and set(t.column("dataset")) == {"external"}
    assert all(i.startswith("external/") for i in t.column("ecg_id"))
    m = json.loads((out / "_manifest.json").read_text())
    assert m["rows_per_split"] == {"test": len(t)} and "metadata" not in m


def test_wfdb_options_are_refused_for_other_sources_and_bad_csvs(folder, sample, tmp_path):
    p = cli("ingest", "cinc2017", "--input", sample / "cinc2017", "--metadata",
            tmp_path / "x.csv", "--output", tmp_path / "o", "--no-progress")
    assert p.returncode == 2 and "cinc2017 takes no option(s) metadata" in p.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("name,labels\nA00001,N\n")
    p = cli("ingest", "wfdb", "--input", folder, "--metadata", bad, "--output",
            tmp_path / "o", "--no-progress")
    assert p.returncode == 2 and "needs a 'record' column" in p.stderr, p.stderr
    bad.write_text("record,split\naf/site1/A00001,holdout\n")
    p = cli("ingest", "wfdb", "--input", folder, "--metadata", bad, "--output",
            tmp_path / "o", "--no-progress")
    assert p.returncode == 2 and "bad.csv:2" in p.stderr and "holdout" in p.stderr


def test_source_options_in_params_reach_the_cli_and_the_kubeflow_step(folder, tmp_path,
                                                                         monkeypatch):
    """ingest.source_options.wfdb does what --metadata/--split/--dataset do, for the CLI (so
    DVC) and for the pipeline step alike; a flag still wins over the params."""
    from ecgssl.config import params_from_dict
    from ecgssl.errors import ConfigError
    from ecgssl.pipeline import steps

    csv = tmp_path / "labels.csv"
    csv.write_text("record,labels,report_device\naf/site1/A00001,N,sinus rhythm\n")
    params = {"ingest": {"workers": 1, "source_options": {"wfdb": {
        "metadata": str(csv), "split": "test", "dataset": "external"}}},
              "tracking": {"enabled": False}}
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    out = tmp_path / "cli"
    p = cli("ingest", "wfdb", "--input", folder, "--output", out, "--params",
            tmp_path / "params.yaml", "--no-progress")
    assert p.returncode == 0, p.stderr
    t = read_table(out)
    assert set(t.column("dataset")) == {"external"} and set(t.column("split")) == {"test"}
    first = list(t.column("record")).index("af/site1/A00001")
    assert t.column("report_device")[first] == "sinus rhythm"

    monkeypatch.chdir(tmp_path)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "wfdb").symlink_to(folder, target_is_directory=True)
    m = steps.ingest("wfdb", str(tmp_path / "root"), str(tmp_path / "kfp"), json.dumps(params), "")
    cli_manifest = json.loads((out / "_manifest.json").read_text())
    assert m.raw["options_key"] == cli_manifest["options_key"]          # the very same table
    assert m.raw["shard_info"] == cli_manifest["shard_info"]

    p = cli("ingest", "wfdb", "--input", folder, "--output", tmp_path / "flag", "--params",
            tmp_path / "params.yaml", "--dataset", "other", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert set(read_table(tmp_path / "flag").column("dataset")) == {"other"}
    with pytest.raises(ConfigError, match="nosuch"):
        params_from_dict({"ingest": {"source_options": {"nosuch": {"dataset": "x"}}}})
