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
import numpy as np
import pytest
import yaml
from corrupt import flip_a_bit_silently
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


def test_a_retried_kubeflow_pretrain_task_resumes_from_checkpoints_beside_its_artifact(
        s3_env, corpus, tmp_path):
    """Kubeflow uploads a task's Model artifact only when its pod ends, and retries a task
    with the same artifact URI: the killed first attempt's checkpoints, pushed beside the
    artifact as they were written, are what the retry (a new pod, nothing local) resumes
    from. Once done, that copy is gone and the artifact holds no sync bookkeeping."""
    b = s3_env["BUCKET"]
    model_uri = f"minio://{b}/v2/artifacts/ecgssl/run-1/pretrain/model"   # KFP's MinIO form
    params = json.dumps({"pretrain": {
        "method": "st", "width": 16, "batch_size": 16, "lr": 3e-3, "warmup_steps": 2,
        "checkpoint_every": 4, "max_steps": 40}, "tracking": {"enabled": False}})
    attempt = ("import sys; from ecgssl.pipeline import steps; "
               "steps.pretrain(*sys.argv[1:])")
    args = [str(corpus["table"]), str(corpus["text_emb"]), str(tmp_path / "pod1/model"),
            params, "", model_uri]
    first = subprocess.Popen([sys.executable, "-c", attempt, *args], cwd=ROOT,
                             env={**os.environ, **s3_env}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    copy = "v2/artifacts/ecgssl/run-1/pretrain/model-checkpoints/"
    deadline = time.time() + 300
    while f"{copy}step-0000004/state.pt" not in keys(b, copy) and first.poll() is None and \
            time.time() < deadline:
        time.sleep(0.1)
    first.kill()                                  # the pod is preempted
    first.wait()
    assert not (tmp_path / "pod1/model/encoder.safetensors").exists(), "ended before the kill"

    from ecgssl.pipeline import steps
    retry = tmp_path / "pod2/model"               # a new pod: an empty artifact folder
    r = steps.pretrain(str(corpus["table"]), str(corpus["text_emb"]), str(retry), params, "",
                       model_uri)
    assert r.resumed_at >= 4 and r.steps == 40
    assert (retry / "encoder.safetensors").is_file()
    assert keys(b, copy) == set()                 # the artifact now holds the checkpoints
    assert sorted(p.name for p in (retry / "checkpoints").iterdir()) == [
        "step-0000036", "step-0000040"]


def test_ingest_slices_of_an_s3_source_fetch_only_their_own_records(s3_env, tmp_path):
    """`ingest --part K/N` from S3 (a KFP ParallelFor task each): a slice downloads the
    headers and label files, and the samples of its own records only; the slices together
    make the very table one whole ingest of the source makes (same key, same rows)."""
    b = s3_env["BUCKET"]
    upload_tree(b, ROOT / "data/sample/cinc2017", "raw/cinc2017")
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  shard_records: 50\n  workers: 1\n")   # 5 parts of 210
    src = f"s3://{b}/raw/cinc2017"
    env = {**s3_env, "ECGSSL_CACHE_DIR": str(tmp_path / "pod0")}
    ecgssl("ingest", "cinc2017", "--input", src, "--output", str(tmp_path / "sliced"),
           "--part", "0/2", "--params", str(params), "--no-progress", env=env)
    mirror = tmp_path / "pod0/s3-in" / b / "raw/cinc2017"
    assert len(list(mirror.glob("*.hea"))) == 210
    assert len(list(mirror.glob("*.mat"))) == 50 + 50 + 10      # parts 0, 2 and 4
    assert not (tmp_path / "sliced/_manifest.json").exists()
    ecgssl("ingest", "cinc2017", "--input", src, "--output", str(tmp_path / "sliced"),
           "--part", "1/2", "--params", str(params), "--no-progress",
           env={**s3_env, "ECGSSL_CACHE_DIR": str(tmp_path / "pod1")})
    assert len(list((tmp_path / "pod1/s3-in" / b / "raw/cinc2017").glob("*.mat"))) == 100

    ecgssl("ingest", "cinc2017", "--input", src, "--output", str(tmp_path / "whole"),
           "--params", str(params), "--no-progress",
           env={**s3_env, "ECGSSL_CACHE_DIR": str(tmp_path / "pod2")})
    sliced = json.loads((tmp_path / "sliced/_manifest.json").read_text())
    whole = json.loads((tmp_path / "whole/_manifest.json").read_text())
    assert sliced["options_key"] == whole["options_key"]
    assert sliced["shard_info"] == whole["shard_info"] and sliced["rows"] == whole["rows"]


def test_a_slice_fetches_the_signal_files_its_headers_name(s3_env, tmp_path):
    """A header may name a signal file other than `<record>.dat` (here `signals.dat`): a
    slice fetched only `<record>.*`, so such a record was read locally but quarantined from
    S3 (`signal file missing`)."""
    from ecgssl.data.sources.base import read_wfdb
    from ecgssl.storage import Paths
    b, src = s3_env["BUCKET"], ROOT / "data/sample/ptbxl/records100/00000/00001_lr"
    local = tmp_path / "in"
    (local / "site").mkdir(parents=True)
    shutil.copyfile(f"{src}.dat", local / "site/signals.dat")
    (local / "site/rec.hea").write_text(src.with_suffix(".hea").read_text()
                                        .replace("00001_lr.dat", "signals.dat")
                                        .replace("00001_lr", "rec"))
    upload_tree(b, local, "raw/mine")
    root, _, fetch = Paths().input_records(f"s3://{b}/raw/mine")
    fetch(["site/rec"])
    np.testing.assert_array_equal(read_wfdb(root, "site/rec")[0],
                                  read_wfdb(local, "site/rec")[0])


def test_a_labels_csv_on_s3_labels_an_s3_wfdb_folder(s3_env, tmp_path):
    b = s3_env["BUCKET"]
    for r in ("A00001", "A00002"):
        for f in (ROOT / "data/sample/cinc2017").glob(f"{r}.*"):
            boto3.client("s3").upload_file(str(f), b, f"mine/site1/{f.name}")
    boto3.client("s3").put_object(Bucket=b, Key="meta/labels.csv",
                                  Body=b"record,labels,split\nsite1/A00001,N,test\n"
                                       b"site1/A00002,A;O,train\n")
    ecgssl("ingest", "wfdb", "--input", f"s3://{b}/mine", "--metadata",
           f"s3://{b}/meta/labels.csv", "--output", str(tmp_path / "t"), "--no-progress",
           env={**s3_env, "ECGSSL_CACHE_DIR": str(tmp_path / "cache")})
    m = json.loads((tmp_path / "t/_manifest.json").read_text())
    assert m["records_ok"] == 2 and m["records_without_labels"] == 0
    assert m["rows_per_split"].keys() == {"test", "train"}
    assert m["label_counts"].keys() == {"N", "A", "O"}


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


def test_pretraining_streams_an_s3_table_without_a_local_copy(s3_env, corpus, tmp_path):
    """`pretrain --data s3://…` reads row groups by byte ranges in its loader workers (spawned,
    each with its own S3 client): the same losses and weights as the local folder, and no shard
    of the table in the local cache."""
    b = s3_env["BUCKET"]
    upload_tree(b, corpus["table"], "tables/corpus")
    boto3.client("s3").upload_file(str(corpus["text_emb"]), b, "emb/text_emb.parquet")
    params = tmp_path / "params.yaml"
    params.write_text("pretrain:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in {
        "width": 16, "batch_size": 16, "lr": 3e-3, "warmup_steps": 2, "method": "mets+st",
        "max_steps": 4, "checkpoint_every": 2, "loader_workers": 2, "shuffle_rows": 64}.items()))
    env = {**s3_env, "ECGSSL_PARAMS": str(params)}
    emb = f"s3://{b}/emb/text_emb.parquet"
    ecgssl("pretrain", "--data", f"s3://{b}/tables/corpus", "--text-emb", emb, "--output",
           str(tmp_path / "s3"), "--no-mlflow", "--no-progress", env=env)
    ecgssl("pretrain", "--data", str(corpus["table"]), "--text-emb", str(corpus["text_emb"]),
           "--output", str(tmp_path / "local"), "--no-mlflow", "--no-progress", env=env)

    import torch
    from safetensors.torch import load_file
    got, want = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("s3", "local"))
    assert got["steps"] == want["steps"] == 4
    for k in ("loss/first", "loss/final"):
        assert abs(got[k] - want[k]) < 1e-6, (k, got[k], want[k])
    a, w = (load_file(tmp_path / r / "encoder.safetensors") for r in ("s3", "local"))
    assert all(bool((a[k] == w[k]).all()) for k in w)
    # The data position is the step, whichever the source: the local run's step-2 checkpoint
    # resumed on the s3:// table ends where the local run ended.
    shutil.copytree(tmp_path / "local/checkpoints/step-0000002",
                    tmp_path / "resumed/checkpoints/step-0000002")
    ecgssl("pretrain", "--data", f"s3://{b}/tables/corpus", "--text-emb", emb, "--output",
           str(tmp_path / "resumed"), "--resume", "--no-mlflow", "--no-progress", env=env)
    assert json.loads((tmp_path / "resumed/metrics.json").read_text())["resumed_at"] == 2
    r = load_file(tmp_path / "resumed/encoder.safetensors")
    for k in w:
        torch.testing.assert_close(r[k], w[k], rtol=1e-5, atol=1e-6)
    # Only the small embeddings file was pulled; the table was never mirrored.
    cached = [p for p in Path(s3_env["ECGSSL_CACHE_DIR"]).rglob("*") if p.is_file()]
    assert not [p for p in cached if p.name.startswith("part-") or p.name == "_manifest.json"]
    assert any(p.name == "text_emb.parquet" for p in cached)


