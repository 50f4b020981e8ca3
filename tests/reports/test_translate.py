"""Device-report translation on real PTB-XL reports from the bundled sample."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from ecgssl.reports.translate import coverage, translate, translate_report, untranslated

# Real reports from data/sample/ptbxl/ptbxl_database.csv and their expected English.
CASES = [
    ("sinusrhythmus periphere niederspannung", "sinus rhythm. low limb lead voltage."),
    ("sinusbradykardie sonst normales ekg", "sinus bradycardia. otherwise normal ecg."),
    ("sinusrhythmus p-verbreiterung", "sinus rhythm. broad p wave."),
    ("vorhofflimmern/-flattern lagetyp normal unvollstÄndiger rechtsschenkelblock 4.46"
     "                          unbestÄtigter bericht",
     "atrial fibrillation/flutter. normal axis. incomplete right bundle branch block. "
     "(unconfirmed report)."),
    ("sinusrhythmus a-v block i linkstyp linksschenkelblock 4.46                          "
     "unbestÄtigter bericht",
     "sinus rhythm. first degree av block. left axis. left bundle branch block. "
     "(unconfirmed report)."),
    ("sinusbradykardi amplitudkriterier fÖr vÄnster kammarhypertrofi avvikande qrs(t) fÖrlopp"
     "    lateral myokardskada kan ej uteslutas",
     "sinus bradycardia. voltage criteria for left ventricular hypertrophy. abnormal qrs(t) "
     "course. lateral myocardial damage cannot be excluded."),
    ("tachykardes vorhofflimmern lagetyp normal st & t abnorm, wahrscheinlich    anteriore "
     "ischÄmie oder linksbelastung",
     "atrial fibrillation with rapid ventricular response. normal axis. st-t abnormal, probably "
     "anterior ischaemia or left ventricular strain."),
    ("atrial fibrillation. otherwise no definite pathology.",
     "atrial fibrillation. otherwise no definite pathology."),
]


@pytest.mark.parametrize("german,english", CASES)
def test_real_reports_translate(german, english):
    assert translate(german) == english


def test_english_and_translated_text_pass_through_unchanged():
    for _, english in CASES:
        assert translate(english) == english          # idempotent


def test_unknown_tokens_are_kept_not_invented():
    r = translate_report("sinusrhythmus zwerchfellhochstand")
    assert r.text == "sinus rhythm. zwerchfellhochstand"
    assert (r.words, r.translated, r.english, r.untranslated) == (
        2, 1, 0, ["zwerchfellhochstand"])


def test_coverage_is_the_share_of_covered_word_tokens():
    assert coverage(["sinusrhythmus zwerchfellhochstand", "normal ecg."]) == pytest.approx(3 / 4)
    assert coverage([]) == 1.0 and coverage(["", None]) == 1.0


def test_coverage_goal_on_the_sample_reports(sample):
    with open(sample / "ptbxl/ptbxl_database.csv", newline="") as fh:
        reports = [r["report"] for r in csv.DictReader(fh)]
    assert coverage(reports) >= 0.97
    assert sum(untranslated(reports).values()) < 0.03 * sum(
        translate_report(r).words for r in reports)


def test_translate_cli_reads_stdin():
    p = subprocess.run([sys.executable, "-m", "ecgssl.cli", "reports", "translate", "--coverage"],
                       input="sinusrhythmus normales ekg\nsinusrhythmus foo\n", text=True,
                       capture_output=True, check=True)
    lines = p.stdout.splitlines()
    assert lines == ["sinus rhythm. normal ecg.", "sinus rhythm. foo", "0.8000"]  # 4 of 5 words
    assert "foo (1)" in p.stderr


def test_the_validators_annotation_is_not_report_text(sample):
    """29 real reports in the sample end in "Edit: <SCP codes with likelihoods>, ...": the
    cardiologist's labels (scp_codes), not the device's words; they must not reach `report`."""
    with open(sample / "ptbxl" / "ptbxl_database.csv", newline="", encoding="utf-8") as fh:
        reports = [r["report"] for r in csv.DictReader(fh) if "Edit:" in r["report"]]
    assert len(reports) == 29
    assert translate("sinus rhythm. normal ecg. Edit: NORM 100, schlechte Qualität V2,V3,V5") \
        == "sinus rhythm. normal ecg."
    for r in reports:
        text = translate(r)
        assert "edit" not in text and "100" not in text, (r, text)
        assert text == translate(r[:r.index("Edit:")])
