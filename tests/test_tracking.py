"""The run context: built once at a front door, the only path of run lineage."""

from __future__ import annotations

import mlflow

from ecgssl.config import TrackingConfig
from ecgssl.tracking import (
    OFF,
    PARENT_ENV,
    PIPELINE_RUN_ENV,
    RunContext,
    end_pipeline_run,
    log_stage,
    metric_key,
    start_pipeline_run,
    start_run,
)


def test_front_door_reads_params_then_flags_then_environment():
    env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", PARENT_ENV: "abc",
           PIPELINE_RUN_ENV: "run-1"}
    ctx = RunContext.at_front_door(TrackingConfig(experiment="exp"), env=env)
    assert ctx == RunContext(True, "http://mlflow:5000", "exp", "abc", "run-1")
    pinned = RunContext.at_front_door(TrackingConfig(uri="sqlite:///x.db", enabled=False),
                                      enabled=True, env=env)
    assert pinned.tracking_uri == "sqlite:///x.db" and pinned.enabled
    assert RunContext.at_front_door(TrackingConfig(), env={}).tracking_uri == \
        "sqlite:///mlflow.db"
    assert ctx.env() == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", PARENT_ENV: "abc",
                         PIPELINE_RUN_ENV: "run-1"}


def test_stage_runs_become_children_of_the_pipeline_run_by_context_only(tmp_path, monkeypatch):
    for k in (PARENT_ENV, PIPELINE_RUN_ENV, "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)     # nothing travels through the environment
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = RunContext(enabled=True, tracking_uri=uri, experiment="t")
    ctx = start_pipeline_run(base, "run-7")
    log_stage(ctx, "ingest", {"source": "mitdb"}, {"rows": 3})
    # A stage that only knows the pipeline run's name (a KFP task) finds the same parent.
    by_name = RunContext(enabled=True, tracking_uri=uri, pipeline_run="run-7")
    with start_run(by_name, "evaluate-x", {"stage": "evaluate"}, system_metrics=False) as run:
        run.log_metrics({"zeroshot/cinc2017-af/auroc/~": 0.5})
    log_stage(base, "ingest", {}, {"rows": 1})   # outside a pipeline run: logs nothing
    end_pipeline_run(by_name, "FINISHED")
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(ctx.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["ecgssl.pipeline_run"] == "run-7"
    kids = client.search_runs([parent.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}'")
    # each name carries a short id that tells runs of one stage apart
    assert sorted(k.info.run_name.split()[0] for k in kids) == ["evaluate-x", "ingest"]
    assert all(len(k.info.run_name.split()[1]) == 6 for k in kids)
    assert len(client.search_runs([parent.info.experiment_id])) == 3
    ev = next(k for k in kids if k.info.run_name.startswith("evaluate-x"))
    assert ev.data.metrics[metric_key("zeroshot/cinc2017-af/auroc/~")] == 0.5


def test_off_context_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with start_run(OFF, "x") as run:
        run.log_metrics({"a": 1.0})
    log_stage(OFF.with_parent("p", "r"), "ingest", {}, {"rows": 1})
    assert not any(tmp_path.iterdir())


def test_dvc_exp_run_stages_share_one_parent_tagged_with_the_experiment(tmp_path):
    """`dvc exp run` starts the stages itself (no `ecgssl pipeline repro`): they find, or the
    first one opens, one parent run named after the experiment DVC exposes to them."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "DVC_EXP_NAME": "brave-lynx",
           "DVC_EXP_BASELINE_REV": "abc123"}
    ctx = RunContext.at_front_door(TrackingConfig(experiment="t"), env=env)
    assert ctx.pipeline_run == "dvc-exp-brave-lynx" and ctx.in_pipeline
    log_stage(ctx, "ingest", {"source": "mitdb"}, {"rows": 3},
              tables={"label_counts.json": [{"split": "train", "label": "N", "rows": 3}]},
              datasets=[(str(tmp_path), "ingest", "fp123")])
    with start_run(RunContext.at_front_door(TrackingConfig(experiment="t"), env=env),
                   "pretrain", {"stage": "pretrain"}, system_metrics=False):
        pass
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(parents) == 1 and len(runs) == 3
    parent = parents[0]
    assert parent.data.tags["dvc.exp_name"] == "brave-lynx"
    assert parent.info.status == "FINISHED"      # ends with its latest stage
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(kids) == 2
    ingest = next(k for k in kids if k.data.tags["stage"] == "ingest")
    assert ingest.data.tags["dvc.baseline_rev"] == "abc123"
    assert [d.dataset.digest for d in ingest.inputs.dataset_inputs] == ["fp123"]
    assert "label_counts.json" in [a.path for a in client.list_artifacts(ingest.info.run_id)]


def test_a_failing_dvc_exp_stage_does_not_leave_the_experiment_parent_running(tmp_path):
    """The experiment's parent ends with its latest stage, also when that stage fails."""
    import pytest
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "DVC_EXP_NAME": "sad-owl"}
    ctx = RunContext.at_front_door(TrackingConfig(experiment="t"), env=env)
    with pytest.raises(RuntimeError), start_run(ctx, "pretrain", {"stage": "pretrain"},
                                                 system_metrics=False):
        raise RuntimeError("out of memory")
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    status = {r.data.tags.get("stage"): r.info.status for r in runs}
    assert status == {"pipeline": "FAILED", "pretrain": "FAILED"}, status
