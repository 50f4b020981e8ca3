"""Classification metrics with bootstrap confidence intervals over test records.

Decisions (multi-label thresholds, multi-class class offsets) are chosen on validation scores
and then applied, unchanged, to the test scores: `choose_thresholds` never sees test data.
Macro AUROC averages the classes with at least `min_count` positive and negative test items
(a class with 3 positives gives an AUROC that is mostly noise); the others are listed. Macro
F1/recall average the classes with a test positive (`f1_classes`). Each bootstrap resample
measures the same statistic as the point estimate, over the same classes, or counts as missing
(`<metric>_ci_n` says how many resamples the CI rests on, `bootstrap_groups` over how many
groups): averaging whatever classes a resample happens to hold is another statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import f1_score, recall_score, roc_auc_score

HEADLINE_CI = ("macro_auroc", "macro_f1", "macro_recall", "accuracy")


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def onehot(y: np.ndarray, n_classes: int, multilabel: bool) -> np.ndarray:
    return y if multilabel else np.eye(n_classes)[y]


def per_class_auroc(y: np.ndarray, scores: np.ndarray, multilabel: bool) -> np.ndarray:
    oh = onehot(y, scores.shape[1], multilabel)
    return np.array([_auroc(oh[:, c], scores[:, c]) for c in range(scores.shape[1])])


def eligible_classes(y: np.ndarray, n_classes: int, multilabel: bool,
                     min_count: int) -> np.ndarray:
    """Classes with >= min_count positives and negatives; when none has, every class with at
    least one of each (so a tiny split still gives a number, marked by the count)."""
    oh = onehot(y, n_classes, multilabel)
    pos = oh.sum(0)
    neg = len(oh) - pos
    ok = (pos >= min_count) & (neg >= min_count)
    return ok if ok.any() else (pos > 0) & (neg > 0)


def predictions(scores: np.ndarray, multilabel: bool, thresholds: np.ndarray | None):
    """Multi-label: score >= per-class threshold. Multi-class: argmax of log score plus a
    per-class offset (the decision rule tuned on val; no offsets = plain argmax)."""
    if multilabel:
        return (scores >= thresholds).astype(int)
    if thresholds is None:
        return scores.argmax(1)
    return (np.log(np.clip(scores, 1e-12, None)) + thresholds).argmax(1)


def _f1(y, pred, classes_idx) -> float:
    return float(f1_score(y, pred, labels=classes_idx, average="macro", zero_division=0))


def choose_thresholds(y_val: np.ndarray, s_val: np.ndarray, multilabel: bool = True,
                      f1_over: list[int] | None = None) -> np.ndarray:
    """Multi-label: per class, the threshold on val scores that maximises F1 (0.5 without
    positives). Multi-class: per-class log-score offsets that maximise macro F1 (over `f1_over`
    classes, e.g. Challenge 2017's N, A, O) on val, by coordinate ascent."""
    n = s_val.shape[1]
    if multilabel:
        out = np.full(n, 0.5)
        for c in range(n):
            if y_val[:, c].sum() == 0:
                continue
            cands = np.unique(s_val[:, c])
            if len(cands) > 200:
                cands = np.quantile(s_val[:, c], np.linspace(0, 1, 201))
            f1s = [f1_score(y_val[:, c], s_val[:, c] >= t, zero_division=0) for t in cands]
            out[c] = cands[int(np.argmax(f1s))]
        return out
    labels = list(f1_over) if f1_over is not None else list(range(n))
    offsets = np.zeros(n)
    if len(y_val) == 0:
        return offsets
    best = _f1(y_val, predictions(s_val, False, offsets), labels)
    grid = np.linspace(-3, 3, 25)
    for _ in range(2):
        for c in range(n):
            for g in grid:
                trial = offsets.copy()
                trial[c] = g
                f = _f1(y_val, predictions(s_val, False, trial), labels)
                if f > best + 1e-9:
                    best, offsets = f, trial
    return offsets


@dataclass(frozen=True)
class Scoring:
    """How one task is scored: its classes, which count for macro AUROC, and an optional
    challenge F1 over some classes (key `f1_<names>`, e.g. f1_nao)."""
    classes: list[str]
    multilabel: bool
    eligible: np.ndarray                 # bool [C]
    f1_over: list[int] | None = None
    f1_key: str | None = None


def f1_classes(y: np.ndarray, n_classes: int, multilabel: bool) -> np.ndarray:
    """Class indices macro F1 and recall average: those with a positive among the test items.
    Fixed by the labels alone, so a model and its random twin (and every bootstrap resample)
    average the same classes, and a class absent from the test items is left out, not
    counted as 0 (its recall is undefined)."""
    return np.flatnonzero(onehot(y, n_classes, multilabel).sum(0) > 0)


def macro_auroc(auc: np.ndarray) -> float:
    """The mean of the scored classes' AUROC; NaN when one is undefined (a bootstrap resample
    without a class's positives or negatives): a mean over the others is another statistic."""
    return float(auc.mean()) if len(auc) and np.isfinite(auc).all() else float("nan")


def macro_over(fn, y, pred, over: np.ndarray, has_pos: np.ndarray) -> float:
    """`fn` (f1_score, recall_score) macro-averaged over the classes `over`, the same set for
    every model and resample; NaN unless each of them has a positive among the items."""
    if not len(over) or not bool(has_pos[over].all()):
        return float("nan")
    return float(fn(y, pred, labels=over, average="macro", zero_division=0))


def point_metrics(y, scores, scoring: Scoring, thresholds,
                  over: np.ndarray | None = None) -> dict[str, float]:
    """`over`: the classes of macro F1/recall (default: `f1_classes(y)`); a bootstrap resample
    passes the full test set's, and gets NaN where one of them (or one macro AUROC class) has
    no positive (or negative) in it: it would measure an average over other classes."""
    n = len(scoring.classes)
    pred = predictions(scores, scoring.multilabel, thresholds)
    auc = per_class_auroc(y, scores, scoring.multilabel)[scoring.eligible]
    over = f1_classes(y, n, scoring.multilabel) if over is None else np.asarray(over)
    has_pos = onehot(y, n, scoring.multilabel).sum(0) > 0
    out = {
        "macro_auroc": macro_auroc(auc),
        "macro_f1": macro_over(f1_score, y, pred, over, has_pos),
        "macro_recall": macro_over(recall_score, y, pred, over, has_pos),
        "accuracy": float((pred == y).all(1).mean() if scoring.multilabel else
                          (pred == y).mean()),
    }
    if scoring.f1_key:         # the challenge F1, over those of its classes `over` holds
        sub = [c for c in scoring.f1_over if c in set(over.tolist())]
        out[scoring.f1_key] = _f1(y, pred, sub) if sub and has_pos[sub].all() else float("nan")
    return out


def mean_by(keys: np.ndarray, scores: np.ndarray):
    """Scores averaged over the rows that share a key (a record's windows): (the first row of
    each key, in sorted-key order; the mean scores; the row counts)."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    summed = np.zeros((len(first), scores.shape[1]))
    np.add.at(summed, inverse, scores)
    counts = np.bincount(inverse, minlength=len(first))
    return first, summed / counts[:, None], counts


def resample_groups(groups: np.ndarray, n_boot: int, seed: int):
    """Index sets of a group (patient or record) bootstrap: each draws as many groups as there
    are, with replacement, and takes all their items."""
    uniq, inverse = np.unique(groups.astype(str), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])


def percentile_ci(values) -> tuple[float, float]:
    """The 95 % percentile interval of the finite bootstrap values (nan, nan without any)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = np.percentile(v, [2.5, 97.5]) if len(v) else (np.nan, np.nan)
    return float(lo), float(hi)


def evaluate_scores(y, scores, scoring: Scoring, thresholds, groups: np.ndarray,
                    n_boot: int = 200, seed: int = 0) -> dict:
    """Point metrics, per-class AUROC, sensitivity (Se) and positive predictivity (+P) as in
    AAMI EC57, and 95 % bootstrap CIs resampling test groups (patients or records)."""
    over = f1_classes(y, len(scoring.classes), scoring.multilabel)
    out = point_metrics(y, scores, scoring, thresholds, over)
    oh = onehot(y, len(scoring.classes), scoring.multilabel)
    pred = onehot(predictions(scores, scoring.multilabel, thresholds), len(scoring.classes),
                  scoring.multilabel)
    for c, (name, a) in enumerate(zip(scoring.classes,
                                      per_class_auroc(y, scores, scoring.multilabel))):
        tp = float((pred[:, c] * oh[:, c]).sum())
        out[f"auroc/{name}"] = float(a)
        out[f"se/{name}"] = tp / oh[:, c].sum() if oh[:, c].sum() else float("nan")
        out[f"ppv/{name}"] = tp / pred[:, c].sum() if pred[:, c].sum() else float("nan")
    out["auroc_classes"] = float(scoring.eligible.sum())
    for name, ok in zip(scoring.classes, scoring.eligible):
        out[f"auroc_scored/{name}"] = float(ok)     # 0: too few test items, not in the macro
    out["f1_classes"] = float(len(over))             # classes macro F1/recall average
    keys = [*HEADLINE_CI, *([scoring.f1_key] if scoring.f1_key else [])]
    boots = {k: [] for k in keys}
    for pick in resample_groups(groups, n_boot, seed):
        m = point_metrics(y[pick], scores[pick], scoring, thresholds, over)
        for k in boots:
            boots[k].append(m[k])
    # How much the CI rests on: resamples that measured the point's statistic (the others
    # lacked a class's positives), and the groups drawn (2 records give 3 distinct values).
    out["bootstrap_groups"] = float(len(np.unique(groups.astype(str))))
    for k, vals in boots.items():
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = percentile_ci(vals)
        out[f"{k}_ci_n"] = float(np.isfinite(vals).sum())
    return out
