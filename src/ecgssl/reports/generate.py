"""The generated report of one window: structured statements, then English rendered from them.

    from ecgssl.reports.generate import generate
    r = generate(signal_12xT, lead_mask, fs)
    r.codes   # ('SR', 'PVC')
    r.text    # 'Sinus rhythm. Ventricular premature complex.'

The input is the signal only: this module cannot see labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecgssl.reports.codes import decide, render
from ecgssl.reports.measure import measure


@dataclass(frozen=True)
class Report:
    text: str
    codes: tuple[str, ...]


def generate(signal: np.ndarray, lead_mask: np.ndarray, fs: float) -> Report:
    """The generated report of one window (signal [12, T] in mV, lead_mask [12])."""
    m = measure(signal, lead_mask, fs)
    codes = decide(m)
    return Report(text=render(codes, m), codes=codes)
