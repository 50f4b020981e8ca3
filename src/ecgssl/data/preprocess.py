"""The one function that turns a table's signal (raw mV) into model input.

Pretraining, evaluation and the served model all call `preprocess`, so a model never sees input
prepared another way than in training. The table keeps raw mV (reports measure on it).

    from ecgssl.data.preprocess import preprocess
    x = preprocess(signal, lead_mask, fs)      # float32 [N, 12, T]

Why these steps: AliveCor, MIT-BIH Holter and 12-lead carts differ in baseline wander and in gain
(a lead's amplitude spans ~0.2 to ~5 mV across devices and electrodes), so each present lead is
high-passed (baseline) and divided by a robust amplitude (its 99th percentile of |x|), which maps
R peaks to about 1 whatever the device; clipping bounds the rare artefact spike.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.signal import butter, sosfiltfilt

VERSION = "hp0.5-p99-clip8"    # recorded in config.json: what a model was trained on
HIGHPASS_HZ = 0.5
MIN_AMPLITUDE_MV = 0.05        # below this a lead is flat: do not blow up its noise
CLIP = 8.0
CHUNK = 4096                   # leads filtered at once (bounds float64 scratch memory)


@functools.lru_cache(maxsize=8)
def _highpass(fs: float) -> np.ndarray:
    return butter(2, HIGHPASS_HZ, btype="highpass", fs=fs, output="sos")


def preprocess(signal: np.ndarray, lead_mask: np.ndarray, fs: float) -> np.ndarray:
    """float32 [N, 12, T] model input from [N, 12, T] mV and bool [N, 12]; absent leads stay 0.

    Only present leads are filtered (single-lead rows cost 1/12 of a 12-lead row)."""
    x = np.asarray(signal, dtype=np.float32)
    mask = np.asarray(lead_mask, dtype=bool)
    out = np.zeros_like(x)
    rows, leads = np.nonzero(mask)
    sos = _highpass(float(fs))
    for i in range(0, len(rows), CHUNK):
        r, c = rows[i:i + CHUNK], leads[i:i + CHUNK]
        y = sosfiltfilt(sos, x[r, c], axis=-1)
        amp = np.maximum(np.percentile(np.abs(y), 99, axis=-1), MIN_AMPLITUDE_MV)
        out[r, c] = np.clip(y / amp[:, None], -CLIP, CLIP)
    return out


def for_model(config: dict):
    """The preprocessing a saved model expects: `preprocess` for models trained with it,
    identity for models from before it existed (their config has no `preprocess` key)."""
    if config.get("preprocess") == VERSION:
        return preprocess
    if config.get("preprocess"):
        from ecgssl.errors import EcgsslError
        raise EcgsslError(f"this model was trained with preprocessing {config['preprocess']!r}; "
                          f"this ecgssl has {VERSION!r}")
    return lambda signal, lead_mask, fs: np.asarray(signal, dtype=np.float32)
