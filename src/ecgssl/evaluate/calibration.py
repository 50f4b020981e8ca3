"""Temperature scaling: one scalar T > 0 that divides a classifier's logits so that its
probabilities are calibrated (Guo et al. 2017), fitted on validation rows by minimising the
negative log-likelihood. It never changes a ranking (AUROC) or a multi-class argmax.

The scores it starts from are the held-out probabilities evaluation already has (val rows, or
out-of-fold rows where a table keeps no val split); logits are recovered from them exactly:
log p for softmax (up to a per-row constant that softmax ignores), logit(p) for sigmoid.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax

BOUNDS = (np.log(0.05), np.log(20.0))    # T in [0.05, 20]
EPS = 1e-7


def _logits(p: np.ndarray, multilabel: bool) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p)) if multilabel else np.log(p)


def nll(logits: np.ndarray, y: np.ndarray, multilabel: bool, t: float) -> float:
    z = logits / t
    if multilabel:
        q = np.clip(expit(z), EPS, 1 - EPS)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(y)), y]))


def fit_temperature(probs: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    """The T minimising val NLL of `probs` (held-out probabilities [N, C]) against `y`
    (multi-label [N, C] 0/1, multi-class [N] class index); 1.0 when there is nothing to fit."""
    if probs is None or len(probs) < 2:
        return 1.0
    z = _logits(probs, multilabel)
    y = np.asarray(y)
    r = minimize_scalar(lambda log_t: nll(z, y, multilabel, float(np.exp(log_t))),
                        bounds=BOUNDS, method="bounded", options={"xatol": 1e-4})
    t = float(np.exp(r.x)) if r.success and np.isfinite(r.fun) else 1.0
    return t if nll(z, y, multilabel, t) <= nll(z, y, multilabel, 1.0) else 1.0
