"""Signal measurements against the MIT-BIH reference annotations of the bundled records."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from ecgssl.data.sources.mitdb import AAMI
from ecgssl.data.table import read_table
from ecgssl.reports.generate import generate
from ecgssl.reports.measure import match_beats, measure, r_peaks


def reference_beats(sample, record):
    ann = wfdb.rdann(str(sample / "mitdb" / record), "atr")
    return np.array([s for s, sym in zip(ann.sample, ann.symbol) if sym in AAMI])


def test_match_beats_hand_case():
    assert match_beats(np.array([10, 52, 90, 200]), np.array([12, 50, 100, 150]), 5) == (2, 2, 2)


@pytest.mark.parametrize("record", ["100", "101", "119"])
def test_r_peaks_on_clean_mitdb_records(sample, record):
    rec = wfdb.rdrecord(str(sample / "mitdb" / record), sampto=360 * 600)   # first 10 minutes
    ref = reference_beats(sample, record)
    ref = ref[ref < 360 * 600]
    tp, fn, fp = match_beats(r_peaks(rec.p_signal[:, 0], rec.fs), ref, int(0.15 * rec.fs))
    assert tp / (tp + fn) >= 0.99 and tp / (tp + fp) >= 0.99


def test_heart_rate_of_table_windows_matches_the_annotations(tables, sample):
    t = read_table(tables["mitdb"])
    ids = list(t.column("ecg_id"))
    for record in ("100", "119"):
        ref = reference_beats(sample, record) / 360.0
        for w in (3, 40, 120):
            i = ids.index(f"mitdb/{record}#{w}")
            beats = ref[(ref >= 10 * w) & (ref < 10 * w + 10)]
            expected = 60.0 / np.median(np.diff(beats))
            m = measure(t.signal[i], t.lead_mask[i], 100)
            assert abs(m.heart_rate - expected) < 3, (record, w, m.heart_rate, expected)
            assert abs(m.n_beats - len(beats)) <= 1


def test_r_peaks_takes_one_lead_and_survives_junk():
    with pytest.raises(ValueError, match="one lead"):
        r_peaks(np.zeros((2, 1000)), 100)
    assert r_peaks(np.zeros(1000), 100).size == 0
    assert r_peaks(np.full(1000, np.nan), 100).size == 0


def test_generated_reports_read_like_a_cart(tables):
    t = read_table(tables["cinc2017"])
    labels = [x[0] for x in t.column("labels")]
    normal = generate(t.signal[labels.index("N")], t.lead_mask[labels.index("N")], 100)
    assert normal.startswith(("Sinus rhythm at", "Sinus bradycardia at", "Sinus tachycardia at"))
    assert normal.endswith(".") and "bpm" in normal
    flat = generate(np.zeros((12, 1000), np.float32), np.eye(12, dtype=bool)[0], 100)
    assert flat.startswith("Unreadable recording")


def test_irregular_rhythm_is_stated_more_for_af_than_normal(tables):
    t = read_table(tables["cinc2017"])
    labels = np.array([x[0] for x in t.column("labels")])
    said = np.array(["rregular" in generate(s, m, 100) for s, m in zip(t.signal, t.lead_mask)])
    af, normal = said[labels == "A"].mean(), said[labels == "N"].mean()
    assert af > 0.5 and normal < 0.2, (af, normal)
