"""Fuzzing the two text parsers that face the outside world: WFDB header text (through the
reader every source uses) and device report text (through the translator). Whatever the
input, they either work or raise our own error type, never anything else."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecgssl.data.sources.base import read_wfdb
from ecgssl.errors import EcgsslError
from ecgssl.reports.translate import translate_report

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
REAL = [SAMPLE / "cinc2020" / "E07500.hea", SAMPLE / "mitdb" / "100.hea",
        next((SAMPLE / "cinc2017").rglob("*.hea"))]
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

# Header text: real headers with random edits, headers rebuilt from random tokens, any text.
_tokens = st.sampled_from(["16", "212", "0", "-1", "1e309", "nan", "x", "/", "(0)", "mV",
                           "1000.0(0)/mV", "500", "5000", "12", "#", "\n", " ", "+24", "24x",
                           ".mat", ".dat", "\x00", "\u00e9", "16x1+24", ""])


@st.composite
def header_text(draw) -> str:
    kind = draw(st.integers(0, 2))
    if kind == 2:
        return draw(st.text(max_size=400))
    base = REAL[draw(st.integers(0, len(REAL) - 1))].read_text(errors="ignore")
    if kind == 1:
        return " ".join(draw(st.lists(_tokens, max_size=60)))
    chars = list(base)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, max(len(chars) - 1, 0)))
        op = draw(st.integers(0, 2))
        if op == 0 and chars:
            del chars[i]
        elif op == 1:
            chars.insert(i, draw(st.sampled_from(list("0123456789 -+./x\n#(){}e"))))
        else:
            chars[i:i] = list(draw(_tokens))
    return "".join(chars)


@FUZZ
@given(text=header_text())
def test_wfdb_header_text_never_crashes_the_reader(text):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for f in (SAMPLE / "cinc2020").glob("E07500.*"):
            shutil.copyfile(f, root / f.name)
        (root / "E07500.hea").write_text(text, errors="surrogateescape")
        try:
            sig, fs, leads, _ = read_wfdb(root, "E07500")
        except EcgsslError:
            return
        assert sig.ndim == 2 and sig.shape[0] == len(leads) and fs > 0


@FUZZ
@given(text=st.text(max_size=300) | st.lists(st.sampled_from(
    ["sinusrhythmus", "normales", "ekg", "linkstyp", "vorhofflimmern", "unbestaetigter",
     "bericht", "4.46", "/", ",", "(", "ä", "ö", "ü", "ß", "qrs", "\t", "\x00", "🙂"]),
    max_size=40).map(" ".join))
def test_report_text_never_crashes_the_translator(text):
    r = translate_report(text)
    assert isinstance(r.text, str)
    assert translate_report(r.text).text == r.text or r.untranslated   # idempotent on English
