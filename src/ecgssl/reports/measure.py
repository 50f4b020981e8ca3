"""Measurements from the signal alone, as the program in an ECG cart makes them.

Two filters, one per purpose (AHA 2007 recommendations on ECG filtering):
- rhythm: the 5-25 Hz QRS band, whose energy finds the beats (tall P and T waves, slow, stay
  below it); beats are then re-aligned on the median QRS over all leads;
- morphology: 0.05-40 Hz band-pass, then a baseline through the PR segment of every beat
  (linear between knots) is subtracted, so the ST level is not bent by a steep high-pass.

Beats are aligned, the dominant morphology is the largest group of mutually similar beats, and
every other beat is classified: ventricular (different shape, wide or without a P wave) or
supraventricular (dominant shape, premature). AF is read from the RR intervals left after the
ectopics and the intervals around them are removed, with absent P waves as support. Intervals
come from the median of the dominant beats (the signal-averaged complex carts use), upsampled
so that a 100 Hz table still gives 2.5 ms steps: QRS boundaries from the slope maximum outward,
P wave before the QRS onset, T end by the tangent method. The QRS duration stated is the median
of the dominant beats' own QRS durations, measured the same way: the median beat's QRS jumps
by 20 ms when one beat moves by one sample.

    from ecgssl.reports.measure import r_peaks, measure
    peaks = r_peaks(signal_one_lead, fs)       # numpy int array of sample indices
    m = measure(signal_12xT, lead_mask, fs)    # Measurements (NaN where not measurable)

Nothing here reads labels.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from scipy.signal import butter, find_peaks, resample_poly, sosfiltfilt

from ecgssl.data.signal import LEADS

_RHYTHM_LEADS = ("II", "I", "V1", "V2", "V5", "III", "aVF", "V3", "V4", "V6", "aVL", "aVR")
_LIMB = ("I", "II", "III", "aVR", "aVL", "aVF")
_CHEST = ("V1", "V2", "V3", "V4", "V5", "V6")
FINE_FS = 400            # the median beat is delineated at this rate at least
QRS_CORE_FRACTION = 0.15    # QRS core: spatial velocity above this fraction of its peak
QRS_SLOPE_FRACTION = 0.04   # QRS boundary: spatial velocity below this fraction of its peak
QRS_EXTEND_S, QRS_GAP_S = 0.04, 0.008   # boundary search beyond the core, gaps it bridges
QRS_NOISE_PERCENTILE = 75   # a lead's noise: this percentile of its |slope| off the QRS
QRS_NOISE_GUARD_S = (0.06, 0.10)   # 'off the QRS': this far before / after the core
QRS_LEAD_SNR = 0.3          # a lead bounds the QRS only while its noise is below this
                            # fraction of its own steepest QRS slope

# R-peak detection (see r_peaks).
QRS_BAND_HZ = (5.0, 25.0)    # the band of the QRS energy, above most of P, T and baseline
QRS_INTEGRATION_S = 0.08     # the band energy is averaged over about a QRS duration
REFRACTORY_S = 0.25          # least RR between two detected beats (240 bpm)
QRS_ENERGY_FRACTION = 0.25   # a beat: band energy above this fraction of a typical beat's

ALIGN_S = 0.05              # beats are re-aligned on the median QRS by at most this

# Beat classification (see classify_beats).
SIMILAR = 0.90           # correlation of two beats of the same morphology
DIFFERENT = 0.80         # below this a beat is of another morphology
PREMATURE = 0.85         # RR before a premature beat, as a fraction of the dominant RR
# AF: successive RR differences over the median RR, on intervals free of ectopics. Lower
# bars on the median difference alone (0.055 / 0.09) raise AF sensitivity on Challenge 2017
# A records from 0.860 to 0.885, but three in four of the AF statements they add fall on
# windows that are not AF (other rhythms, noise), and METS pretrained on those reports lost
# 0.06 zero-shot AF-vs-rest AUROC on the shared data in a paired run (0.787 -> 0.723,
# bench/science.py): the teacher's precision outweighs that margin. The mean difference (every
# interval counts, as in RMSSD, but one missed beat does not dominate as it does a square)
# with the upper quartile of the differences left once early beats are removed (isolated PACs
# leave three in four of them small, AF does not) reaches 0.887 on A records while stating AF
# on fewer N windows (0.031 -> 0.028) and with higher window precision on A/N/O records (0.518
# -> 0.533). Bars chosen on one half of the Challenge 2017 records (CRC32 parity), held out on
# the other: 0.886 A, 0.019 N records, precision 0.527 (was 0.872, 0.024, 0.511).
AF_IRREGULARITY = 0.08   # mean |successive RR difference| / median RR, no V beats
AF_IRREGULARITY_WITH_P = 0.14
AF_RESIDUAL = 0.02       # median of the same, once early beats are removed too
AF_RESIDUAL_UPPER = 0.08   # ... and their upper quartile


def _nk():
    import neurokit2 as nk  # slow to import (~4 s): only when measuring
    return nk


def clean(signal: np.ndarray, fs: float) -> np.ndarray:
    """Baseline-wander and powerline-robust cleaning of one lead (neurokit2's default)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(_nk().ecg_clean(np.asarray(signal, dtype=float), sampling_rate=fs))


@lru_cache(maxsize=8)
def _morph_sos(fs: float) -> np.ndarray:
    return butter(2, [0.05, min(40.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")


def morphology_filter(signal: np.ndarray, fs: float) -> np.ndarray:
    """0.05-40 Hz zero-phase band-pass of all leads: the diagnostic band that keeps ST."""
    return sosfiltfilt(_morph_sos(float(fs)), np.asarray(signal, dtype=float), axis=-1)


@lru_cache(maxsize=8)
def _qrs_sos(fs: float) -> np.ndarray:
    return butter(2, [QRS_BAND_HZ[0], min(QRS_BAND_HZ[1], 0.45 * fs)], btype="bandpass", fs=fs,
                  output="sos")


def r_peaks(signal: np.ndarray, fs: float) -> np.ndarray:
    """R-peak sample indices in one lead, from the energy of the QRS band.

    The 5-25 Hz band holds most of the QRS energy and little of the P and T waves (slow) or of
    baseline wander, so a tall P or T wave cannot pass for a beat: the band is squared and
    averaged over 80 ms, its peaks at least a refractory period apart are candidates, and those
    above a fraction of a typical beat's energy (a high percentile of the candidates, so that a
    few large ectopics do not raise the bar) are beats. Each is placed at the largest band
    deflection within 50 ms: the steepest part of the QRS, a stable point to align beats on."""
    x = np.asarray(signal, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"r_peaks takes one lead, got shape {x.shape}")
    if len(x) < 2 * fs or not np.isfinite(x).all() or np.ptp(x) == 0:
        return np.zeros(0, dtype=np.int64)
    y = sosfiltfilt(_qrs_sos(float(fs)), x)
    w = max(1, int(round(QRS_INTEGRATION_S * fs)))
    e = np.convolve(y * y, np.ones(w) / w, mode="same")
    cand, _ = find_peaks(e, distance=max(1, int(round(REFRACTORY_S * fs))))
    if len(cand) == 0:
        return np.zeros(0, dtype=np.int64)
    h = e[cand]
    beats = cand[h >= QRS_ENERGY_FRACTION * np.percentile(h, 80)]
    half = max(1, int(round(0.05 * fs)))
    refractory = max(1, int(round(REFRACTORY_S * fs)))
    out: list[int] = []
    for b in beats:
        p = max(0, b - half) + int(np.argmax(np.abs(y[max(0, b - half):b + half + 1])))
        if out and p - out[-1] < refractory:
            # Two deflections within one refractory period (a tall P or T wave next to the
            # QRS): the one of more QRS-band energy is the beat.
            if e[p] > e[out[-1]]:
                out[-1] = p
            continue
        out.append(p)
    return np.asarray(out, dtype=np.int64)


@dataclass
class Measurements:
    n_beats: int = 0
    n_leads: int = 0                      # leads present
    heart_rate: float = math.nan          # bpm, from the median RR of all beats
    sinus_rate: float = math.nan          # bpm, from the RR between dominant beats
    rr_irregularity: float = math.nan     # mean |successive RR diff| / median RR, no V beats
    rr_irregularity_no_pac: float = math.nan   # median of the same, no V and no S beats either
    rr_irregularity_no_pac_q75: float = math.nan   # ... their upper quartile
    sinus_rr_range_s: float = math.nan    # longest minus shortest RR between dominant beats
    af: bool = False
    n_pvc: int = 0
    n_pac: int = 0
    longest_pvc_run: int = 0
    bigeminy: bool = False
    trigeminy: bool = False
    longest_pause_s: float = math.nan
    p_wave: bool | None = None            # a P wave precedes the QRS on the median beat
    pr_ms: float = math.nan
    qrs_ms: float = math.nan
    qt_ms: float = math.nan
    qtc_ms: float = math.nan              # Fridericia (Bazett overcorrects at high rates)
    axis_deg: float = math.nan
    bundle_branch: str | None = None      # 'lbbb' | 'rbbb' from V1 (and I/V6) when wide
    limb_qrs_mv: float = math.nan         # largest QRS peak-to-peak over the limb leads
    chest_qrs_mv: float = math.nan        # ... over the chest leads
    sokolow_mv: float = math.nan          # S in V1 + R in V5 or V6
    st_mv: dict[str, float] = field(default_factory=dict)   # ST at J+60 ms (J+40 when fast)
    quality: str = "unreadable"           # good | noisy | unreadable
    template_corr: float = math.nan       # median correlation of dominant beats with template
    beat_class: str = ""                  # one letter per beat: N, V, S, ? (unclassified)

    def to_dict(self) -> dict:
        return asdict(self)


def _rhythm_lead(mask: np.ndarray) -> int | None:
    for name in _RHYTHM_LEADS:
        i = LEADS.index(name)
        if mask[i]:
            return i
    return None


def _corr_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of a [N, L] with every row of b [M, L] -> [N, M]."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-9
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-9
    return a @ b.T


def measure(signal: np.ndarray, lead_mask: np.ndarray, fs: float) -> Measurements:
    """All measurements of one window: signal [12, T] in mV, lead_mask [12]."""
    m, b, present, rl = _dominant_beats(signal, lead_mask, fs)
    if b is None:
        return m
    template = np.median(b, axis=0)
    corr = _corr_rows(b[:, rl], template[rl][None])[:, 0]
    m.template_corr = float(np.median(corr))
    m.quality = "good" if m.template_corr >= 0.9 else "noisy"
    _measure_template(m, template, present, fs, int(round(0.25 * fs)), rl)
    if len(b) >= 3:
        m.qrs_ms = _median_qrs_ms(b, fs, int(round(0.25 * fs)))
    if m.p_wave:
        m.p_wave = _p_wave(b[:, rl], template[rl], fs, int(round(0.25 * fs)))
    _decide_af(m)
    return m


@dataclass
class MedianBeat:
    """The median of a window's dominant beats, upsampled as it is delineated, with its QRS
    bounds: what a reviewer looks at to judge a QRS duration (bench/measure.py --plots)."""
    beat: np.ndarray          # [C, L] mV, R at 250 ms
    fs: float
    leads: list[str]
    qrs: tuple[int, int]      # onset, offset (samples of `beat`)


def median_beat(signal: np.ndarray, lead_mask: np.ndarray, fs: float) -> MedianBeat | None:
    """The median beat of one window and its QRS bounds, or None where measure() finds too
    few dominant beats to make one."""
    _, b, present, _ = _dominant_beats(signal, lead_mask, fs)
    if b is None:
        return None
    up, f = _upsample(np.median(b, axis=0), fs)
    on, off = _qrs_bounds(up, int(round(0.25 * f)), lambda s: int(round(s * f)))
    return MedianBeat(up, f, [LEADS[i] for i in present], (on, off))


def _dominant_beats(signal: np.ndarray, lead_mask: np.ndarray, fs: float):
    """Beats found, aligned and classified: (the rhythm measurements, the complete dominant
    beats [B, C, L] with R at 250 ms or None when fewer than 2, the leads present, the index
    of the rhythm lead among them)."""
    lead_mask = np.asarray(lead_mask, dtype=bool)
    m = Measurements(n_leads=int(lead_mask.sum()))
    lead = _rhythm_lead(lead_mask)
    if lead is None:
        return m, None, None, None
    signal = np.asarray(signal, dtype=float)
    peaks = r_peaks(signal[lead], fs)
    m.n_beats = len(peaks)
    duration = signal.shape[1] / fs
    if len(peaks) < 3:
        return m, None, None, None
    rr = np.diff(peaks) / fs
    m.heart_rate = 60.0 / float(np.median(rr))
    m.longest_pause_s = float(rr.max())
    if not 20 <= m.heart_rate <= 300 or m.n_beats < duration * 20 / 60:
        return m, None, None, None
    m.quality = "noisy"

    present = np.flatnonzero(lead_mask)
    x = morphology_filter(signal[present], fs)
    peaks = align_beats(x, peaks, fs)
    x = _subtract_pr_baseline(x, peaks, fs)
    beats, ok = _beats(x, peaks, fs, pre=0.25, post=0.6)
    qrs_seg, qok = _beats(x, peaks, fs, pre=0.1, post=0.14)
    rl = int(np.flatnonzero(present == lead)[0])
    cls, dominant = classify_beats(qrs_seg, qok, peaks, fs, rl)
    m.beat_class = "".join(cls)
    _rhythm(m, cls, peaks, fs)
    use = [k for k in dominant if ok[k]]
    return m, (beats[use] if len(use) >= 2 else None), present, rl


def align_beats(x: np.ndarray, peaks: np.ndarray, fs: float) -> np.ndarray:
    """Move every beat by the lag (at most ALIGN_S) that best matches its QRS, over all leads,
    to the median QRS: a fiducial point taken on one lead jumps between lobes when the QRS
    shape or axis shifts a little (respiration, a lead at right angles to the QRS vector),
    and beats misaligned that way look like another morphology and smear the median beat."""
    if len(peaks) < 3:
        return peaks
    lag = max(1, int(round(ALIGN_S * fs)))
    seg, ok = _beats(x, peaks, fs, pre=0.1 + ALIGN_S, post=0.1 + ALIGN_S)       # [B, C, L]
    if ok.sum() < 3:
        return peaks
    seg = seg - seg.mean(axis=2, keepdims=True)
    weight = np.median(np.ptp(seg[ok], axis=2), axis=0)
    weight = weight / (weight.sum() + 1e-9)
    width = seg.shape[2] - 2 * lag
    shifted = np.stack([seg[:, :, lag + d:lag + d + width] for d in range(-lag, lag + 1)], 1)
    best = np.zeros(len(peaks), dtype=np.int64)
    for _ in range(2):
        cur = shifted[np.arange(len(peaks)), best + lag]                      # [B, C, W]
        template = np.median(cur[ok], axis=0)                                 # [C, W]
        tc = template - template.mean(axis=1, keepdims=True)
        tc /= np.linalg.norm(tc, axis=1, keepdims=True) + 1e-9
        sh = shifted - shifted.mean(axis=3, keepdims=True)
        sh = sh / (np.linalg.norm(sh, axis=3, keepdims=True) + 1e-9)
        score = np.einsum("bdcw,cw,c->bd", sh, tc, weight)                    # [B, 2*lag+1]
        best = np.argmax(score, axis=1) - lag
    new = np.clip(peaks + best, 0, x.shape[1] - 1)
    return np.unique(new)


def _beats(x: np.ndarray, peaks: np.ndarray, fs: float, pre: float, post: float):
    """Segments [B, C, L] around every peak (zeros past the edges) and which are complete."""
    a, b = int(round(pre * fs)), int(round(post * fs))
    padded = np.pad(x, ((0, 0), (a, b)))
    idx = peaks[:, None] + np.arange(a + b)[None, :]                      # in padded coords
    seg = padded[:, idx].transpose(1, 0, 2)
    ok = (peaks - a >= 0) & (peaks + b <= x.shape[1])
    return seg, ok


def _subtract_pr_baseline(x: np.ndarray, peaks: np.ndarray, fs: float) -> np.ndarray:
    """Subtract a baseline through the PR segment of every beat (80-50 ms before R),
    linearly interpolated: the isoelectric reference of the ST level."""
    lo, hi = int(round(0.08 * fs)), max(1, int(round(0.05 * fs)))
    knots = [p for p in peaks if p - lo >= 0]
    if len(knots) < 2:
        return x - np.median(x, axis=1, keepdims=True)
    level = np.stack([np.median(x[:, p - lo:p - hi + 1], axis=1) for p in knots], axis=1)
    t = np.arange(x.shape[1])
    base = np.stack([np.interp(t, knots, lv) for lv in level])
    return x - base


def classify_beats(seg: np.ndarray, ok: np.ndarray, peaks: np.ndarray, fs: float,
                   rl: int) -> tuple[list[str], list[int]]:
    """Each beat as N (dominant), V (ventricular), S (supraventricular premature) or ?
    (cut by the window edge), and the indices of the dominant beats.

    The dominant morphology is the beat similar to the most others (ties: the one after the
    longer RR, since ectopics come early); V beats differ from it in shape and are early,
    wide, inverted or of very different size; S beats keep its shape but come early. A
    per-beat P wave is not used: at 100 Hz it is too small to see beat by beat."""
    n = len(peaks)
    cls = ["?"] * n
    full = np.flatnonzero(ok)
    if len(full) < 2:
        return cls, list(full)
    s = seg[full]                                                         # [B, C, L]
    rr_all = np.diff(peaks) / fs
    rr_pre = np.r_[np.nan, rr_all][full]
    # Shape similarity over the leads, each weighted by its QRS amplitude, so that a small
    # noisy lead does not decide.
    weight = np.median(np.ptp(s, axis=2), axis=0)
    weight = weight / (weight.sum() + 1e-9)
    c = sum(wt * _corr_rows(s[:, i], s[:, i]) for i, wt in enumerate(weight))
    votes = (c >= SIMILAR).sum(axis=1) + np.nan_to_num(rr_pre, nan=0.0) * 1e-3
    seed = int(np.argmax(votes))
    dom = c[seed] >= DIFFERENT
    template = np.median(s[dom], axis=0)
    tc = sum(wt * _corr_rows(s[:, i], template[i][None])[:, 0] for i, wt in enumerate(weight))
    dom = tc >= DIFFERENT
    # Width and amplitude of each beat relative to the dominant ones, in the rhythm lead.
    w = _width(s[:, rl], fs)
    w_ref = np.median(w[dom])
    amp = np.ptp(s[:, rl], axis=1)
    amp_ref = np.median(amp[dom])
    shape = ["?"] * n
    for j, k in enumerate(full):
        shape[k] = "N" if dom[j] else "V"
    ref = _dominant_rr(shape, rr_all)
    for j, k in enumerate(full):
        # Ventricular: a shape unlike the dominant one that is early, wide, inverted, or of
        # very different size (a premature beat of another QRS shape is ventricular unless
        # aberrant, which 10 s cannot tell). A beat of the dominant shape is not: ventricular
        # activation changes the QRS shape in every lead, while a width measured on one lead
        # wanders with noise.
        wide = w[j] >= w_ref + 0.04
        early = ref is not None and not np.isnan(rr_pre[j]) and rr_pre[j] < 0.9 * ref
        odd_size = not 0.5 <= amp[j] / max(amp_ref, 1e-6) <= 2.0
        v = not dom[j] and (wide or early or tc[j] < 0 or (tc[j] < 0.5 and odd_size))
        cls[k] = "V" if v else "N"
    # Supraventricular premature: dominant shape, RR before < PREMATURE of the dominant RR
    # (median of the RR between dominant beats), and not early because a neighbour is V.
    ref = _dominant_rr(cls, rr_all)
    if ref:
        for k in range(1, n):
            if cls[k] == "N" and cls[k - 1] != "V" and rr_all[k - 1] < PREMATURE * ref:
                nxt = rr_all[k] if k < n - 1 else math.inf
                if nxt > rr_all[k - 1] * 1.05:
                    cls[k] = "S"
    dominant = [k for k in range(n) if cls[k] == "N"]
    return cls, dominant


def _width(s: np.ndarray, fs: float) -> np.ndarray:
    """Rough QRS width per beat [B, L] (s): span where |slope| exceeds 20 % of its maximum."""
    v = np.abs(np.diff(s, axis=1))
    above = v >= 0.2 * v.max(axis=1, keepdims=True)
    first = above.argmax(axis=1)
    last = above.shape[1] - 1 - above[:, ::-1].argmax(axis=1)
    return (last - first + 1) / fs


def _dominant_rr(cls: list[str], rr: np.ndarray) -> float | None:
    both = [rr[k - 1] for k in range(1, len(cls)) if cls[k] in "N?" and cls[k - 1] in "N?"]
    return float(np.median(both)) if both else None


def _rhythm(m: Measurements, cls: list[str], peaks: np.ndarray, fs: float) -> None:
    rr = np.diff(peaks) / fs
    m.n_pvc, m.n_pac = cls.count("V"), cls.count("S")
    run = best = 0
    for c in cls:
        run = run + 1 if c == "V" else 0
        best = max(best, run)
    m.longest_pvc_run = best
    _patterns(m, cls, "VS")
    # Intervals touching a ventricular beat (coupling and compensatory pause) are removed:
    # what is left is the supraventricular rhythm, irregular in AF. Intervals touching early
    # supraventricular beats are removed too for a second measure: isolated PACs leave it
    # regular, AF does not, since its early beats are not the only irregular ones.
    d = _rr_differences(rr, cls, "V")
    if d is not None:
        m.rr_irregularity = float(d.mean())
    d = _rr_differences(rr, cls, "VS")
    if d is not None:
        med, upper = np.quantile(d, (0.5, 0.75))
        m.rr_irregularity_no_pac, m.rr_irregularity_no_pac_q75 = float(med), float(upper)
    keep = [k - 1 for k in range(1, len(cls)) if cls[k] not in "VS" and cls[k - 1] not in "VS"]
    r = rr[keep]
    if len(r) >= 2:
        m.sinus_rate = 60.0 / float(np.median(r))
        m.sinus_rr_range_s = float(r.max() - r.min())


def _patterns(m: Measurements, cls: list[str], ectopic: str) -> None:
    """Bigeminy / trigeminy: an ectopic every second / third beat, three times running."""
    ect = "".join("E" if c in ectopic else "N" for c in cls)
    m.bigeminy = "ENENEN" in ect or "NENENE" in ect
    m.trigeminy = "ENNENNE" in ect


def _rr_differences(rr: np.ndarray, cls: list[str], drop: str) -> np.ndarray | None:
    """|Successive RR differences| / median RR over the intervals between beats that are not
    of the classes in `drop` (None with fewer than 3 such intervals)."""
    keep = [k - 1 for k in range(1, len(cls)) if cls[k] not in drop and cls[k - 1] not in drop]
    r = rr[keep]
    if len(r) < 3:
        return None
    return np.abs(np.diff(r)) / np.median(r)


def _decide_af(m: Measurements) -> None:
    """AF: irregular RR after ventricular ectopics are removed, still irregular after early
    beats are removed (in the median and the upper quartile); an absent P wave lowers the
    bar."""
    if math.isnan(m.rr_irregularity):
        return
    bar = AF_IRREGULARITY_WITH_P if m.p_wave else AF_IRREGULARITY
    rest, upper = m.rr_irregularity_no_pac, m.rr_irregularity_no_pac_q75
    m.af = m.rr_irregularity >= bar and (math.isnan(rest) or (
        rest >= AF_RESIDUAL and upper >= AF_RESIDUAL_UPPER))
    if m.af:
        # Early beats are the rhythm itself in AF, not atrial premature complexes.
        m.n_pac = 0
        m.beat_class = m.beat_class.replace("S", "N")
        _patterns(m, list(m.beat_class), "V")


def _upsample(t: np.ndarray, fs: float) -> tuple[np.ndarray, float]:
    k = max(1, int(math.ceil(FINE_FS / fs)))
    return (resample_poly(t, k, 1, axis=-1) if k > 1 else t), fs * k


def _measure_template(m: Measurements, t: np.ndarray, present: np.ndarray, fs: float, r: int,
                      rl: int) -> None:
    t, f = _upsample(t, fs)
    r = r * int(round(f / fs))
    ms = lambda n: 1000.0 * n / f            # noqa: E731 - samples to ms
    n = lambda s: int(round(s * f))          # noqa: E731 - seconds to samples
    # Spatial velocity: |slope| summed over leads. The QRS core is the slope maximum near R and
    # what stays above 15 % of it, bridging gaps up to 40 ms (the R apex or an R' notch, where
    # the slope is ~0 inside the QRS); its boundaries then extend outward while the velocity
    # stays above 4 %, at most 40 ms, bridging 8 ms dips (the bottom of a q or S wave).
    # With several leads, each lead's own floor (its median |slope| over the beat: noise, P
    # and T) is taken off first, so that one noisy lead cannot hold the boundaries open. A
    # single lead keeps it: its QRS edges project weakly and would be cut short. For the
    # boundaries, each lead's noise off the QRS is taken off instead (see _qrs_bounds).
    on, off = _qrs_bounds(t, r, n)
    m.qrs_ms = ms(off - on)
    # Isoelectric level: the flattest 20 ms before QRS onset (PR segment).
    base = _isoelectric(t, on, n)
    x = t - base[:, None]
    j = off + n(0.06 if m.heart_rate < 100 else 0.04)
    if j < t.shape[1]:
        m.st_mv = {LEADS[i]: round(float(x[c, j]), 3) for c, i in enumerate(present)}
    ptp = np.ptp(t[:, on:off + 1], axis=1)
    names = [LEADS[i] for i in present]
    limb = [ptp[names.index(k)] for k in _LIMB if k in names]
    chest = [ptp[names.index(k)] for k in _CHEST if k in names]
    m.limb_qrs_mv = float(max(limb)) if len(limb) >= 4 else math.nan
    m.chest_qrs_mv = float(max(chest)) if len(chest) >= 4 else math.nan
    if "I" in names and "aVF" in names:
        q = x[:, on:off + 1]
        m.axis_deg = float(np.degrees(np.arctan2(q[names.index("aVF")].sum(),
                                                 q[names.index("I")].sum())))
    if "V1" in names and ("V5" in names or "V6" in names) and len(names) >= 8:
        s_v1 = -x[names.index("V1"), on:off + 1].min()
        r_v56 = max(x[names.index(k), on:off + 1].max() for k in ("V5", "V6") if k in names)
        m.sokolow_mv = float(s_v1 + r_v56)
    if m.qrs_ms >= 110 and "V1" in names:
        m.bundle_branch = _bundle_branch(x, names, on, off, n)
    # P wave: the largest deflection before QRS onset on the rhythm lead, from 30 ms back to
    # 300 ms, or less at fast rates, where the previous T wave ends closer to the QRS.
    reach = min(0.3, 0.35 * 60.0 / m.heart_rate + 0.02)
    pw = x[rl, max(0, on - n(reach)):max(1, on - n(0.03))]
    qamp = np.ptp(x[rl, on:off + 1])
    if pw.size:
        k = int(np.argmax(np.abs(pw)))
        amp = abs(pw[k])
        m.p_wave = bool(amp >= 0.04 and amp >= 0.05 * qamp)
        if m.p_wave:
            # P onset: leftward from the P peak to where it falls below 20 % of its amplitude.
            i = k
            while i > 0 and abs(pw[i]) > 0.2 * amp:
                i -= 1
            m.pr_ms = ms(len(pw) - i + n(0.03))
    else:
        m.p_wave = False
    _t_end(m, x[rl], off, on, f, n)


def _median_qrs_ms(beats: np.ndarray, fs: float, r: int) -> float:
    """QRS duration (ms): the median over the dominant beats [B, C, L] of each one's QRS.

    The median beat of a few beats changes shape at a sample wherever the median passes from
    one beat to another, and one beat moved by one sample can move a boundary of the median
    beat's QRS by 20 ms; the median of the beats' own durations does not jump so."""
    up, f = _upsample(beats, fs)
    k = int(round(f / fs))
    n = lambda s: int(round(s * f))          # noqa: E731 - seconds to samples
    d = [off - on for on, off in (_qrs_bounds(u, r * k, n) for u in up)]
    return float(1000.0 * np.median(d) / f)


def _qrs_bounds(t: np.ndarray, r: int, n) -> tuple[int, int]:
    """QRS onset and offset (samples) of a beat [C, L] upsampled, R near sample r."""
    lead_vel = np.abs(np.diff(t, axis=1))
    multi = len(lead_vel) > 1
    vel = (np.clip(lead_vel - _rank(lead_vel, 50), 0, None) if multi else lead_vel).sum(axis=0)
    lo, hi = max(0, r - n(0.1)), min(len(vel), r + n(0.1))
    peak = lo + int(np.argmax(vel[lo:hi]))
    on, off = _qrs_core(vel, peak, n)
    low = QRS_SLOPE_FRACTION * vel[peak]
    # Noise next to the QRS (f or flutter waves, muscle tremor) would hold the boundaries open:
    # each lead's noise is its own |slope| off the QRS (PR, ST-T and TP stretches, at a
    # percentile so that one tall P or T wave is not taken for noise). With several leads,
    # every lead loses its own noise before they are summed, so a noisy lead cannot widen the
    # QRS that the clean ones bound; a single lead keeps its skirts (its QRS edges project
    # weakly) and its noise only raises the bar when it is above QRS_SLOPE_FRACTION. A lead
    # whose noise rivals its own QRS slope is left out altogether (see _clean_leads).
    a, b = max(0, on - n(QRS_NOISE_GUARD_S[0])), off + n(QRS_NOISE_GUARD_S[1])
    away = np.concatenate([lead_vel[:, :a], lead_vel[:, b:]], axis=1)
    if away.shape[1] >= 10:
        noise = _rank(away, QRS_NOISE_PERCENTILE)
        if multi:
            lead_vel, noise, kept = _clean_leads(lead_vel, noise, on, off)
            if kept is not None:          # the core again, on the clean leads alone
                peak = lo + int(np.argmax(kept[lo:hi]))
                on, off = _qrs_core(kept, peak, n)
            vel = np.clip(lead_vel - noise, 0, None).sum(axis=0)
            low = QRS_SLOPE_FRACTION * vel[peak]
        else:
            low = max(low, float(noise[0, 0]))
    on = _extend(vel >= low, on, -1, n(QRS_EXTEND_S), n(QRS_GAP_S))
    # vel[i] is the slope from sample i to i + 1: the offset is the sample after it.
    off = _extend(vel >= low, off, +1, n(QRS_EXTEND_S), n(QRS_GAP_S)) + 1
    return on, off


def _clean_leads(lead_vel: np.ndarray, noise: np.ndarray, on: int, off: int):
    """Leads whose noise off the QRS [C, 1] stays below QRS_LEAD_SNR of their own steepest
    slope inside the core [on, off]: (their |slope|, their noise, the spatial velocity the
    core is found on again), or the inputs and None when all are clean or none is.

    A lead buried in noise (a loose electrode, muscle tremor: noise spikes as steep as its
    QRS) keeps the core open, since its spikes next to the QRS pass the core's fraction of
    the peak and are bridged as notches, and taking its noise percentile off later does not
    remove spikes above it. Such a lead carries no QRS edge to read, so it is left out of the
    boundaries altogether, while a lead with a small but clean QRS still counts."""
    steepest = lead_vel[:, on:off + 1].max(axis=1, keepdims=True)
    clean = (noise < QRS_LEAD_SNR * steepest)[:, 0]
    if clean.all() or not clean.any():
        return lead_vel, noise, None
    kept = lead_vel[clean]
    core = np.clip(kept - _rank(kept, 50), 0, None).sum(axis=0)
    return kept, noise[clean], core


def _rank(x: np.ndarray, pct: float) -> np.ndarray:
    """The pct-th percentile of every row of x [C, L] -> [C, 1], as the order statistic
    (np.partition: ~15x faster than np.percentile, which runs for every beat)."""
    k = int(round(pct / 100 * (x.shape[1] - 1)))
    return np.partition(x, k, axis=1)[:, k:k + 1]


def _qrs_core(vel: np.ndarray, peak: int, n) -> tuple[int, int]:
    """The QRS core: the spatial-velocity maximum and what stays above QRS_CORE_FRACTION of it,
    bridging gaps up to 40 ms (the R apex or an R' notch, where the slope is ~0)."""
    core = vel >= QRS_CORE_FRACTION * vel[peak]
    on = off = peak
    for i in range(peak, max(-1, peak - n(0.14)), -1):
        if core[i]:
            on = i
        elif on - i > n(0.04):
            break
    for i in range(peak, min(len(vel), peak + n(0.18))):
        if core[i]:
            off = i
        elif i - off > n(0.04):
            break
    return on, off


def _extend(active: np.ndarray, i: int, step: int, most: int, gap: int) -> int:
    """From index i, move by `step` while `active`, at most `most` samples, bridging inactive
    stretches up to `gap` (the flat bottom of a q or S wave is inside the QRS)."""
    last, j = i, i
    while 0 <= j + step < len(active) and abs(j + step - i) <= most:
        j += step
        if active[j]:
            last = j
        elif abs(j - last) > gap:
            break
    return last


def _isoelectric(t: np.ndarray, on: int, n) -> np.ndarray:
    seg = t[:, max(0, on - n(0.08)):max(1, on - n(0.005))]
    w = max(1, n(0.02))
    if seg.shape[1] <= w:
        return np.median(seg, axis=1)
    # The 20 ms stretch with the least total slope over all leads.
    s = np.abs(np.diff(seg, axis=1)).sum(axis=0)
    cs = np.convolve(s, np.ones(w), mode="valid")
    i = int(np.argmin(cs))
    return seg[:, i:i + w].mean(axis=1)


def _bundle_branch(x: np.ndarray, names: list[str], on: int, off: int, n) -> str | None:
    """Bundle-branch morphology of a wide QRS in V1 (lateral leads agreeing when present).
    RBBB: an R' -- a positive deflection after the deepest negative one, at least a third as
    large; the lateral leads (I, V5, V6) end with an S. LBBB: V1 mostly negative (QS or rS)
    without R'; the lateral leads end positive."""
    v1 = x[names.index("V1"), on:off + 1]
    lo = int(np.argmin(v1))
    neg, pos = -v1[lo], max(v1.max(), 0.0)
    r_prime = v1[lo:].max() if lo < len(v1) - 1 else 0.0
    term = slice(max(on, off - n(0.04)), off + 1)
    lat = [x[names.index(k)][term].mean() for k in ("I", "V6", "V5") if k in names]
    lateral = float(np.mean(lat)) if lat else None
    if r_prime >= max(0.15, neg / 3) and (lateral is None or lateral < 0.05):
        return "rbbb"
    if neg >= 2 * pos and r_prime < max(0.15, neg / 3) and (lateral is None or lateral > -0.05):
        return "lbbb"
    return None


def _t_end(m: Measurements, y: np.ndarray, off: int, on: int, f: float, n) -> None:
    """T end by the tangent method: the steepest descent after the T peak, extended to the
    isoelectric line."""
    rr = 60.0 / m.heart_rate
    a, b = off + n(0.06), min(len(y), off + n(min(0.65 * rr, 0.5)))
    tw = y[a:b]
    if tw.size < n(0.08):
        return
    k = int(np.argmax(np.abs(tw)))
    amp = tw[k]
    if abs(amp) < 0.05 or k >= tw.size - 2:
        return
    # The steepest descent within 150 ms of the T peak: later ones belong to U or P waves.
    after = tw[k:k + n(0.15)] * np.sign(amp)      # T made upright
    slope = np.diff(after)
    i = int(np.argmin(slope))
    if slope[i] >= 0:
        return
    end = k + i + after[i] / -slope[i]
    if end >= tw.size + n(0.04):
        return
    m.qt_ms = 1000.0 * (a + end - on) / f
    m.qtc_ms = m.qt_ms / (rr ** (1 / 3))


def _p_wave(beats: np.ndarray, template: np.ndarray, fs: float,
            r: int) -> bool:
    """A P wave on the median beat must also be seen beat by beat: in AF the median of
    fibrillatory waves can leave a small bump that no single beat shares."""
    lo, hi = max(0, r - int(0.3 * fs)), max(1, r - int(0.07 * fs))
    seg = beats[:, lo:hi]
    ref = template[lo:hi]
    if seg.shape[1] < 3 or len(seg) < 3:
        return True
    c = _corr_rows(seg.copy(), ref[None].copy())[:, 0]
    return bool(np.median(c) >= 0.5)


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
