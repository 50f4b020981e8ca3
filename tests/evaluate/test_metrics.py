"""Metrics on hand-checked cases; label fractions; thresholds that never see test data."""

from __future__ import annotations

import numpy as np
import pytest

from ecgssl.evaluate.metrics import (
    Scoring,
    choose_thresholds,
    eligible_classes,
    evaluate_scores,
    point_metrics,
    predictions,
)
from ecgssl.evaluate.supervised import label_subsets


def scoring(n, multilabel, **kw):
    return Scoring([str(i) for i in range(n)], multilabel, np.ones(n, bool), **kw)


def test_point_metrics_multiclass_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    scores = np.array([[.8, .1, .1], [.4, .5, .1], [.2, .7, .1], [.1, .8, .1], [.1, .1, .8],
                       [.3, .3, .4]])
    m = point_metrics(y, scores, scoring(3, False), None)
    # predictions 0,1,1,1,2,2: class recalls 0.5, 1, 1; accuracy 5/6
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["macro_recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    # F1: class0 p=1 r=.5 -> 2/3; class1 p=2/3 r=1 -> .8; class2 -> 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 1) / 3)
    assert m["macro_auroc"] == pytest.approx(1.0)   # every class ranks its positives first


def test_multilabel_auroc_and_thresholds_by_hand():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s = np.array([[.9, .2], [.3, .8], [.6, .4], [.1, .5]])
    m = point_metrics(y, s, scoring(2, True), np.array([0.5, 0.45]))
    assert m["macro_auroc"] == pytest.approx((1.0 + 0.75) / 2)
    assert choose_thresholds(y, s).tolist() == [0.6, 0.4]


def test_macro_auroc_skips_classes_with_too_few_test_items():
    y = np.array([[1, 0]] * 12 + [[0, 1]] * 3 + [[0, 0]] * 12)
    assert eligible_classes(y, 2, True, 10).tolist() == [True, False]
    assert eligible_classes(y, 2, True, 20).tolist() == [True, True]   # none meets 20: all


def test_multiclass_offsets_tuned_on_val_raise_the_challenge_f1():
    # Class 1 is under-called by argmax: a val-tuned offset fixes it, for F1 over classes 0, 1.
    y = np.array([0] * 6 + [1] * 4 + [2] * 2)
    s = np.array([[.6, .4, 0]] * 6 + [[.55, .45, 0]] * 4 + [[.1, .1, .8]] * 2)
    off = choose_thresholds(y, s, multilabel=False, f1_over=[0, 1])
    assert (predictions(s, False, off) == y).all()
    sc = scoring(3, False, f1_over=[0, 1], f1_key="f1_ab")
    assert point_metrics(y, s, sc, off)["f1_ab"] == 1.0 > point_metrics(y, s, sc, None)["f1_ab"]


def test_bootstrap_ci_brackets_the_point_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    r = rng.random(300)
    s = np.stack([1 - y * 0.3 - r * 0.7, y * 0.3 + r * 0.7], 1)     # column a = 1 - column b
    groups = np.repeat(np.arange(100), 3)
    sc = Scoring(["a", "b"], False, np.ones(2, bool))
    m = evaluate_scores(y, s, sc, None, groups, n_boot=100)
    assert m["macro_auroc_ci_low"] <= m["macro_auroc"] <= m["macro_auroc_ci_high"]
    assert m["auroc/a"] == pytest.approx(m["auroc/b"])
    pred = s.argmax(1)     # Se and +P of class b (AAMI EC57 style) by hand
    assert m["se/b"] == pytest.approx(((pred == 1) & (y == 1)).sum() / (y == 1).sum())
    assert m["ppv/b"] == pytest.approx(((pred == 1) & (y == 1)).sum() / (pred == 1).sum())


def test_label_fractions_are_patient_disjoint_and_nested():
    groups = np.array([f"p{i // 3}" for i in range(600)], dtype=object)   # 200 patients
    subsets = label_subsets(groups, [1, 10, 100], seed=7)
    patients = {f: set(groups[idx]) for f, idx in subsets.items()}
    assert len(patients[1]) == 2 and len(patients[10]) == 20 and len(patients[100]) == 200
    assert patients[1] <= patients[10] <= patients[100]
    for f, idx in subsets.items():   # a chosen patient brings all of its rows, no one else's
        assert set(idx) == {i for i, g in enumerate(groups) if g in patients[f]}
    assert label_subsets(groups, [1, 10, 100], seed=7)[10].tolist() == subsets[10].tolist()