def test_a_rank_reads_only_the_row_groups_of_its_steps_from_s3(s3_env, corpus):
    """4 steps of a 64-row shuffle window touch a fraction of an s3:// table's row groups, and
    give the rows the local folder gives."""
    import numpy as np

    from ecgssl.train.data import Plan, PretrainData, RowReader
    b = s3_env["BUCKET"]
    upload_tree(b, corpus["table"], "tables/corpus")
    remote = PretrainData.load(f"s3://{b}/tables/corpus", corpus["text_emb"], need_text=True)
    local = PretrainData.load(corpus["table"], corpus["text_emb"], need_text=True)
    assert len(remote) == len(local) and remote.groups == local.groups
    plan = Plan(16, seed=0, shuffle_rows=64, rank=1, world_size=2)
    reader = RowReader(remote)
    rows = np.concatenate([remote.local_rows(s, plan) for s in range(4)])
    reader.plan(rows)
    for s in range(4):
        got, want = remote.batch(s, plan, reader), local.batch(s, plan)
        assert all(bool((got[k] == want[k]).all()) for k in want)
    assert 0 < reader.groups_read < len(remote.groups) / 2
    # `loader: memory` on s3://: the spawned workers fill their own readers (no pickled copy
    # of the table each), with the batches the local folder gives
    import pickle

    from ecgssl.train.data import StepBatches, loader
    whole = Plan(16, seed=0, shuffle_rows=64)
    sent = {spawned: len(pickle.dumps(StepBatches(remote, whole, 0, 3, 2, True, spawned)))
            for spawned in (False, True)}
    assert sent[True] * 10 < sent[False]           # what each spawned worker is sent
    got = list(loader(remote, whole, 0, 3, workers=2, memory=True))
    want = list(loader(local, whole, 0, 3, workers=0))
    assert [s for s, _ in got] == [s for s, _ in want] == [0, 1, 2]
    for (_, a), (_, w) in zip(got, want):
        assert all(bool((a[k] == w[k]).all()) for k in w)


