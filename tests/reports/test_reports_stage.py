"""The `reports` stage on tables ingested from the bundled sample."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ecgssl.config import IngestConfig, ReportsConfig
from ecgssl.data.ingest import ingest
from ecgssl.data.table import read_table
from ecgssl.errors import EcgsslError
from ecgssl.reports.stage import run_reports
from ecgssl.reports.translate import translate


def test_device_mode_translates_the_device_report(tables, tmp_path):
    m = run_reports([tables["ptbxl"]], tmp_path / "r", ReportsConfig(mode="device"),
                    progress=False)
    t = read_table(tmp_path / "r")
    assert t.column("report")[0] == translate(t.column("report_device")[0]) == \
        "sinus rhythm. low limb lead voltage."
    assert m.reports.counts == {"device": 1, "generated": 0, "empty": 0}
    assert m.reports.translation_coverage == 1.0
    assert (tmp_path / "r" / "scp_statements.csv").is_file()


def test_both_mode_joins_tables_and_appends_measurements(tables, tmp_path):
    m = run_reports([tables["ptbxl"], tables["cinc2020"]], tmp_path / "r",
                    ReportsConfig(mode="both", workers=2), progress=False)
    t = read_table(tmp_path / "r")
    assert len(t) == m.rows == 17 and m.source == "ptbxl+cinc2020"
    reports = dict(zip(t.column("dataset"), t.column("report")))
    assert reports["ptbxl"].startswith("sinus rhythm. low limb lead voltage. Sinus rhythm.")
    assert all(r and r.endswith(".") for r in t.column("report"))
    codes = dict(zip(t.column("dataset"), t.column("report_codes")))
    assert "SR" in list(codes["ptbxl"])                # the generated statements, as codes
    assert all(c is not None and len(c) for c in t.column("report_codes"))
    assert m.reports.counts == {"device": 1, "generated": 17, "empty": 0}
    np.testing.assert_array_equal(t.signal[1:], read_table(tables["cinc2020"]).signal)
    again = run_reports([tables["ptbxl"], tables["cinc2020"]], tmp_path / "r",
                        ReportsConfig(mode="both", workers=2), progress=False)
    assert again.up_to_date


@pytest.mark.parametrize("mode", ["generated", "both"])
def test_generated_reports_never_read_labels(tables, tmp_path, table_copy, mode):
    """Every path that fills `report`/`report_codes` (signal measurements, and in `both` mode
    the device-report translation of PTB-XL) gives the same output when the labels differ."""
    names = ("ptbxl", "cinc2020")
    relabelled = [table_copy(tables[n], "labels", lambda t: pa.array(
        [["164889003"]] * t.num_rows, t.schema.field("labels").type)) for n in names]
    assert read_table(relabelled[1]).column("labels")[0].tolist() == ["164889003"]
    cfg = ReportsConfig(mode=mode, workers=1)
    run_reports([tables[n] for n in names], tmp_path / "a", cfg, progress=False)
    run_reports(relabelled, tmp_path / "b", cfg, progress=False)
    a, b = read_table(tmp_path / "a"), read_table(tmp_path / "b")
    assert list(a.column("report")) == list(b.column("report"))
    if mode == "both":                                              # the device text too
        assert a.column("report")[0].startswith("sinus rhythm. low limb lead voltage.")
    assert [None if c is None else list(c) for c in a.column("report_codes")] == \
        [None if c is None else list(c) for c in b.column("report_codes")]
    assert a.meta.column("labels").to_pylist() != b.meta.column("labels").to_pylist()


def test_tables_of_different_rates_are_refused(tables, tmp_path, sample):
    ingest("cinc2020", sample / "cinc2020", tmp_path / "t250", IngestConfig(fs=250, workers=1),
           progress=False)
    with pytest.raises(EcgsslError, match="differ in fs/window"):
        run_reports([tables["cinc2020"], tmp_path / "t250"], tmp_path / "r", ReportsConfig(),
                    progress=False)
    with pytest.raises(EcgsslError, match="not a complete ECG table"):
        run_reports([tmp_path], tmp_path / "r", ReportsConfig(), progress=False)


def test_a_changed_word_list_or_translation_code_makes_new_reports(tables, tmp_path,
                                                                  monkeypatch):
    """The reports key covers everything the translation reads: an English word added to
    english_words.txt changes device reports (text that is all English passes through), so
    a rerun must not serve the old table as up to date."""
    import shutil
    from importlib import resources

    from ecgssl.reports import translate as tr
    pkg = tmp_path / "pkg"
    shutil.copytree(resources.files("ecgssl.reports"), pkg)
    files = resources.files
    monkeypatch.setattr(resources, "files",
                        lambda name: pkg if name == "ecgssl.reports" else files(name))
    tr.lexicon.cache_clear()
    tr.english_words.cache_clear()
    try:
        cfg = ReportsConfig(mode="device")
        run_reports([tables["ptbxl"]], tmp_path / "r", cfg, progress=False)
        with open(pkg / "english_words.txt", "a") as fh:
            fh.write("\nzwerchfellhochstand\n")
        tr.english_words.cache_clear()
        assert not run_reports([tables["ptbxl"]], tmp_path / "r", cfg,
                               progress=False).up_to_date
        (pkg / "translate.py").write_text((pkg / "translate.py").read_text() + "\n# changed\n")
        assert not run_reports([tables["ptbxl"]], tmp_path / "r", cfg,
                               progress=False).up_to_date
    finally:
        monkeypatch.undo()
        tr.lexicon.cache_clear()
        tr.english_words.cache_clear()
