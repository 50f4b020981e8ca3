"""The compiled Kubeflow pipeline: in sync with the code, and every task configured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ecgssl.config import load_params
from ecgssl.pipeline.build import COMPILED, compile_pipeline, settings
from ecgssl.pipeline.steps import STEP_SECTIONS

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _compile(path: Path) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(compile_pipeline(path).read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _leaf_tasks(spec: dict) -> dict[str, dict]:
    """Every container task of the DAG, by name, however deeply nested."""
    out = {}

    def walk(dag):
        for name, task in dag["tasks"].items():
            comp = spec["components"][task["componentRef"]["name"]]
            if "dag" in comp:
                walk(comp["dag"])
            else:
                out[name] = {**task, "executor": comp["executorLabel"]}
    walk(spec["root"]["dag"])
    return out


def test_checked_in_compiled_pipeline_is_up_to_date(repo_params, tmp_path):
    fresh = compile_pipeline(tmp_path / "p.yaml").read_text()
    assert (ROOT / COMPILED).read_text() == fresh, \
        "pipelines/compiled/ecgssl_pipeline.yaml is stale: run `ecgssl pipeline compile`"


def test_dag_shape_resources_caching_and_retries(repo_params, tmp_path):
    spec, _ = _compile(tmp_path / "p.yaml")
    tasks = _leaf_tasks(spec)
    assert set(tasks) == {"start-run", "finish-run", "source-version", "ingest", "reports",
                          "embed-text", "pretrain", "evaluate", "finetune", "register", "gate",
                          "promote", "step-params", *(f"step-params-{i}" for i in range(2, 8))}
    execs = spec["deploymentSpec"]["executors"]
    k = settings()
    for name, task in tasks.items():
        assert "cachingOptions" in task, name                 # set explicitly on every task
        assert task["retryPolicy"]["maxRetryCount"] == k.retries, name
        res = execs[task["executor"]]["container"]["resources"]
        gpu = name in ("pretrain", "finetune")
        assert res["resourceCpuRequest"] == (k.gpu_cpu if gpu else k.cpu), name
        assert res["resourceMemoryLimit"] == (k.gpu_memory if gpu else k.memory), name
        assert ("accelerator" in res) == gpu, name
        image = execs[task["executor"]]["container"]["image"]
        assert image == (k.gpu_image if gpu else k.image), name
    assert execs["exec-pretrain"]["container"]["resources"]["accelerator"]["resourceType"] == \
        "nvidia.com/gpu"
    assert execs["exec-pretrain"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    # Data stages reuse results; side effects on MLflow and the registry never come from cache.
    cached = {n for n, t in tasks.items() if t["cachingOptions"].get("enableCache")}
    assert cached == {"ingest", "reports", "embed-text", "pretrain", "evaluate", "finetune",
                      *(n for n in tasks if n.startswith("step-params"))}
    # Fan-out per source and per task, and the promotion only behind the gate.
    comps = spec["components"]
    loops = [c for c in comps.values() if "dag" in c and "parameterIterator" in json.dumps(c)]
    assert loops
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["sources"]["defaultValue"] == load_params().pipeline.sources
    assert params["tasks"]["defaultValue"] == load_params().pipeline.tasks
    assert json.loads(params["params"]["defaultValue"])["pretrain"]["max_steps"] == \
        yaml.safe_load((ROOT / "params.yaml").read_text())["pretrain"]["max_steps"]
    gate_dag = [c for n, c in comps.items() if n.startswith("comp-condition") and
                "promote" in c.get("dag", {}).get("tasks", {})]
    assert gate_dag, "promote must sit inside the gate's condition"


def test_node_selector_tolerations_and_gpu_limit_from_params(monkeypatch, tmp_path):
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["kfp"].update(gpu_limit=2, node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
                    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists",
                                  "effect": "NoSchedule"}])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ECGSSL_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.setenv("ECGSSL_GPU_IMAGE", "registry.local/ecgssl:test-gpu")
    spec, k8s = _compile(tmp_path / "p.yaml")
    pre = spec["deploymentSpec"]["executors"]["exec-pretrain"]["container"]
    assert pre["resources"]["accelerator"]["resourceCount"] == "2"
    assert pre["image"] == "registry.local/ecgssl:test-gpu"
    assert k8s["exec-pretrain"]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert k8s["exec-pretrain"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nodeSelector" not in k8s["exec-ingest"]
    # Every task learns its run id from the pod label (for MLflow, without breaking the cache).
    assert all(e["fieldPathAsEnv"][0]["name"] == "ECGSSL_PIPELINE_RUN" for e in k8s.values())


def test_cli_compile_check_detects_a_stale_file(repo_params, tmp_path):
    stale = tmp_path / "stale.yaml"
    stale.write_text("# old\n")
    cmd = [str(BIN / "ecgssl"), "pipeline", "compile", "--check", "--output"]
    bad = subprocess.run([*cmd, str(stale)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "out of date" in bad.stderr
    good = subprocess.run([*cmd, str(ROOT / COMPILED)], capture_output=True, text=True, cwd=ROOT)
    assert good.returncode == 0, good.stderr


def test_ingest_fans_out_over_slices_when_ingest_parts_is_set(monkeypatch, tmp_path):
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["pipeline"]["ingest_parts"] = 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ECGSSL_PARAMS", str(tmp_path / "params.yaml"))
    spec, _ = _compile(tmp_path / "p.yaml")
    tasks = _leaf_tasks(spec)
    assert "ingest" not in tasks and {"ingest-part", "ingest-merge"} <= set(tasks)
    comps = spec["components"]
    # per source (the outer loop): a loop of slices "0/4" .. "3/4", then the merge
    outer = next(c["dag"]["tasks"] for c in comps.values()
                 if "dag" in c and "ingest-merge" in c["dag"]["tasks"])
    inner = next(name for name, t in outer.items() if "parameterIterator" in t)
    assert json.loads(outer[inner]["parameterIterator"]["items"]["raw"]) == \
        ["0/4", "1/4", "2/4", "3/4"]
    assert list(comps[outer[inner]["componentRef"]["name"]]["dag"]["tasks"]) == ["ingest-part"]
    collected = outer["ingest-merge"]["inputs"]["artifacts"]["slices"]["taskOutputArtifact"]
    assert collected == {"outputArtifactKey": "pipelinechannel--ingest-part-table",
                         "producerTask": inner}
    # reports collects one table per source: the merged one
    reports = next(c["dag"]["tasks"]["reports"] for c in comps.values()
                   if "dag" in c and "reports" in c["dag"]["tasks"])
    assert reports["inputs"]["artifacts"]["tables"]["taskOutputArtifact"][
        "outputArtifactKey"] == "pipelinechannel--ingest-merge-table"
    k = settings()
    for name in ("ingest-part", "ingest-merge"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == k.retries
        assert tasks[name]["cachingOptions"].get("enableCache") is True
    # a slice's cache key follows the content too (the fingerprint, passed into the loop)
    assert tasks["ingest-part"]["inputs"]["parameters"]["source_version"] == {
        "componentInputParameter": "pipelinechannel--source-version-Output"}


def test_run_local_params_file_reaches_the_pipeline(tmp_path):
    """`ecgssl pipeline run-local --params FILE` read FILE for data_root and the task check
    only: the pipeline's `params` argument (every stage's settings) and its defaults
    (sources, tasks, eval_modes) still came from ./params.yaml, silently."""
    import inspect

    from ecgssl.pipeline.build import load_pipeline, pipeline_arguments
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["pretrain"]["max_steps"] = 2
    raw["pipeline"]["sources"] = ["mitdb"]
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump(raw))
    args = pipeline_arguments(None, None, f)
    assert json.loads(args["params"])["pretrain"]["max_steps"] == 2
    pipe = load_pipeline(load_params(f))
    assert pipe.component_spec.inputs["sources"].default == ["mitdb"]
    # --arg is checked against these names: they are the pipeline function's own
    from ecgssl.pipeline.build import PIPELINE_ARGS
    assert set(PIPELINE_ARGS) == set(inspect.signature(pipe.pipeline_func).parameters)


def test_ingest_cache_key_follows_the_source_content(repo_params, tmp_path):
    """KFP reuses a cached task when its inputs are equal. ingest's were only strings
    (source, data_root, params): new records under the same s3:// data_root would be served
    the old table from cache, and every cached stage after it. An uncached task lists the
    source and hands ingest its content fingerprint as an input."""
    spec, _ = _compile(tmp_path / "p.yaml")
    tasks = _leaf_tasks(spec)
    assert "source-version" in tasks, "no task fingerprints the source before ingest"
    version = tasks["source-version"]
    assert version["cachingOptions"].get("enableCache") is not True    # always lists again
    assert version["inputs"]["parameters"]["data_root"]["componentInputParameter"] == \
        "pipelinechannel--data_root"
    fed = tasks["ingest"]["inputs"]["parameters"]["source_version"]["taskOutputParameter"]
    assert fed == {"producerTask": "source-version", "outputParameterKey": "Output"}
    assert tasks["ingest"]["cachingOptions"].get("enableCache") is True


def test_s3_endpoint_reaches_the_tasks_that_read_an_s3_data_root(monkeypatch, tmp_path):
    """With MinIO (or any non-AWS S3) the tasks that read an s3:// data_root need its endpoint:
    with only credentials they called AWS and failed on the first listing. kfp.s3_env sets
    it on those tasks alone, and takes no credentials (they would be in the YAML in clear)."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["kfp"]["s3_env"] = {"AWS_ENDPOINT_URL_S3": "http://minio.minio:9000"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ECGSSL_PARAMS", str(tmp_path / "params.yaml"))
    spec, _ = _compile(tmp_path / "p.yaml")
    env = {name: {e["name"]: e["value"] for e in ex["container"].get("env", [])}
           for name, ex in spec["deploymentSpec"]["executors"].items()}
    # pretrain: it copies its checkpoints beside its artifact (a retried pod resumes)
    for name in ("exec-ingest", "exec-source-version", "exec-pretrain"):
        assert env[name].get("AWS_ENDPOINT_URL_S3") == "http://minio.minio:9000", name
    assert not env["exec-reports"]
    from ecgssl.config import ConfigError, params_from_dict
    p["kfp"]["s3_env"] = {"AWS_SECRET_ACCESS_KEY": "x"}
    with pytest.raises(ConfigError, match="credentials go in kfp.s3_secret"):
        params_from_dict(p)


