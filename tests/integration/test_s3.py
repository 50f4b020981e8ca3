"""Object storage end to end against a real S3-speaking server (moto_server on loopback):
every stage reading and writing s3://, MLflow artifacts on S3 through the server, a DVC remote,
and a server that goes away mid-run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
import yaml
from servers import S3_ENV, free_port, start_mlflow, start_moto, stop

from ecgssl.errors import EcgsslError
from ecgssl.storage import push

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.integration


def upload_tree(bucket: str, local: Path, prefix: str) -> None:
    s3 = boto3.client("s3")
    for p in local.rglob("*"):
        if p.is_file():
            s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local).as_posix()}")


def keys(bucket: str, prefix: str) -> set[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def ecgssl(*args, env: dict) -> str:
    p = subprocess.run([str(BIN / "ecgssl"), *args], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=600, cwd=ROOT)
    assert p.returncode == 0, f"ecgssl {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


@pytest.fixture()
def mlflow_on_s3(s3_env, tmp_path):
    """`mlflow server` whose artifact store is s3://BUCKET/mlflow, proxied: only the server
    talks to S3 (MLFLOW_S3_ENDPOINT_URL is set for it, not for clients)."""
    proc, uri = start_mlflow(tmp_path, f"s3://{s3_env['BUCKET']}/mlflow",
                             {"MLFLOW_S3_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL"]})
    try:
        yield uri
    finally:
        stop(proc)


def test_the_pipeline_with_every_input_and_output_on_s3(s3_env, mlflow_on_s3, tmp_path):
    b = s3_env["BUCKET"]
    upload_tree(b, ROOT / "data/sample/mitdb", "raw/mitdb")
    params = tmp_path / "params.yaml"      # the repo's params with a smaller model and CIs
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["pretrain"].update(width=16)
    p["evaluate"].update(bootstrap=10)
    params.write_text(yaml.safe_dump(p))
    env = {**s3_env, "MLFLOW_TRACKING_URI": mlflow_on_s3, "ECGSSL_PARAMS": str(params)}
    env.pop("MLFLOW_S3_ENDPOINT_URL", None)
    out = f"s3://{b}/outputs"
    log = ecgssl("ingest", "mitdb", "--input", f"s3://{b}/raw/mitdb", "--output",
                 f"{out}/tables/mitdb", "--no-progress", env=env)
    log += ecgssl("reports", "--input", f"{out}/tables/mitdb", "--output", f"{out}/reports",
                  "--mode", "generated", "--no-progress", env=env)
    log += ecgssl("embed-text", "--input", f"{out}/reports", "--output",
                  f"{out}/text_emb.parquet", "--cache", f"{out}/cache/text.parquet",
                  "--no-progress", env=env)
    log += ecgssl("pretrain", "--data", f"{out}/reports", "--text-emb", f"{out}/text_emb.parquet",
                  "--output", f"{out}/pretrain", "--max-steps", "2", "--batch-size", "8",
                  "--no-progress", env=env)
    log += ecgssl("evaluate", "--encoder", f"{out}/pretrain", "--data", f"{out}/tables/mitdb",
                  "--task", "mitdb-aami", "--mode", "zeroshot", "--output",
                  f"{out}/eval/mitdb-aami", "--no-progress", env=env)
    log += ecgssl("register", "--encoder", f"{out}/pretrain", "--metrics",
                  f"{out}/eval/mitdb-aami/metrics.json", "--name", "s3-encoder", "--record",
                  f"{out}/registry/encoder.json", env=env)

    got = keys(b, "outputs/")
    for k in ("tables/mitdb/_manifest.json",
              "reports/_manifest.json", "text_emb.parquet", "cache/text.parquet",
              "pretrain/encoder.safetensors", "pretrain/config.json", "pretrain/metrics.json",
              "eval/mitdb-aami/metrics.json", "eval/mitdb-aami/test_data.json",
              "registry/encoder.json"):
        assert f"outputs/{k}" in got, k
    manifest = json.loads(boto3.client("s3").get_object(
        Bucket=b, Key="outputs/tables/mitdb/_manifest.json")["Body"].read())
    assert manifest["records_ok"] == 5 and manifest["rows"] == 900
    assert all(f"outputs/tables/mitdb/{s}" in got for s in manifest["shards"])
    # The model and the run artifacts went through the MLflow server into the bucket.
    mlflow_keys = keys(b, "mlflow/")
    assert any(k.endswith("model_dir/encoder.safetensors") for k in mlflow_keys)
    assert any(k.endswith("MLmodel") for k in mlflow_keys)
    # A rerun with the same input is a no-op, read back from S3.
    again = ecgssl("ingest", "mitdb", "--input", f"s3://{b}/raw/mitdb", "--output",
                   f"{out}/tables/mitdb", "--no-progress", env=env)
    assert "up to date" in again
    # Credentials are nowhere in logs or in MLflow.
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=mlflow_on_s3)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = json.dumps([[r.data.params, r.data.tags] for r in runs])
    for secret in (s3_env["AWS_SECRET_ACCESS_KEY"], s3_env["AWS_ACCESS_KEY_ID"]):
        assert secret not in log + again and secret not in logged


def test_a_killed_pretrain_resumes_on_a_new_pod_from_the_checkpoint_it_pushed(s3_env, corpus,
                                                                              tmp_path):
    """A pod that dies mid-run takes its local staging copy with it: what a recreated pod
    (a TrainJob's, after a node failure) resumes from is the checkpoints pushed to S3 as they
    were written, not only at the end of the run."""
    b = s3_env["BUCKET"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"pretrain": {
        "method": "st", "width": 16, "batch_size": 16, "lr": 3e-3, "warmup_steps": 2,
        "checkpoint_every": 4, "max_steps": 40}}))
    cmd = [str(BIN / "ecgssl"), "pretrain", "--data", str(corpus["table"]), "--params",
           str(params), "--output", f"s3://{b}/run", "--no-mlflow", "--no-progress"]
    pod = {**os.environ, **s3_env, "ECGSSL_CACHE_DIR": str(tmp_path / "pod1")}
    proc = subprocess.Popen(cmd, env=pod, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while "run/checkpoints/step-0000004/state.pt" not in keys(b, "run/") and \
            proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    assert "run/encoder.safetensors" not in keys(b, "run/"), "the run ended before the kill"

    new_pod = {**pod, "ECGSSL_CACHE_DIR": str(tmp_path / "pod2")}        # nothing local
    p = subprocess.run(cmd + ["--resume"], env=new_pod, cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    metrics = json.loads(boto3.client("s3").get_object(
        Bucket=b, Key="run/metrics.json")["Body"].read())
    assert metrics["resumed_at"] >= 4 and metrics["steps"] == 40


def test_dvc_remote_push_and_pull(s3_env, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "data/sample/mitdb", repo / "data/mitdb")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(*cmd):
        p = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, f"{cmd}:\n{p.stdout}\n{p.stderr}"

    def digest() -> dict:
        return {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted((repo / "data/mitdb").rglob("*")) if p.is_file()}

    dvc = str(BIN / "dvc")
    run("git", "init", "-q")
    run(dvc, "init", "-q")
    run(dvc, "remote", "add", "-d", "store", f"s3://{s3_env['BUCKET']}/dvc")
    # The endpoint goes to the local (untracked) config, credentials stay in the environment.
    run(dvc, "remote", "modify", "--local", "store", "endpointurl", s3_env["AWS_ENDPOINT_URL"])
    run(dvc, "add", "data/mitdb")
    before = digest()
    run(dvc, "push")
    assert len(keys(s3_env["BUCKET"], "dvc/")) >= len(before)
    shutil.rmtree(repo / "data/mitdb")
    shutil.rmtree(repo / ".dvc/cache")
    run(dvc, "pull")
    assert digest() == before
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in (repo / ".dvc/config").read_text()


@pytest.fixture()
def restartable_s3(tmp_path, monkeypatch):
    """A moto_server of our own, which a test may stop and start again on the same port."""
    port = free_port()
    log = open(tmp_path / "moto.log", "a")
    state = {"proc": start_moto(port, log)}
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3").create_bucket(Bucket="faults")

    def restart(after_s: float) -> threading.Thread:
        def go():
            time.sleep(after_s)
            state["proc"] = start_moto(port, log)
            boto3.client("s3").create_bucket(Bucket="faults")   # moto keeps state in memory
        t = threading.Thread(target=go)
        t.start()
        return t

    yield state, restart
    stop(state["proc"])


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "table"
    for i in range(5):
        (src / f"part-{i:05d}.parquet").parent.mkdir(parents=True, exist_ok=True)
        (src / f"part-{i:05d}.parquet").write_bytes(os.urandom(50_000))
    (src / "_manifest.json").write_text("{}")
    return src


def test_s3_restart_mid_run_is_retried_with_backoff(restartable_s3, tmp_path):
    state, restart = restartable_s3
    src = _folder(tmp_path)
    stop(state["proc"])                       # the server goes away ...
    t0 = time.time()
    thread = restart(after_s=1.5)             # ... and comes back while we are retrying
    assert push(src, "s3://faults/t") == 6
    thread.join()
    assert time.time() - t0 >= 1.5
    assert keys("faults", "t/") == {f"t/part-{i:05d}.parquet" for i in range(5)} | {
        "t/_manifest.json"}


def test_s3_that_stays_down_is_a_clear_error(restartable_s3, tmp_path):
    state, _ = restartable_s3
    src = _folder(tmp_path)
    stop(state["proc"])
    t0 = time.time()
    with pytest.raises(EcgsslError, match=r"S3 listing of s3://faults/t failed after 5 "
                       r"attempt\(s\).*(connect|Connect)"):
        push(src, "s3://faults/t")
    assert time.time() - t0 < 30
