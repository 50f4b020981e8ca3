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



def test_each_step_params_change_only_with_the_sections_it_reads():
    """KFP's cache key is a task's inputs. With the whole params JSON in every task's inputs,
    a new evaluation setting ran ingestion and pretraining again; each step's cut holds its
    own sections and `tracking`, with the values of the whole."""
    def cuts(p):
        return {s: steps.step_params(json.dumps(p), s) for s in steps.STEP_SECTIONS}
    full = Params().model_dump(mode="json")
    before = cuts(full)
    full["evaluate"]["finetune_epochs"] += 4
    full["pretrain"]["max_steps"] = 7
    moved = cuts(full)
    assert {s for s in before if before[s] != moved[s]} == {"evaluate", "pretrain"}
    assert steps._params(moved["pretrain"]).pretrain.max_steps == 7
    assert json.loads(moved["evaluate"]) == {"evaluate": full["evaluate"],
                                             "tracking": full["tracking"]}
    full["tracking"]["experiment"] = "elsewhere"            # every step's run context
    assert all(a != b for a, b in zip(moved.values(), cuts(full).values()))
    with pytest.raises(Exception, match="pretrain"):       # the whole is validated first
        steps.step_params(json.dumps({"pretrain": {"max_steps": "many"}}), "reports")
    with pytest.raises(Exception, match="unknown step 'train'"):
        steps.step_params(json.dumps(full), "train")


def test_every_step_reads_only_the_sections_its_cut_holds():
    """A step reading a section missing from its cut would get that section's code defaults,
    silently: each step function's `p.<section>` reads must be in STEP_SECTIONS."""
    import ast
    step_of = {"data_version": "ingest", "ingest": "ingest", "ingest_part": "ingest",
               "ingest_merge": "ingest", "reports": "reports", "embed_text": "embed_text",
               "pretrain": "pretrain", "pretrain_trainjob": "pretrain", "evaluate": "evaluate",
               "register": "register", "gate": "promote", "promote": "promote"}
    tree = ast.parse((ROOT / "src" / "ecgssl" / "pipeline" / "steps.py").read_text())
    fns = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    sections = set(Params.model_fields)
    for name, step in step_of.items():
        read = {n.attr for n in ast.walk(fns[name]) if isinstance(n, ast.Attribute)
                and n.attr in sections and isinstance(n.value, (ast.Name, ast.Call))}
        assert read <= {*steps.STEP_SECTIONS[step], "tracking"}, (name, read)
        assert "model_dump" not in ast.unparse(fns[name]), name      # the whole, not a cut


def test_checkpoints_outlive_a_pod_only_where_the_artifact_is_on_reachable_s3(monkeypatch):
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    assert steps.checkpoints_uri("/tmp/kfp-local/pretrain/model") is None        # kfp.local
    assert steps.checkpoints_uri("s3://b/run/model") == "s3://b/run/model-checkpoints"
    # KFP's default MinIO store: only with an endpoint to reach it (else calls go to AWS)
    assert steps.checkpoints_uri("minio://mlpipeline/v2/model") is None
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio.kubeflow:9000")
    assert steps.checkpoints_uri("minio://mlpipeline/v2/model") == \
        "s3://mlpipeline/v2/model-checkpoints"


def test_the_parent_run_carries_the_flattened_params(tmp_path, monkeypatch):
    """Two scheduled retrains are compared in MLflow's runs list by their parent runs: a
    Kubeflow parent run must carry params.yaml flattened, as `pipeline repro`'s does."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-params")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    p = Params().model_dump(mode="json")
    p["pretrain"]["lr"] = 0.0003
    parent = steps.start(uri, "placeholder", json.dumps(p))
    got = mlflow.MlflowClient(uri).get_run(parent).data.params
    assert got["pretrain.lr"] == "0.0003"
    assert got["promote.metric"] == p["promote"]["metric"]
    assert got["pipeline.model_name"] == p["pipeline"]["model_name"]
    # A run submitted with other arguments (`--arg sources=[mitdb]`) says what it ran, not
    # what params.yaml's pipeline section holds.
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-args")
    parent = steps.start(uri, "placeholder", json.dumps(p),
                         {"sources": ["mitdb"], "run_finetune": True, "tracking_uri": "x"})
    got = mlflow.MlflowClient(uri).get_run(parent).data.params
    assert got["pipeline.sources"] == "['mitdb']" != str(p["pipeline"]["sources"])
    assert got["pipeline.finetune"] == "True" and got["pipeline.tasks"] == str(
        p["pipeline"]["tasks"])
