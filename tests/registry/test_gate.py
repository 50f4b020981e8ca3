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