def test_s3_secret_reaches_the_tasks_that_read_an_s3_data_root(monkeypatch, tmp_path):
    """data_root may be an s3:// prefix; kfp.s3_secret reached only the multi-node launcher,
    so with it set the ingest tasks had no credentials and failed on the first listing."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["kfp"]["s3_secret"] = "ecgssl-s3"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ECGSSL_PARAMS", str(tmp_path / "params.yaml"))
    _, k8s = _compile(tmp_path / "p.yaml")
    for name in ("exec-ingest", "exec-source-version", "exec-pretrain"):
        assert name in k8s and k8s[name].get("secretAsEnv"), f"{name} gets no S3 credentials"
        secret = k8s[name]["secretAsEnv"][0]
        assert secret["secretName"] == "ecgssl-s3"
        assert {e["envVar"] for e in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID",
                                                            "AWS_SECRET_ACCESS_KEY"}
    assert "secretAsEnv" not in k8s["exec-reports"]       # KFP artifacts only: no credentials



def test_each_task_takes_the_params_of_its_own_step(repo_params, tmp_path):
    """Every stage task's `params` is a step-params task's cut for its step
    (steps.STEP_SECTIONS), never the whole argument: a cached task's key then moves only with
    its own settings. A cut used inside a ParallelFor is made inside it (kfp.local hands a
    loop the item in place of a task output passed in from outside)."""
    spec, _ = _compile(tmp_path / "p.yaml")
    tasks = _leaf_tasks(spec)
    cuts = {n: t["inputs"]["parameters"]["step"]["runtimeValue"]["constant"]
            for n, t in tasks.items() if n.startswith("step-params")}
    assert sorted(cuts.values()) == sorted(STEP_SECTIONS)
    for n in cuts:
        assert tasks[n]["inputs"]["parameters"]["params"] == \
            {"componentInputParameter": "pipelinechannel--params"}
        assert tasks[n]["cachingOptions"].get("enableCache") is True     # a pure function
    step = {"source-version": "ingest", "ingest": "ingest", "reports": "reports",
            "embed-text": "embed_text", "pretrain": "pretrain", "evaluate": "evaluate",
            "finetune": "evaluate", "register": "register", "gate": "promote",
            "promote": "promote"}
    for name, s in step.items():
        given = tasks[name]["inputs"]["parameters"]["params"]
        producer = given.get("taskOutputParameter", {}).get("producerTask") or \
            given["componentInputParameter"].removeprefix("pipelinechannel--") \
            .removesuffix("-Output")
        assert cuts.get(producer) == s, (name, given)
