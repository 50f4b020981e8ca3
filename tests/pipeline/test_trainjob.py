"""Multi-node pretraining on Kubeflow: the TrainJob manifest, its life cycle against the
Kubernetes API's answers, the shared-storage check, and the checked-in 2-node pipeline."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from ddp_check import wait_all
from kubernetes.client.exceptions import ApiException
from safetensors.torch import load_file
from test_compile import ROOT, _compile, _leaf_tasks

from ecgssl.config import load_params
from ecgssl.errors import EcgsslError
from ecgssl.pipeline import steps
from ecgssl.pipeline.build import (
    COMPILED_2NODES,
    compile_pipeline,
    params_with,
    pipeline_params,
    settings,
)
from ecgssl.pipeline.trainjob import (
    PARAMS_ENV,
    NodeSpec,
    job_name,
    run_trainjob,
    shared_uri,
    trainjob_manifest,
    trainjob_state,
)
from ecgssl.train.loop import pretrain

SPEC = NodeSpec(image="registry.local/ecgssl:1-gpu", num_nodes=4, gpus_per_node=8,
                accelerator="nvidia.com/gpu", cpu="32", memory="256G", s3_secret="ecgssl-s3")
URIS = ("s3://b/run/reports/table", "s3://b/run/embed/embeddings", "s3://b/run/pre/model-trainjob")


def _manifest(**kw) -> dict:
    return trainjob_manifest(kw.pop("spec", SPEC), "ecgssl-pretrain-abc", "team-a", *URIS,
                             '{"pretrain": {"max_steps": 5}}',
                             {"MLFLOW_TRACKING_URI": "http://mlflow:5000"})


def test_manifest_is_a_torch_trainjob_running_the_pretrain_cli_on_every_node():
    m = _manifest()
    print(yaml.safe_dump(m, sort_keys=False))          # the manifest, for the reader (-s)
    assert m["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and m["kind"] == "TrainJob"
    assert m["metadata"] == {"name": "ecgssl-pretrain-abc", "namespace": "team-a", "labels": {
        "app.kubernetes.io/name": "ecgssl", "app.kubernetes.io/component": "pretrain"}}
    spec = m["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                  "kind": "ClusterTrainingRuntime"}
    t = spec["trainer"]
    assert t["image"] == SPEC.image and t["numNodes"] == 4 and t["numProcPerNode"] == 8
    assert t["resourcesPerNode"] == {"requests": {"cpu": "32"},
                                     "limits": {"memory": "256G", "nvidia.com/gpu": "8"}}
    # One `ecgssl pretrain` per GPU under torchrun (which reads the runtime's PET_* variables),
    # on the shared URIs, resuming from checkpoints when recreated.
    script = t["command"][2]
    assert t["command"][:2] == ["sh", "-c"] and "exec torchrun -m ecgssl.cli pretrain" in script
    assert t["args"] == ["--data", URIS[0], "--text-emb", URIS[1], "--output", URIS[2],
                         "--resume", "--no-progress"]
    env = {e["name"]: e for e in t["env"]}
    assert json.loads(env[PARAMS_ENV]["value"]) == {"pretrain": {"max_steps": 5}}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    # Credentials by reference only; torchrun's own variables are the runtime's (the Trainer
    # webhook rejects a TrainJob that sets them).
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {
        "secretKeyRef": {"name": "ecgssl-s3", "key": "AWS_SECRET_ACCESS_KEY"}}}
    assert not [n for n in env if n.startswith("PET_") or n in ("RANK", "WORLD_SIZE")]


def test_cpu_nodes_and_no_secret():
    m = _manifest(spec=NodeSpec("img", 2, 0, s3_secret=""))
    t = m["spec"]["trainer"]
    assert t["numProcPerNode"] == 1 and "nvidia.com/gpu" not in t["resourcesPerNode"]["limits"]
    assert "AWS_ACCESS_KEY_ID" not in {e["name"] for e in t["env"]}


def test_node_local_storage_is_refused_with_an_explanation(tmp_path):
    assert shared_uri("minio://mlpipeline/v2/artifacts/x", "table") == \
        "s3://mlpipeline/v2/artifacts/x"
    with pytest.raises(EcgsslError, match="needs the table on shared S3-compatible storage"):
        shared_uri(str(tmp_path / "table"), "table")
    with pytest.raises(EcgsslError, match="gs://b/x"):
        trainjob_manifest(SPEC, "n", "ns", "gs://b/x", *URIS[1:], "{}")
    # The launcher step checks before it touches a cluster (kfp.local hands it local paths).
    params = json.dumps(load_params(ROOT / "params.yaml").model_dump(mode="json"))
    with pytest.raises(EcgsslError, match="pretrain_nodes: 1"):
        steps.pretrain_trainjob(str(tmp_path / "t"), str(tmp_path / "e"), str(tmp_path / "m"),
                                str(tmp_path / "out"), SPEC.to_json(), params, "")


def test_job_name_is_a_dns_label_fixed_by_the_output():
    name = job_name(URIS[2])
    assert name == job_name(URIS[2]) != job_name(URIS[2] + "x")
    assert len(name) <= 63 and name.replace("-", "").isalnum() and name[0].isalpha()


def test_spec_from_settings_round_trips():
    k = settings(load_params(ROOT / "params.yaml"))
    spec = NodeSpec.from_settings(k, 2)
    assert (spec.image, spec.num_nodes, spec.gpus_per_node, spec.runtime) == \
        (k.gpu_image, 2, k.gpu_limit, "torch-distributed")
    assert NodeSpec.from_json(spec.to_json()) == spec


def _status(*conds) -> dict:
    return {"status": {"conditions": [{"type": t, "status": s, "reason": r, "message": m}
                                      for t, s, r, m in conds]}}


def test_state_from_conditions():
    assert trainjob_state({}) == ("Running", "")
    assert trainjob_state(_status(("Suspended", "False", "Resumed", ""))) == ("Running", "")
    assert trainjob_state(_status(("Complete", "True", "JobsCompleted", "done")))[0] == "Complete"
    assert trainjob_state(_status(("Failed", "True", "DeadlineExceeded", "too long"))) == \
        ("Failed", "DeadlineExceeded: too long")


class FakeCluster:
    """The Kubernetes API's answers for TrainJobs, as the kubernetes client raises them
    (ApiException with an HTTP status); each read moves the job to the next of `states`."""

    def __init__(self, existing: tuple[str, ...] = (), states=("Running", "Complete"),
                 create_status: int | None = None):
        self.jobs = {name: {} for name in existing}
        self.states, self.create_status, self.calls = list(states), create_status, []

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        self.calls.append(("create", body["metadata"]["name"]))
        if self.create_status:
            raise ApiException(status=self.create_status, reason="refused")
        if body["metadata"]["name"] in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.jobs[body["metadata"]["name"]] = dict(body)

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        if name not in self.jobs:
            raise ApiException(status=404, reason="NotFound")
        if self.states:
            state = self.states.pop(0)
            self.jobs[name]["status"] = {} if state == "Running" else \
                _status((state, "True", "Test", "pods exited 1"))["status"]
        return self.jobs[name]

    def delete_namespaced_custom_object(self, group, version, ns, plural, name):
        self.calls.append(("delete", name))
        del self.jobs[name]


NAME = "ecgssl-pretrain-abc"


def test_run_waits_for_completion():
    cluster, log = FakeCluster(), []
    out = run_trainjob(_manifest(), poll_s=0, api=cluster, log=log.append)
    assert trainjob_state(out)[0] == "Complete"
    assert cluster.calls == [("create", NAME)]
    assert f"created TrainJob team-a/{NAME} (4 nodes)" in log


def test_a_failed_job_is_an_error_naming_its_reason_and_logs():
    cluster = FakeCluster(states=("Running", "Failed"))
    with pytest.raises(EcgsslError, match=r"failed: Test: pods exited 1; node logs: kubectl "
                       rf"logs -n team-a -l jobset.sigs.k8s.io/jobset-name={NAME}"):
        run_trainjob(_manifest(), poll_s=0, api=cluster, log=lambda _: None)


def test_a_retried_launcher_recreates_a_failed_job_and_attaches_to_a_running_one():
    # The first attempt's job failed: deleted and created again (it resumes: --resume).
    failed = FakeCluster(existing=(NAME,), states=("Failed", "Running", "Complete"))
    run_trainjob(_manifest(), poll_s=0, api=failed, log=lambda _: None)
    assert failed.calls == [("create", NAME), ("delete", NAME), ("create", NAME)]
    # The first attempt's job still runs (the launcher pod was lost): waited for, untouched.
    running = FakeCluster(existing=(NAME,), states=("Running", "Running", "Complete"))
    out = run_trainjob(_manifest(), poll_s=0, api=running, log=lambda _: None)
    assert running.calls == [("create", NAME)] and trainjob_state(out)[0] == "Complete"


def test_a_cancelled_run_deletes_its_trainjob():
    # KFP cancels a run by terminating its pods (SIGTERM): the launcher takes the job with it.
    class Cancelled(FakeCluster):
        def get_namespaced_custom_object(self, *args):
            if len(self.calls) == 1:                   # running, then the run is cancelled
                os.kill(os.getpid(), signal.SIGTERM)
            return super().get_namespaced_custom_object(*args)

    cluster, log = Cancelled(states=("Running",) * 5), []
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        run_trainjob(_manifest(), poll_s=0, api=cluster, log=log.append)
    assert stop.value.code == 128 + signal.SIGTERM
    assert cluster.calls == [("create", NAME), ("delete", NAME)] and not cluster.jobs
    assert f"terminated: deleting TrainJob team-a/{NAME}" in log
    assert signal.getsignal(signal.SIGTERM) is before        # the handler is put back


@pytest.mark.parametrize("status,message", [(404, "has no trainjobs.trainer.kubeflow.org"),
                                            (403, "may not manage trainjobs")])
def test_missing_crd_or_rights_are_clear_errors(status, message):
    with pytest.raises(EcgsslError, match=message):
        run_trainjob(_manifest(), poll_s=0, api=FakeCluster(create_status=status))


# --- the compiled 2-node pipeline ------------------------------------------------------------

def test_checked_in_2node_pipeline_is_up_to_date(repo_params, tmp_path):
    fresh = compile_pipeline(tmp_path / "p.yaml", params_with(["pipeline.pretrain_nodes=2"]))
    assert (ROOT / COMPILED_2NODES).read_text() == fresh.read_text(), (
        f"{COMPILED_2NODES} is stale: run `ecgssl pipeline compile --set "
        f"pipeline.pretrain_nodes=2 -o {COMPILED_2NODES}`")


def test_2node_pipeline_launches_a_trainjob_instead_of_the_gpu_task(repo_params, tmp_path):
    docs = list(yaml.safe_load_all((ROOT / COMPILED_2NODES).read_text()))
    spec = docs[0]
    tasks = _leaf_tasks(spec)
    assert "pretrain-trainjob" in tasks and "pretrain" not in tasks
    execs = spec["deploymentSpec"]["executors"]
    k = settings()
    launcher = execs[tasks["pretrain-trainjob"]["executor"]]["container"]
    assert launcher["image"] == k.image and "accelerator" not in launcher["resources"]
    assert tasks["pretrain-trainjob"]["cachingOptions"]["enableCache"] is True
    job = json.loads(tasks["pretrain-trainjob"]["inputs"]["parameters"]["job"]["runtimeValue"]
                     ["constant"])
    assert NodeSpec.from_json(json.dumps(job)) == NodeSpec.from_settings(k, 2)
    # Downstream tasks read the launcher's Model artifact as they read pretrain's.
    assert "pretrain-trainjob" in json.dumps(tasks["register"])
    # One node keeps today's single GPU task (the default compile).
    one, _ = _compile(tmp_path / "one.yaml")
    assert "pretrain" in _leaf_tasks(one) and "pretrain-trainjob" not in _leaf_tasks(one)
    assert Path(ROOT / COMPILED_2NODES).is_file()


# --- the node command, run as the torch runtime runs it ---------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_node_command_trains_on_two_local_nodes_like_one_process(corpus, repo_params, tmp_path):
    """The TrainJob's command and env as the `torch-distributed` runtime starts each node
    (PET_* variables for torchrun), on two "nodes" of this machine: the CLI under torchrun,
    global rank 0 alone writing the run, the same losses and weights as one process."""
    sets = ["pretrain.max_steps=4", "pretrain.width=16", "pretrain.batch_size=16",
            "pretrain.checkpoint_every=2", "pretrain.warmup_steps=2", "pretrain.lr=0.003",
            "tracking.enabled=false"]
    command = _manifest()["spec"]["trainer"]["command"]
    args = ["--data", str(corpus["table"]), "--text-emb", str(corpus["text_emb"]),
            "--output", str(tmp_path / "run"), "--resume", "--no-progress"]
    port, nodes = _free_port(), []
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir()
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "TMPDIR": str(tmp_path / f"node{rank}"), "OMP_NUM_THREADS": "1",
               PARAMS_ENV: pipeline_params(sets), "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1",
               "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1",
               "PET_MASTER_PORT": str(port)}
        nodes.append(subprocess.Popen(command + args, env=env, cwd=tmp_path,
                                      stdout=open(tmp_path / f"node{rank}.log", "w"),
                                      stderr=subprocess.STDOUT))
    logs = wait_all(nodes, [tmp_path / f"node{r}.log" for r in (0, 1)])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["world_size"] == 2
    assert logs.count("pretrain mets+st") <= 1         # one summary: rank 0's

    one = pretrain(corpus["table"], corpus["text_emb"], tmp_path / "one",
                   params_with(sets).pretrain, progress=False)
    two = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert two["loss/first"] == pytest.approx(one.loss_first, rel=1e-4)
    assert two["loss/final"] == pytest.approx(one.loss_final, rel=1e-4)
    a, b = load_file(tmp_path / "run" / "encoder.safetensors"), \
        load_file(tmp_path / "one" / "encoder.safetensors")
    # Adam's first steps move a weight by about lr * sign(grad): a gradient element at the level
    # of float summation-order noise can take the other sign on two ranks, so a rare weight may
    # differ by up to steps * lr (4 * 3e-3); the losses above agree to 1e-4, and so do almost
    # all weights.
    diff = torch.cat([(a[n] - b[n]).abs().flatten() for n in b])
    assert diff.max() <= 4 * 3e-3
    assert (diff <= 1e-4).float().mean() >= 0.99


def test_s3_secret_reaches_the_launcher_and_the_nodes(monkeypatch, tmp_path):
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["pipeline"]["pretrain_nodes"] = 3
    p["kfp"]["s3_secret"] = "ecgssl-s3"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ECGSSL_PARAMS", str(tmp_path / "params.yaml"))
    spec, k8s = _compile(tmp_path / "p.yaml")
    launcher = k8s["exec-pretrain-trainjob"]["secretAsEnv"][0]
    assert launcher["secretName"] == "ecgssl-s3"
    assert {e["envVar"] for e in launcher["keyToEnv"]} == {"AWS_ACCESS_KEY_ID",
                                                          "AWS_SECRET_ACCESS_KEY"}
    job = NodeSpec.from_json(_leaf_tasks(spec)["pretrain-trainjob"]["inputs"]["parameters"]
                             ["job"]["runtimeValue"]["constant"])
    assert job.num_nodes == 3 and job.s3_secret == "ecgssl-s3"
