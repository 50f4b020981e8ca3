"""Classification metrics with bootstrap confidence intervals over test records.

Thresholds (multi-label F1/recall/accuracy) are chosen on validation scores and then applied,
unchanged, to the test scores: `choose_thresholds` never sees test data.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, recall_score, roc_auc_score


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def per_class_auroc(y: np.ndarray, scores: np.ndarray, multilabel: bool) -> np.ndarray:
    onehot = y if multilabel else np.eye(scores.shape[1])[y]
    return np.array([_auroc(onehot[:, c], scores[:, c]) for c in range(scores.shape[1])])


def choose_thresholds(y_val: np.ndarray, s_val: np.ndarray) -> np.ndarray:
    """Per class, the threshold on validation scores that maximises F1 (0.5 if no positives)."""
    out = np.full(s_val.shape[1], 0.5)
    for c in range(s_val.shape[1]):
        if y_val[:, c].sum() == 0:
            continue
        cands = np.unique(s_val[:, c])
        f1s = [f1_score(y_val[:, c], s_val[:, c] >= t, zero_division=0) for t in cands]
        out[c] = cands[int(np.argmax(f1s))]
    return out


def predictions(scores: np.ndarray, multilabel: bool, thresholds: np.ndarray | None):
    return (scores >= thresholds).astype(int) if multilabel else scores.argmax(1)


def point_metrics(y, scores, multilabel, thresholds) -> dict[str, float]:
    pred = predictions(scores, multilabel, thresholds)
    auc = per_class_auroc(y, scores, multilabel)
    return {
        "macro_auroc": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "macro_recall": float(recall_score(y, pred, average="macro", zero_division=0)),
        "accuracy": float((pred == y).all(1).mean() if multilabel else (pred == y).mean()),
    }


def evaluate_scores(y, scores, multilabel: bool, thresholds, groups: np.ndarray,
                    classes: list[str], n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """Point metrics, per-class AUROC, and 95 % bootstrap CIs resampling test records."""
    out = point_metrics(y, scores, multilabel, thresholds)
    for c, a in zip(classes, per_class_auroc(y, scores, multilabel)):
        out[f"auroc/{c}"] = float(a)
    uniq, inverse = np.unique(groups.astype(str), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    boots = {k: [] for k in ("macro_auroc", "macro_f1", "macro_recall", "accuracy")}
    for _ in range(n_boot):
        pick = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        m = point_metrics(y[pick], scores[pick], multilabel, thresholds)
        for k in boots:
            boots[k].append(m[k])
    for k, vals in boots.items():
        v = np.asarray(vals, dtype=float)
        v = v[np.isfinite(v)]
        lo, hi = (np.percentile(v, [2.5, 97.5]) if len(v) else (np.nan, np.nan))
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = float(lo), float(hi)
    return out
