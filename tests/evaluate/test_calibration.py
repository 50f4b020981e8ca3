"""Temperature scaling fitted on validation scores (the served classifier's calibration)."""

from __future__ import annotations

import numpy as np

from ecgssl.evaluate.calibration import _logits, fit_temperature, nll


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_overconfident_scores_are_softened_and_nll_drops():
    rng = np.random.default_rng(0)
    true = 2 * rng.normal(size=(2000, 3))                      # calibrated logits: the labels
    p = _softmax(true)                                          # are drawn from them
    y = (rng.random((2000, 1)) > np.cumsum(p, 1)).sum(1)
    over = _softmax(3 * true)                                   # the same ranking, too sharp
    t = fit_temperature(over, y, multilabel=False)
    assert 2.5 < t < 3.5                                       # recovers the factor 3
    z = _logits(over, False)
    assert nll(z, y, False, t) < nll(z, y, False, 1.0)
    assert (np.argmax(z / t, 1) == np.argmax(3 * true, 1)).mean() > 0.99   # same decisions


def test_multilabel_and_underconfident_and_degenerate():
    rng = np.random.default_rng(1)
    y = (rng.random((300, 2)) < 0.3).astype(np.float32)
    logit = rng.normal(size=(300, 2)) + 3 * (y - 0.5)
    under = 1 / (1 + np.exp(-logit / 3))
    assert fit_temperature(under, y, multilabel=True) < 0.6
    assert fit_temperature(None, y, True) == 1.0 and fit_temperature(under[:1], y[:1], True) == 1.0
