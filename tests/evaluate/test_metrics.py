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


# --- on the bundled sample: MIT-BIH test records 100 (S beats, 1 V window) and 105 (V, Q) -------

def _mitdb_test(tables):
    from ecgssl.evaluate.tasks import load_task
    task = load_task("mitdb-aami", tables["mitdb"])
    test = task.part("test")
    return task, test, task.y[test], task.group[test]


def test_bootstrap_resamples_measure_the_point_estimates_classes(tables):
    # S ranked perfectly, V reversed: macro AUROC over {S, V} is 0.5 on every sample that has
    # both. A resample of record 105 alone has no S beat; averaging V alone there gave a CI of
    # [0.0, 0.5] around 0.5, and counting S's F1 as 0 pulled macro F1's CI below its point.
    task, _, y, groups = _mitdb_test(tables)
    s = y.copy()
    s[:, task.classes.index("V")] = 1 - s[:, task.classes.index("V")]
    sc = Scoring(task.classes, True, eligible_classes(y, len(task.classes), True, 10))
    assert [c for c, e in zip(task.classes, sc.eligible) if e] == ["S", "V"]
    m = evaluate_scores(y, s, sc, np.full(len(task.classes), 0.5), groups, n_boot=200)
    assert m["macro_auroc"] == m["macro_auroc_ci_low"] == m["macro_auroc_ci_high"] == 0.5
    assert m["macro_f1"] == m["macro_f1_ci_low"] == m["macro_f1_ci_high"] == 0.75
    # the resamples of one record only measured something else, and say how many are left
    assert m["bootstrap_groups"] == 2 and 50 < m["macro_auroc_ci_n"] < 150


def test_macro_f1_and_recall_leave_out_a_class_absent_from_the_test_items(tables):
    # Record 100 has no Q beat: Q's F1 and recall are undefined there, not 0.
    task, test, y, groups = _mitdb_test(tables)
    keep = task.record[test] == "100"
    y, groups = y[keep], groups[keep]
    sc = Scoring(task.classes, True, eligible_classes(y, len(task.classes), True, 10))
    m = evaluate_scores(y, y.copy(), sc, np.full(len(task.classes), 0.5), groups, n_boot=20)
    assert m["macro_f1"] == m["macro_recall"] == 1.0      # a perfect model on what is there
    assert m["f1_classes"] == 3                           # N, S, V


def test_macro_f1_averages_the_same_classes_whatever_a_model_predicts(tables):
    # Challenge 2017 test records without a noisy (~) one: a model that calls one normal
    # record noisy is averaged over the same N, A, O as its twin, not over N, A, O and ~.
    from sklearn.metrics import f1_score

    from ecgssl.evaluate.stage import Levels
    from ecgssl.evaluate.tasks import load_task
    task = load_task("cinc2017-af", tables["cinc2017"])
    test = task.part("test")
    y, _, groups = Levels(task, True)(test, np.eye(4)[task.y[test]])
    keep = y != task.classes.index("~")
    y, groups = y[keep], groups[keep]
    sc = Scoring(task.classes, False, eligible_classes(y, 4, False, 1))
    good = np.eye(4)[y]
    bad = good.copy()
    bad[np.flatnonzero(y == 0)[0]] = np.eye(4)[3]          # one N record called ~
    m_good, m_bad = (point_metrics(y, s, sc, None) for s in (good, bad))
    assert m_good["macro_f1"] == 1.0
    assert m_bad["macro_f1"] == pytest.approx(
        f1_score(y, bad.argmax(1), labels=[0, 1, 2], average="macro"))
