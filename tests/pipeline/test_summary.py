"""`ecgssl summary`'s metric rows come from the pipeline's own results only."""

from __future__ import annotations

import json

from ecgssl.pipeline.summary import key_metrics


def test_key_metrics_skip_staging_folders_and_mlflows_store(tmp_path):
    """A killed evaluate leaves `.<task>.staging-PID/metrics.json` beside its folder, and a
    file MLflow store may hold metrics.json files: neither is a result to show."""
    good = {"zeroshot/cinc2017-af/macro_auroc": 0.75, "loss/final": 1.5}
    for rel, m in (("eval/cinc2017-af", good), ("eval/.cinc2017-af.staging-123", good),
                   ("mlruns/0/abc", good)):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "metrics.json").write_text(json.dumps(m))
    rows = key_metrics(tmp_path)
    assert {f for f, _, _ in rows} == {"eval/cinc2017-af/metrics.json"}
    assert ("eval/cinc2017-af/metrics.json", "zeroshot/cinc2017-af/macro_auroc", 0.75) in rows
