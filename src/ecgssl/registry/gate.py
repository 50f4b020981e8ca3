"""The promotion gate's statistics: a paired bootstrap of challenger minus champion.

Both versions' per-record test scores (the evaluations' scores.parquet, logged with each
registered version) are joined on the test item; resampling the shared patients (with their
records) many times gives the distribution of the metric's difference on the same data, so
the noise that both models share (which records happen to be in the test split) cancels.
The gate promotes only when the lower 95 % bound of that difference exceeds `min_delta`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import f1_score, recall_score

from ecgssl.evaluate.metrics import (
    macro_auroc,
    macro_over,
    per_class_auroc,
    percentile_ci,
    resample_groups,
)

METRICS = ("macro_auroc", "macro_f1", "macro_recall", "accuracy")


@dataclass(frozen=True)
class PairedDelta:
    delta: float          # challenger - champion on all shared items
    ci_low: float
    ci_high: float
    n_items: int          # shared test items
    n_groups: int         # shared patients (the bootstrap unit)
    only_challenger: int  # items scored by one version only
    only_champion: int

    @property
    def paired(self) -> bool:
        return self.n_items > 0 and not self.only_challenger and not self.only_champion

    def describe(self) -> str:
        return (f"paired delta {self.delta:+.4f}, 95 % CI [{self.ci_low:+.4f}, "
                f"{self.ci_high:+.4f}] over {self.n_items} shared test items "
                f"({self.n_groups} patients)")


def gate_metric(key: str) -> tuple[str, str, str]:
    """`<mode>/<task>/<metric>` -> (mode, task, metric); the metric must be one the scores
    can recompute."""
    parts = key.split("/")
    if len(parts) != 3 or parts[2] not in METRICS:
        raise ValueError(f"gate metric {key!r} is not <mode>/<task>/<one of {', '.join(METRICS)}>")
    return parts[0], parts[1], parts[2]


def _value(metric: str, y: np.ndarray, s: np.ndarray, p: np.ndarray, eligible: np.ndarray,
           multilabel: bool, over: np.ndarray) -> float:
    """The metric as metrics.json defines it (evaluate.metrics): NaN on a resample that lacks
    a class of the full set's average (`eligible` for macro AUROC; `over`, the classes with a
    test positive, for macro F1/recall), which the CI then leaves out."""
    if metric == "macro_auroc":          # y is one-hot here, whatever the task
        return macro_auroc(per_class_auroc(y, s, multilabel=True)[eligible])
    yl, pl = (y, p) if multilabel else (y.argmax(1), p.argmax(1))
    if metric in ("macro_f1", "macro_recall"):
        fn = f1_score if metric == "macro_f1" else recall_score
        return macro_over(fn, yl, pl, over, y.sum(0) > 0)
    return float((pl == yl).all(1).mean() if multilabel else (pl == yl).mean())


def paired_bootstrap(challenger, champion, meta: dict, mode: str, metric: str,
                     n_boot: int = 1000, seed: int = 0) -> PairedDelta:
    """Challenger minus champion on the test items both scored (DataFrames of
    scores.parquet), with a 95 % percentile CI from resampling the shared patients."""
    classes = meta["classes"]
    a = challenger[challenger["mode"] == mode].set_index("item")
    b = champion[champion["mode"] == mode].set_index("item")
    shared = a.index.intersection(b.index).sort_values()
    only_a, only_b = len(a.index.difference(b.index)), len(b.index.difference(a.index))
    if len(shared) == 0:
        return PairedDelta(float("nan"), float("nan"), float("nan"), 0, 0, only_a, only_b)
    a, b = a.loc[shared], b.loc[shared]
    cols = lambda k: [f"{k}.{c}" for c in classes]   # noqa: E731
    y = a[cols("y")].to_numpy()
    sa, sb = a[cols("score")].to_numpy(float), b[cols("score")].to_numpy(float)
    pa, pb = a[cols("pred")].to_numpy(), b[cols("pred")].to_numpy()
    eligible = np.asarray(meta.get("eligible") or [True] * len(classes), bool)
    ml = bool(meta.get("multilabel"))
    over = np.flatnonzero(y.sum(0) > 0)           # as evaluate's f1_classes, on shared items
    delta = lambda i: (_value(metric, y[i], sa[i], pa[i], eligible, ml, over)   # noqa: E731
                       - _value(metric, y[i], sb[i], pb[i], eligible, ml, over))
    groups = a["group"].astype(str).to_numpy()
    lo, hi = percentile_ci([delta(pick) for pick in resample_groups(groups, n_boot, seed)])
    return PairedDelta(delta(np.arange(len(shared))), lo, hi, len(shared),
                       len(np.unique(groups)), only_a, only_b)
