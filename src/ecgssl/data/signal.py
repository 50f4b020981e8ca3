"""Signal work shared by every source: lead names, resampling, windowing, flat leads."""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np
from scipy.signal import firwin, resample_poly

from ecgssl.errors import RecordError

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
N_LEADS = len(LEADS)

# Names seen in PhysioNet headers, upper-cased, mapped to the canonical 12. MIT-BIH's
# modified limb lead MLII is lead II's axis; Challenge 2017's single AliveCor lead ("ECG")
# is recorded between the hands, i.e. lead I.
_ALIASES = {name.upper(): i for i, name in enumerate(LEADS)}
_ALIASES.update({"MLII": 1, "ML2": 1, "MLI": 0, "MLIII": 2, "ECG": 0})


def lead_index(name: str) -> int:
    """Canonical position (0..11) of a lead name; RecordError for a name we cannot place."""
    idx = _ALIASES.get(name.strip().upper())
    if idx is None:
        raise RecordError(f"unknown lead name {name!r}", "unknown_lead")
    return idx


@functools.lru_cache(maxsize=32)
def _antialias_fir(up: int, down: int) -> np.ndarray:
    # The filter resample_poly designs by default, made once per ratio instead of per call.
    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _ratio(fs_in: float, fs_out: float) -> tuple[int, int]:
    # limit_denominator costs ~25 us: paid once per pair of rates, not once per record
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    return ratio.numerator, ratio.denominator


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling along the last axis (anti-aliased, zero phase)."""
    if fs_in == fs_out:
        return x
    up, down = _ratio(fs_in, fs_out)
    y = resample_poly(x, up, down, axis=-1, window=_antialias_fir(up, down))
    return y.astype(np.float32, copy=False)


def window_starts(n: int, size: int, min_fraction: float) -> list[int]:
    """Start indices of non-overlapping windows; a trailing partial window is dropped.

    A signal shorter than one window yields one window (to be zero-padded) when it is at
    least `min_fraction` of a window, else none.
    """
    if n >= size:
        return list(range(0, n - size + 1, size))
    return [0] if n > 0 and n >= min_fraction * size else []


def cut_windows(x: np.ndarray, starts: list[int], size: int) -> np.ndarray:
    """[C, N] -> [W, C, size], zero-padding a window that runs past the end."""
    out = np.zeros((len(starts), x.shape[0], size), dtype=np.float32)
    for w, s in enumerate(starts):
        seg = x[:, s:s + size]
        out[w, :, :seg.shape[1]] = seg
    return out


def flat_leads(windows: np.ndarray, threshold_mv: float) -> np.ndarray:
    """[W, C, T] -> bool [W, C]: leads whose peak-to-peak is below the threshold."""
    return np.ptp(windows, axis=-1) < threshold_mv
