"""The promotion gate's paired bootstrap on per-record scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecgssl.registry.gate import gate_metric, paired_bootstrap

CLASSES = ["N", "A"]
META = {"classes": CLASSES, "multilabel": False, "eligible": [True, True]}


def scores(n=120, skill=0.0, seed=0, mode="zeroshot") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    noise = rng.random(n)
    s_a = (1 - skill) * noise + skill * y
    df = pd.DataFrame({"mode": mode, "item": [f"r{i}" for i in range(n)],
                       "group": [f"p{i // 2}" for i in range(n)],
                       "label": [CLASSES[v] for v in y]})
    df["y.N"], df["y.A"] = (y == 0).astype(int), y
    df["score.N"], df["score.A"] = 1 - s_a, s_a
    df["pred.A"] = (s_a > 0.5).astype(int)
    df["pred.N"] = 1 - df["pred.A"]
    return df


def test_the_same_scores_are_no_gain():
    p = paired_bootstrap(scores(), scores(), META, "zeroshot", "macro_auroc", 200)
    assert p.paired and p.delta == 0 and p.ci_low == 0 == p.ci_high
    assert p.n_items == 120 and p.n_groups == 60


def test_a_real_gain_has_a_ci_above_zero_and_noise_does_not():
    better = paired_bootstrap(scores(skill=0.6), scores(), META, "zeroshot", "macro_auroc", 300)
    assert better.delta > 0.2 and better.ci_low > 0.1 and better.ci_low <= better.delta
    # two equally skilled models with different noise: a CI that spans 0
    noise = paired_bootstrap(scores(skill=0.3, seed=1), scores(skill=0.3, seed=2), META,
                             "zeroshot", "macro_auroc", 300)
    assert noise.ci_low < 0 < noise.ci_high
    acc = paired_bootstrap(scores(skill=0.6), scores(), META, "zeroshot", "accuracy", 100)
    assert acc.delta > 0


def test_other_records_are_reported_as_not_paired():
    p = paired_bootstrap(scores().iloc[5:], scores(), META, "zeroshot", "macro_auroc", 100)
    assert not p.paired and p.only_champion == 5 and p.only_challenger == 0
    none = paired_bootstrap(scores(mode="probe"), scores(), META, "zeroshot", "macro_auroc")
    assert not none.paired and none.n_items == 0


def test_gate_metric_keys():
    assert gate_metric("zeroshot/cinc2017-af/macro_auroc") == ("zeroshot", "cinc2017-af",
                                                                "macro_auroc")
    with pytest.raises(ValueError, match="macro_auroc"):
        gate_metric("probe/cinc2017-af/f10/macro_auroc")


def test_the_gate_measures_macro_f1_as_metrics_json_does():
    """Three classes, one (O) absent from the test items: metrics.json averages macro F1 over
    N and A whatever the models predict. A champion that calls some items O must not lose
    an extra class at F1 = 0 in the gate (sklearn's default class set), nor get one the
    challenger does not."""
    from ecgssl.evaluate.metrics import Scoring, point_metrics
    classes = ["N", "A", "O"]
    meta = {"classes": classes, "multilabel": False, "eligible": [True, True, False]}

    def three(df: pd.DataFrame, call_o: int) -> pd.DataFrame:
        df = df.copy()
        df["y.O"], df["score.O"], df["pred.O"] = 0, 0.0, 0
        df.loc[df.index[:call_o], ["pred.N", "pred.A", "pred.O"]] = [0, 0, 1]
        return df
    a, b = three(scores(skill=0.6), 0), three(scores(skill=0.6), 6)
    p = paired_bootstrap(a, b, meta, "zeroshot", "macro_f1", 200)
    scoring = Scoring(classes=classes, multilabel=False, eligible=np.array([True, True, False]))
    y = np.arange(120) % 2

    def f1(df):
        s = df[[f"pred.{c}" for c in classes]].to_numpy(float)   # its decisions as scores
        return point_metrics(y, s, scoring, None)["macro_f1"]
    assert p.delta == pytest.approx(f1(a) - f1(b))
    assert p.ci_low <= p.delta <= p.ci_high
