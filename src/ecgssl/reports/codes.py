"""Structured ECG statements: SCP-ECG codes decided from Measurements, rendered to English.

The vocabulary is the subset of PTB-XL's scp_statements.csv (spelled exactly as there) that the
measurements can decide honestly from 10 s of signal, plus two quality codes of our own:

    NOISY       noisy recording: beats are found but their shapes disagree; statements that
                need a clean median beat (QT, ST, voltage, conduction, P waves) are withheld.
    UNREADABLE  unreadable recording: no reliable QRS complexes; no other statement is made.

Phrases follow the SCP descriptions so that a zero-shot prompt rendered from codes alone speaks
the language of the generated reports. Numbers are left out (rates become words) because exact
values make near-duplicate reports that the contrastive loss then treats as negatives.

    from ecgssl.reports.codes import decide, render
    codes = decide(measurements)          # ('SR', 'PVC', 'CRBBB')
    render(codes, measurements)           # 'Sinus rhythm. Ventricular premature complex. ...'
    render(["AFIB"])                      # 'Atrial fibrillation.'
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# code -> rendered phrase, in the order statements are written. Quality first, then rhythm,
# ectopy, conduction, voltage, repolarisation: the order of a cart's statement list.
PHRASES: dict[str, str] = {
    "UNREADABLE": "unreadable recording",
    "NOISY": "noisy recording, interpretation limited",
    "SR": "sinus rhythm",
    "STACH": "sinus tachycardia",
    "SBRAD": "sinus bradycardia",
    "SARRH": "sinus arrhythmia",
    "AFIB": "atrial fibrillation",
    "PVC": "ventricular premature complex",
    "PAC": "atrial premature complex",
    "BIGU": "bigeminal pattern",
    "TRIGU": "trigeminal pattern",
    "1AVB": "first degree AV block",
    "CLBBB": "complete left bundle branch block",
    "CRBBB": "complete right bundle branch block",
    "IVCD": "non-specific intraventricular conduction disturbance",
    "LVOLT": "low QRS voltages in the frontal and horizontal leads",
    "VCLVH": "voltage criteria (QRS) for left ventricular hypertrophy",
    "STD_": "non-specific ST depression",
    "STE_": "non-specific ST elevation",
    "LNGQT": "long QT-interval",
}
QUALITY = ("UNREADABLE", "NOISY")
SCP_CODES = tuple(c for c in PHRASES if c not in QUALITY)
_ORDER = {c: i for i, c in enumerate(PHRASES)}

# Adult criteria (AHA/ACC/HRS 2009 recommendations), kept here so that decisions and their
# thresholds read together.
TACHY_BPM, BRADY_BPM = 100, 60
WIDE_QRS_MS = 120
# One lead sees the QRS as projected on it, with P and T tails folded into its edges: a wide
# call from one lead alone needs a clearer margin.
WIDE_QRS_ONE_LEAD_MS = 140
LONG_PR_MS = 210            # 200 ms plus one 100 Hz sample of margin
LONG_QTC_MS = 470           # Fridericia; above both sexes' limits, so no sex is needed
LOW_LIMB_MV, LOW_CHEST_MV = 0.5, 1.0
SOKOLOW_MV = 3.5
ST_MV = 0.1                 # in two contiguous leads
ST_SINGLE_LEAD_MV = 0.2     # one lead has no contiguous partner: ask for twice the shift
SARRH_RANGE_S = 0.16        # longest minus shortest sinus RR
# Below this median correlation of the dominant beats with their template, the beats of the
# dominant rhythm itself disagree (artefact): one beat unlike them may be artefact too, so
# ventricular ectopy is not stated.
ECTOPY_MIN_CORR = 0.6

_CONTIGUOUS = (("II", "III", "aVF"), ("I", "aVL", "V5", "V6"), ("V1", "V2", "V3", "V4"))


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def decide(m) -> tuple[str, ...]:
    """The statements that Measurements `m` support, in rendering order."""
    if m.quality == "unreadable" or _nan(m.heart_rate):
        return ("UNREADABLE",)
    codes: list[str] = []
    clean = m.quality == "good"
    if not clean:
        codes.append("NOISY")
    if m.af:
        codes.append("AFIB")
    elif m.p_wave:
        codes.append("STACH" if m.sinus_rate > TACHY_BPM else
                     "SBRAD" if m.sinus_rate < BRADY_BPM else "SR")
        if m.sinus_rr_range_s > SARRH_RANGE_S and not m.n_pac and not m.n_pvc:
            codes.append("SARRH")
    if m.n_pvc and not m.template_corr < ECTOPY_MIN_CORR:
        codes.append("PVC")
    if m.n_pac and not m.af:
        codes.append("PAC")
    # A pattern of ectopic beats only beside the ectopy it is made of: where the PVCs are
    # withheld (the dominant beats disagree), their bigeminal pattern is doubtful too.
    if {"PVC", "PAC"} & set(codes):
        if m.bigeminy:
            codes.append("BIGU")
        elif m.trigeminy:
            codes.append("TRIGU")
    if not clean:
        return tuple(codes)
    if m.p_wave and not m.af and m.pr_ms > LONG_PR_MS:
        codes.append("1AVB")
    if m.qrs_ms >= (WIDE_QRS_MS if m.n_leads != 1 else WIDE_QRS_ONE_LEAD_MS):
        codes.append({"lbbb": "CLBBB", "rbbb": "CRBBB"}.get(m.bundle_branch, "IVCD"))
    if m.limb_qrs_mv < LOW_LIMB_MV and m.chest_qrs_mv < LOW_CHEST_MV:
        codes.append("LVOLT")
    if m.sokolow_mv >= SOKOLOW_MV and m.qrs_ms < WIDE_QRS_MS:
        codes.append("VCLVH")
    # ST and QT are read on conducted, narrow beats only: a bundle-branch block moves both.
    if m.qrs_ms < WIDE_QRS_MS:
        if _st_shift(m.st_mv, +1):
            codes.append("STE_")
        if _st_shift(m.st_mv, -1):
            codes.append("STD_")
        if m.qtc_ms > LONG_QTC_MS:
            codes.append("LNGQT")
    return tuple(sorted(codes, key=_ORDER.__getitem__))


def _st_shift(st: dict[str, float], sign: int) -> bool:
    """ST elevation (sign +1) or depression (-1) by the two-contiguous-leads rule; with a
    single lead, a shift twice the threshold. aVR mirrors the others and is not read."""
    shifted = {k for k, v in st.items() if k != "aVR" and sign * v >= ST_MV}
    if len(st) == 1:
        return any(sign * v >= ST_SINGLE_LEAD_MV for v in st.values())
    return any(len(shifted.intersection(g)) >= 2 for g in _CONTIGUOUS)


def _rate_words(codes: set[str], m) -> str | None:
    """A rate qualifier in words where it carries meaning: the ventricular response of AF, or
    the rate of a rhythm without identifiable P waves."""
    if m is None or _nan(m.heart_rate):
        return None
    hr = m.heart_rate
    if "AFIB" in codes:
        return ("with rapid ventricular response" if hr > TACHY_BPM else
                "with slow ventricular response" if hr < BRADY_BPM else None)
    return None


def render(codes: Iterable[str], measurements=None) -> str:
    """English statements for `codes` (any order, duplicates ignored); with `measurements`,
    a few qualifiers in words (AF ventricular response, a rhythm without P waves)."""
    cs = set(codes)
    unknown = cs - PHRASES.keys()
    if unknown:
        raise ValueError(f"unknown statement codes: {sorted(unknown)}")
    m = measurements
    parts = []
    for c in sorted(cs, key=_ORDER.__getitem__):
        phrase = PHRASES[c]
        if c == "AFIB" and (q := _rate_words(cs, m)):
            phrase = f"{phrase} {q}"
        if c in ("PVC", "PAC") and m is not None and (m.n_pvc if c == "PVC" else m.n_pac) > 1:
            phrase = phrase.replace("complex", "complexes")
        parts.append(phrase)
    rhythm = {"AFIB", "SR", "STACH", "SBRAD", "UNREADABLE"}
    if m is not None and not cs & rhythm and not _nan(m.heart_rate):
        # No rhythm statement could be made: say what was seen, with the rate in words.
        hr = m.heart_rate
        rate = ("tachycardia" if hr > TACHY_BPM else "bradycardia" if hr < BRADY_BPM else
                "rhythm")
        # "Regular" only where the RR regularity was measured: with too few intervals free of
        # ventricular beats (bigeminy, runs) it is unknown, and no AF decision was made.
        measured = not _nan(getattr(m, "rr_irregularity", math.nan))
        said = f"regular {rate}" if measured else \
            {"rhythm": "rhythm not classified"}.get(rate, rate)
        i = 1 if parts and parts[0] == PHRASES["NOISY"] else 0
        parts.insert(i, f"{said}, P waves not identified")
    return " ".join(p[0].upper() + p[1:] + "." for p in parts)
