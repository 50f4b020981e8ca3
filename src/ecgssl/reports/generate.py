"""Measurements -> a short English interpretation, like the statement list of an ECG cart.

    from ecgssl.reports.generate import generate
    generate(signal_12xT, lead_mask, fs)
    # 'Sinus rhythm at 72 bpm. QRS duration 90 ms. Normal axis (45 degrees). QT/QTc 380/410 ms.'

The input is the signal only: this module cannot see labels.
"""

from __future__ import annotations

import math

import numpy as np

from ecgssl.reports.measure import Measurements, measure

# Thresholds of the usual adult criteria.
TACHY_BPM, BRADY_BPM = 100, 60
IRREGULAR = 0.15          # median successive RR difference / median RR
PAUSE_S = 2.0
WIDE_QRS_MS = 120
LOW_LIMB_MV, LOW_CHEST_MV = 0.5, 1.0
ST_ELEVATION_MV, ST_DEPRESSION_MV = 0.1, -0.1
QTC_LONG_MS, QTC_SHORT_MS = 460, 350


def _leads(names: list[str]) -> str:
    return ", ".join(names)


def sentences(m: Measurements) -> list[str]:
    if m.quality == "unreadable" or math.isnan(m.heart_rate):
        return ["Unreadable recording: no reliable QRS complexes were found."]
    out = []
    if m.quality == "noisy":
        out.append("Noisy recording; the interpretation is limited.")
    hr = round(m.heart_rate)
    irregular = m.rr_irregularity > IRREGULAR and m.premature_beats * 3 < max(m.n_beats, 1)
    if irregular:
        out.append(f"Irregularly irregular rhythm at {hr} bpm"
                   + (" without clear P waves, consistent with atrial fibrillation."
                      if m.p_wave is False else "."))
    else:
        rate = ("tachycardia" if hr > TACHY_BPM else "bradycardia" if hr < BRADY_BPM else
                "rhythm")
        if m.p_wave:
            out.append(f"Sinus {rate} at {hr} bpm.")
        elif rate == "rhythm":
            out.append(f"Regular rhythm at {hr} bpm without clear P waves.")
        else:
            out.append(f"Regular {rate} at {hr} bpm without clear P waves.")
    if m.premature_beats:
        out.append(f"{m.premature_beats} premature beat{'s' if m.premature_beats > 1 else ''}.")
    if m.longest_pause_s >= PAUSE_S:
        out.append(f"Pause of {m.longest_pause_s:.1f} s.")
    if not math.isnan(m.qrs_ms):
        qrs = int(round(m.qrs_ms / 10) * 10)
        out.append(f"Wide QRS complex ({qrs} ms)." if m.qrs_ms >= WIDE_QRS_MS
                   else f"QRS duration {qrs} ms.")
    if not math.isnan(m.axis_deg):
        a = round(m.axis_deg)
        if -30 <= a <= 90:
            out.append(f"Normal axis ({a} degrees).")
        elif -90 <= a < -30:
            out.append(f"Left axis deviation ({a} degrees).")
        elif 90 < a <= 180:
            out.append(f"Right axis deviation ({a} degrees).")
        else:
            out.append(f"Extreme axis deviation ({a} degrees).")
    if m.limb_qrs_mv < LOW_LIMB_MV:
        out.append("Low voltage in the limb leads.")
    if m.chest_qrs_mv < LOW_CHEST_MV:
        out.append("Low voltage in the chest leads.")
    # aVR mirrors the other leads; its ST shift is read as reciprocal, not as a finding.
    up = [k for k, v in m.st_mv.items() if k != "aVR" and v >= ST_ELEVATION_MV]
    down = [k for k, v in m.st_mv.items() if k != "aVR" and v <= ST_DEPRESSION_MV]
    if up:
        out.append(f"ST elevation in {_leads(up)}.")
    if down:
        out.append(f"ST depression in {_leads(down)}.")
    if not math.isnan(m.qtc_ms):
        qt, qtc = int(round(m.qt_ms)), int(round(m.qtc_ms))
        if m.qtc_ms > QTC_LONG_MS:
            out.append(f"Prolonged QT interval (QTc {qtc} ms).")
        elif m.qtc_ms < QTC_SHORT_MS:
            out.append(f"Short QT interval (QTc {qtc} ms).")
        else:
            out.append(f"QT/QTc {qt}/{qtc} ms.")
    return out


def generate(signal: np.ndarray, lead_mask: np.ndarray, fs: float) -> str:
    """The generated report of one window (signal [12, T] in mV)."""
    return " ".join(sentences(measure(signal, lead_mask, fs)))