def test_two_nodes_train_from_an_s3_table_as_one_process_does_locally(s3_env, corpus,
                                                                         tmp_path):
    """Multi-node DDP as a Kubeflow TrainJob runs it, straight from object storage: two
    torchrun "nodes" (c10d) each read their rank's rows of the s3:// table, and their step
    equals one process's step on the local folder (losses and gradients)."""
    import torch
    from ddp_check import assert_same_step_as_one_process, torchrun_node, wait_all
    b = s3_env["BUCKET"]
    upload_tree(b, corpus["table"], "tables/corpus")
    out = tmp_path / "ddp.pt"
    args = [f"s3://{b}/tables/corpus", str(corpus["text_emb"]), str(out), "mets+st"]
    port = free_port()
    logs = [tmp_path / f"node{i}.log" for i in (0, 1)]
    wait_all([torchrun_node(i, port, args, log) for i, log in zip((0, 1), logs)], logs)
    ddp = torch.load(out, weights_only=True)
    assert sorted(r["GROUP_RANK"] for r in ddp["layout"]) == [0, 1]
    assert_same_step_as_one_process(ddp, corpus["table"], corpus["text_emb"], "mets+st")


def test_a_flipped_bit_in_an_s3_shard_is_an_error_naming_it(s3_env, tables, tmp_path):
    """Streaming from S3 keeps the table's page checksums: a silently flipped bit in a shard
    (plain Parquet reading returns other values) is a clear error naming the object."""
    from ecgssl.data.table import read_manifest, read_row_group, row_groups
    t = tmp_path / "t"
    shutil.copytree(tables["cinc2017"], t)
    shard = t / read_manifest(t)["shards"][0]
    flip_a_bit_silently(shard)
    b = s3_env["BUCKET"]
    upload_tree(b, t, "t")
    uri = f"s3://{b}/t"
    group = row_groups(uri)[0]
    assert group.shard == shard.name and group.index == 0
    read_row_group(uri, group, ["split"])                # other columns still read
    t0 = time.time()
    with pytest.raises(EcgsslError, match=f"{shard.name}: unreadable Parquet shard"):
        read_row_group(uri, group, ["signal", "lead_mask"])
    assert time.time() - t0 < 5                          # not retried


