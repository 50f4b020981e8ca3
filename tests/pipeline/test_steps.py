"""The MLflow side of a pipeline run, step by step (what the run-local test shows end to end):
the parent run, children found through the pipeline run's name, the exit handler's status."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest

from ecgssl.config import Params
from ecgssl.pipeline import steps
from ecgssl.tracking import PIPELINE_RUN_ENV, log_stage

ROOT = Path(__file__).resolve().parents[2]


def _params(**tracking) -> str:
    p = Params().model_dump(mode="json")
    p["tracking"].update(tracking)
    return json.dumps(p)


@pytest.mark.parametrize("status,expected", [("SUCCEEDED", "FINISHED"), ("FAILED", "FAILED"),
                                             ("CANCELED", "KILLED")])
def test_parent_children_and_final_status(tmp_path, monkeypatch, status, expected):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-123")       # what the pod label gives a task
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    parent = steps.start(uri, "placeholder", _params())
    log_stage(steps._ctx(uri, Params()), "ingest", {"source": "mitdb"}, {"rows": 900},
              run_name="ingest-mitdb")
    assert steps.finish(uri, "placeholder", status, _params()) == expected
    client = mlflow.MlflowClient(uri)
    p = client.get_run(parent)
    assert p.info.status == expected and p.data.tags["ecgssl.pipeline_run"] == "run-123"
    kids = client.search_runs([p.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent}'")
    (kid,) = kids                  # its name: the stage's, then a short distinguishing id
    assert re.fullmatch(r"ingest-mitdb [0-9a-f]{6}", kid.info.run_name), kid.info.run_name
    assert kids[0].data.metrics["rows"] == 900


def test_tracking_off_makes_no_mlflow_call(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-456")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")   # nothing listens here
    off = _params(enabled=False)
    assert steps.start("", "x", off) == ""
    log_stage(steps._ctx("", Params.model_validate(json.loads(off))), "reports", {}, {"rows": 1})
    assert steps.finish("", "x", "SUCCEEDED", off) == "FINISHED"
    assert not (tmp_path / "mlflow.db").exists()


def test_a_retried_start_task_opens_no_second_parent_run(tmp_path, monkeypatch):
    """KFP retries a start_run task whose pod died after the parent run was created: the
    retry must carry on with that parent, or the exit handler closes one of two parents
    and the other (with half the children) stays RUNNING forever."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-789")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = steps.start(uri, "placeholder", _params())
    assert steps.start(uri, "placeholder", _params()) == first          # the retry
    steps.finish(uri, "placeholder", "SUCCEEDED", _params())
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(first, "FINISHED")]


def test_data_version_changes_with_the_source_folder_content(tmp_path):
    """ingest's cache key on Kubeflow (the source-version task): a record edited in place
    under the same data_root changes it; nothing changed, nothing changes."""
    import shutil
    shutil.copytree(ROOT / "data" / "sample" / "mitdb", tmp_path / "mitdb")
    before = steps.data_version("mitdb", str(tmp_path))
    assert steps.data_version("mitdb", str(tmp_path) + "/") == before
    rec = sorted((tmp_path / "mitdb").rglob("*.hea"))[0]
    rec.write_text(rec.read_text() + "# edited\n")
    assert steps.data_version("mitdb", str(tmp_path)) != before
