"""`ecgssl pipeline repro`: the MLflow parent run around `dvc repro`."""

from __future__ import annotations

import json

import mlflow

from ecgssl.pipeline.dvc import repro
from ecgssl.tracking import RunContext

GATE = "zeroshot/cinc2017-af/macro_auroc"


def _metrics(path, **values):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


def test_the_parent_run_logs_this_pipelines_metrics_not_other_runs_in_outputs(tmp_path,
                                                                               monkeypatch):
    """outputs/ also holds what other runs left (`ecgssl pipeline run-local` writes its tasks'
    evaluations under outputs/kfp/ by default): the parent run's headline metrics are the
    ones dvc.yaml's stages wrote (outputs/pretrain, outputs/eval/<task>), never another run's
    numbers under the same key."""
    monkeypatch.chdir(tmp_path)           # not a DVC repository: `dvc repro` fails at once
    outputs = tmp_path / "outputs"
    _metrics(outputs / "pretrain" / "metrics.json", **{"loss/final": 1.25})
    _metrics(outputs / "eval" / "cinc2017-af" / "metrics.json", **{GATE: 0.61})
    _metrics(outputs / "kfp" / "ecgssl-123" / "evaluate" / "evaluation" / "metrics.json",
             **{GATE: 0.99})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = RunContext(enabled=True, tracking_uri=uri, experiment="t")
    assert repro(["--dry"], ctx, params=tmp_path / "none.yaml", outputs=outputs) != 0
    client = mlflow.MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert parent.info.status == "FAILED"
    assert parent.data.metrics == {"loss/final": 1.25, GATE: 0.61}, parent.data.metrics