def test_an_s3_shard_whose_rows_differ_from_the_manifest_is_refused(s3_env, tables):
    from ecgssl.data.table import read_manifest, row_groups
    b = s3_env["BUCKET"]
    upload_tree(b, tables["cinc2017"], "t")
    m = read_manifest(tables["cinc2017"])
    assert sum(g.rows for g in row_groups(f"s3://{b}/t")) == m["rows"]
    first = m["shards"][0]
    m["shard_info"][first]["rows"] += 1
    boto3.client("s3").put_object(Bucket=b, Key="t/_manifest.json", Body=json.dumps(m))
    with pytest.raises(EcgsslError, match=f"t/{first}: .* rows where the manifest says"):
        row_groups(f"s3://{b}/t")


def test_evaluation_streams_s3_tables_without_a_local_copy(s3_env, corpus, tables, tmp_path):
    """`evaluate --data s3://… --test-data s3://…` and `predict --data s3://…` read the tables'
    row groups by byte ranges (PTB-XL's label map and prompts from its side file): the same
    metrics and scores as the local folders, and no shard of any table in the local cache."""
    import pyarrow.parquet as pq

    from ecgssl.config import PretrainConfig
    from ecgssl.data.table import read_manifest
    from ecgssl.evaluate.tasks import load_task
    from ecgssl.evaluate.zeroshot import load_prompts
    from ecgssl.train.loop import pretrain
    b = s3_env["BUCKET"]
    for name in ("cinc2017", "ptbxl"):
        upload_tree(b, tables[name], f"tables/{name}")
    enc = tmp_path / "encoder"
    pretrain(corpus["table"], corpus["text_emb"], enc, PretrainConfig(
        method="mets+st", width=16, batch_size=16, max_steps=2, warmup_steps=1,
        loader_workers=0), progress=False)
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  bootstrap: 10\n  cache: null\n")
    env = {**s3_env, "ECGSSL_PARAMS": str(params)}

    def evaluate(table: str, out: str) -> dict[str, str]:
        ecgssl("evaluate", "--encoder", str(enc), "--data", table, "--test-data", table,
               "--task", "cinc2017-af", "--mode", "zeroshot", "--output", str(tmp_path / out),
               "--no-mlflow", "--no-progress", env=env)
        return {f: (tmp_path / out / f).read_text() for f in ("metrics.json", "test_data.json")}
    got = evaluate(f"s3://{b}/tables/cinc2017", "s3")
    want = evaluate(str(tables["cinc2017"]), "local")
    assert got == want
    m = json.loads(got["metrics.json"])
    assert "zeroshot/cinc2017-af/macro_auroc" in m and m["data/cinc2017-af/test_rows"] > 0
    # PTB-XL tasks read scp_statements.csv beside the table: fetched with the small files
    ptbxl = f"s3://{b}/tables/ptbxl"
    assert load_prompts("ptbxl-super", ptbxl) == load_prompts("ptbxl-super", tables["ptbxl"])
    with pytest.raises(EcgsslError, match="no test rows"):     # label map read; sample has none
        load_task("ptbxl-super", ptbxl)
    # batch scoring streams the same way: the very scores of the local table

    def predict(table: str, out: str):
        ecgssl("predict", "--model", str(enc), "--data", table, "--label", "atrial fibrillation",
               "--label", "sinus rhythm", "--output", str(tmp_path / out), "--no-progress",
               env=env)
        return pq.read_table(tmp_path / out).replace_schema_metadata(None)
    scored = predict(f"s3://{b}/tables/cinc2017", "s3.parquet")
    assert scored.num_rows == read_manifest(tables["cinc2017"])["rows"]
    assert scored.equals(predict(str(tables["cinc2017"]), "local.parquet"))
    cached = [p for p in Path(s3_env["ECGSSL_CACHE_DIR"]).rglob("*") if p.is_file()]
    assert any(p.name == "scp_statements.csv" for p in cached)
    assert not [p for p in cached if p.suffix == ".parquet"], cached
