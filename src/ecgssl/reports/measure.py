"""Measurements from the signal alone, as the program in an ECG cart makes them.

R-peaks come from neurokit2 (cleaning + detection, validated on MIT-BIH in the tests and the
issue note). Intervals, axis, voltage and ST level are measured on the median beat of each lead
(the signal-averaged complex carts use), which costs a few milliseconds per 10 s window; a
wavelet delineation per window costs ~130 ms and gives no better numbers at 100 Hz.

    from ecgssl.reports.measure import r_peaks, measure
    peaks = r_peaks(signal_one_lead, fs)       # numpy int array of sample indices
    m = measure(signal_12xT, lead_mask, fs)    # Measurements (NaN where not measurable)

Nothing here reads labels.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from ecgssl.data.signal import LEADS

_RHYTHM_LEADS = ("II", "I", "V1", "V2", "V5", "III", "aVF", "V3", "V4", "V6", "aVL", "aVR")
# Calibrated on MIT-BIH at 100 Hz: normal beats of 100/101 measure 75-80 ms (median), LBBB
# (109) 170 ms; RBBB in 118's two leads (MLII, V1) measures only 90 ms and is missed.
QRS_VELOCITY_FRACTION = 0.08
_LIMB = ("I", "II", "III", "aVR", "aVL", "aVF")
_CHEST = ("V1", "V2", "V3", "V4", "V5", "V6")


def _nk():
    import neurokit2 as nk  # slow to import (~4 s): only when measuring
    return nk


def clean(signal: np.ndarray, fs: float) -> np.ndarray:
    """Baseline-wander and powerline-robust cleaning of one lead (neurokit2's default)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(_nk().ecg_clean(np.asarray(signal, dtype=float), sampling_rate=fs))


def bandpass(signal: np.ndarray, fs: float) -> np.ndarray:
    """0.5-40 Hz zero-phase band-pass of all leads at once, for the median beat."""
    from scipy.signal import butter, sosfiltfilt
    sos = butter(2, [0.5, min(40.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")
    return sosfiltfilt(sos, np.asarray(signal, dtype=float), axis=-1)


def r_peaks(signal: np.ndarray, fs: float) -> np.ndarray:
    """R-peak sample indices in one lead (neurokit2 method on the cleaned signal)."""
    x = np.asarray(signal, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"r_peaks takes one lead, got shape {x.shape}")
    if len(x) < 2 * fs or not np.isfinite(x).all() or np.ptp(x) == 0:
        return np.zeros(0, dtype=np.int64)
    cleaned = clean(x, fs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, info = _nk().ecg_peaks(cleaned, sampling_rate=fs, correct_artifacts=False)
    except (ValueError, IndexError, ZeroDivisionError):
        return np.zeros(0, dtype=np.int64)
    return np.asarray(info["ECG_R_Peaks"], dtype=np.int64)


@dataclass
class Measurements:
    n_beats: int = 0
    heart_rate: float = math.nan          # bpm, from the median RR
    rr_cv: float = math.nan               # coefficient of variation of RR
    rr_irregularity: float = math.nan     # median |successive RR difference| / median RR
    premature_beats: int = 0
    longest_pause_s: float = math.nan
    p_wave: bool | None = None            # a P wave precedes the QRS on the median beat
    qrs_ms: float = math.nan
    qt_ms: float = math.nan
    qtc_ms: float = math.nan              # Bazett
    axis_deg: float = math.nan
    limb_qrs_mv: float = math.nan         # largest QRS peak-to-peak over the limb leads
    chest_qrs_mv: float = math.nan        # ... over the chest leads
    st_mv: dict[str, float] = field(default_factory=dict)   # ST level at J+60 ms per lead
    quality: str = "unreadable"           # good | noisy | unreadable
    template_corr: float = math.nan       # mean correlation of beats with the median beat

    def to_dict(self) -> dict:
        return asdict(self)


def _rhythm_lead(mask: np.ndarray) -> int | None:
    for name in _RHYTHM_LEADS:
        i = LEADS.index(name)
        if mask[i]:
            return i
    return None


def measure(signal: np.ndarray, lead_mask: np.ndarray, fs: float) -> Measurements:
    """All measurements of one window: signal [12, T] in mV, lead_mask [12]."""
    m = Measurements()
    lead = _rhythm_lead(lead_mask)
    if lead is None:
        return m
    x = signal[lead].astype(float)
    peaks = r_peaks(x, fs)
    m.n_beats = len(peaks)
    duration = signal.shape[1] / fs
    if len(peaks) < 3:
        return m
    rr = np.diff(peaks) / fs
    med = float(np.median(rr))
    m.heart_rate = 60.0 / med
    m.rr_cv = float(np.std(rr) / np.mean(rr))
    m.rr_irregularity = float(np.median(np.abs(np.diff(rr))) / med) if len(rr) > 2 else 0.0
    # Premature: arrives 20 % early and is followed by a longer (compensatory) interval.
    early = (rr[:-1] < 0.8 * med) & (rr[1:] > 1.1 * med) if len(rr) > 1 else np.zeros(0, bool)
    m.premature_beats = int(early.sum())
    m.longest_pause_s = float(rr.max())
    if not 20 <= m.heart_rate <= 300 or m.n_beats < duration * 20 / 60:
        return m

    cleaned = bandpass(signal, fs) * lead_mask[:, None]
    pre, post = int(0.25 * fs), int(0.45 * fs)
    normal = [p for k, p in enumerate(peaks) if pre <= p < signal.shape[1] - post and
              not (k > 0 and k - 1 < len(early) and early[k - 1])]
    if len(normal) < 2:
        m.quality = "noisy"
        return m
    beats = np.stack([cleaned[:, p - pre:p + post] for p in normal])     # [B, 12, L]
    template = np.median(beats, axis=0)                                   # [12, L]
    corr = [np.corrcoef(b[lead], template[lead])[0, 1] for b in beats]
    m.template_corr = float(np.nanmean(corr))
    m.quality = "good" if m.template_corr >= 0.8 else "noisy"
    _measure_template(m, template, lead_mask, fs, pre, med, lead)
    return m


def _measure_template(m: Measurements, t: np.ndarray, mask: np.ndarray, fs: float, r: int,
                      rr_s: float, lead: int) -> None:
    present = np.flatnonzero(mask)
    # QRS onset/offset where the spatial velocity (summed |slope| over leads) is above 15 %
    # of its peak near R: the same idea as the carts' global QRS boundaries.
    vel = np.abs(np.diff(t[present], axis=1)).sum(axis=0)
    near = slice(max(0, r - int(0.08 * fs)), r + int(0.08 * fs))
    thr = QRS_VELOCITY_FRACTION * vel[near].max()
    on = r
    while on > r - int(0.12 * fs) and vel[on - 1] > thr:
        on -= 1
    off = r
    while off < r + int(0.16 * fs) and off < len(vel) and vel[off] > thr:
        off += 1
    m.qrs_ms = 1000.0 * (off - on) / fs
    pr = slice(max(0, on - int(0.05 * fs)), max(1, on - int(0.01 * fs)))
    base = np.median(t[:, pr], axis=1)                                    # [12] isoelectric
    qrs = t[:, on:off + 1] - base[:, None]
    j60 = min(off + int(0.06 * fs), t.shape[1] - 1)
    m.st_mv = {LEADS[i]: round(float(t[i, j60] - base[i]), 3) for i in present}
    ptp = np.ptp(t[:, on:off + 1], axis=1)
    # Low voltage is a statement about a whole lead group: measure only with most of it present.
    limb = [ptp[LEADS.index(n)] for n in _LIMB if mask[LEADS.index(n)]]
    chest = [ptp[LEADS.index(n)] for n in _CHEST if mask[LEADS.index(n)]]
    m.limb_qrs_mv = float(max(limb)) if len(limb) >= 4 else math.nan
    m.chest_qrs_mv = float(max(chest)) if len(chest) >= 4 else math.nan
    i_, avf = LEADS.index("I"), LEADS.index("aVF")
    if mask[i_] and mask[avf]:
        m.axis_deg = float(np.degrees(np.arctan2(qrs[avf].sum(), qrs[i_].sum())))
    # P wave: a deflection of >= 0.05 mV in the 250..60 ms before QRS onset of the rhythm lead.
    pw = t[lead, max(0, on - int(0.25 * fs)):max(1, on - int(0.06 * fs))] - base[lead]
    m.p_wave = bool(pw.size and np.abs(pw).max() >= 0.05)
    # T end: after the T peak, where the rhythm lead returns within 15 % of the T amplitude.
    seg_end = min(t.shape[1], r + int(min(0.7 * rr_s, 0.6) * fs))
    tw = t[lead, off + int(0.08 * fs):seg_end] - base[lead]
    if tw.size > 2:
        k = int(np.argmax(np.abs(tw)))
        amp = abs(tw[k])
        rest = np.flatnonzero(np.abs(tw[k:]) < 0.15 * amp)
        if amp > 0.05 and rest.size:
            t_end = off + int(0.08 * fs) + k + int(rest[0])
            m.qt_ms = 1000.0 * (t_end - on) / fs
            m.qtc_ms = m.qt_ms / math.sqrt(rr_s)


def match_beats(detected: np.ndarray, reference: np.ndarray,
                tolerance: int) -> tuple[int, int, int]:
    """(true positives, false negatives, false positives) of detected vs reference beats,
    each reference matched at most once within `tolerance` samples (EC57 style)."""
    detected, reference = np.sort(detected), np.sort(reference)
    used = np.zeros(len(detected), dtype=bool)
    tp = 0
    for r in reference:
        j = np.searchsorted(detected, r - tolerance)
        while j < len(detected) and detected[j] <= r + tolerance and used[j]:
            j += 1
        if j < len(detected) and detected[j] <= r + tolerance:
            used[j] = True
            tp += 1
    return tp, len(reference) - tp, int((~used).sum())
