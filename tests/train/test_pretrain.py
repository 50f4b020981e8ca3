"""Pretraining on the bundled sample: each method learns, is reproducible, resumes exactly, and
DDP on 2 gloo processes equals one process on the same global batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_check import assert_same_step_as_one_process
from safetensors.torch import load_file

from ecgssl.config import PretrainConfig
from ecgssl.data.table import arrays, pack, signal_array
from ecgssl.errors import EcgsslError
from ecgssl.tracking import RunContext
from ecgssl.train.loop import pretrain

HERE = Path(__file__).parent
SMALL = dict(width=16, batch_size=16, lr=3e-3, warmup_steps=2, checkpoint_every=4)

# Seeded CPU runs of 20 steps (SMALL config); a change here means training changed.
EXPECTED = {"mets": (2.8905, 2.737), "st": (1.2622, 0.3524), "mets+st": (4.1368, 3.1293)}


@pytest.mark.parametrize("method", ["mets", "st", "mets+st"])
def test_seeded_run_learns_and_is_reproducible(corpus, tmp_path, method):
    cfg = PretrainConfig(method=method, max_steps=20, **SMALL)
    m = pretrain(corpus["table"], corpus["text_emb"], tmp_path / "run", cfg, progress=False)
    assert m.loss_final < m.loss_first
    first, final = EXPECTED[method]
    assert m.loss_first == pytest.approx(first, rel=2e-3)
    assert m.loss_final == pytest.approx(final, rel=2e-3)
    assert m.samples_per_s > 0
    saved = json.loads((tmp_path / "run/metrics.json").read_text())
    assert saved["loss/final"] == pytest.approx(m.loss_final)
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["method"] == method and config["n_samples"] == 1000
    weights = load_file(tmp_path / "run/encoder.safetensors")
    assert "stem.0.weight" in weights


def test_killed_run_resumes_to_the_same_weights(corpus, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("pretrain:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in {
        **SMALL, "method": "mets+st", "max_steps": 12}.items()))
    cmd = [sys.executable, "-m", "ecgssl.cli", "pretrain", "--data", str(corpus["table"]),
           "--text-emb", str(corpus["text_emb"]), "--params", str(params), "--no-progress"]
    subprocess.run(cmd + ["--output", str(tmp_path / "full")], check=True, capture_output=True)
    proc = subprocess.Popen(cmd + ["--output", str(tmp_path / "cut")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "cut/checkpoints/step-0000004").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut/encoder.safetensors").exists()
    p = subprocess.run(cmd + ["--output", str(tmp_path / "cut"), "--resume"], check=True,
                       capture_output=True, text=True)
    metrics = json.loads((tmp_path / "cut/metrics.json").read_text())
    assert metrics["resumed_at"] in (4, 8), p.stderr
    a = load_file(tmp_path / "full/encoder.safetensors")
    b = load_file(tmp_path / "cut/encoder.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    full = json.loads((tmp_path / "full/metrics.json").read_text())
    assert metrics["loss/final"] == pytest.approx(full["loss/final"], rel=1e-5)


def test_resume_refuses_a_checkpoint_of_another_encoder(corpus, tmp_path):
    pretrain(corpus["table"], corpus["text_emb"], tmp_path, PretrainConfig(
        method="st", max_steps=2, **SMALL), progress=False)
    with pytest.raises(EcgsslError, match="does not fit this model"):
        pretrain(corpus["table"], corpus["text_emb"], tmp_path, PretrainConfig(
            method="st", max_steps=4, **{**SMALL, "width": 32}), resume=True, progress=False)


def test_resume_refuses_a_checkpoint_of_another_table_with_as_many_rows(corpus, tmp_path):
    """A table made again another way (reports regenerated) has the same train rows: resuming
    into its checkpoints would continue on other data as if nothing changed."""
    import shutil
    other = tmp_path / "other-table"
    shutil.copytree(corpus["table"], other)
    m = json.loads((other / "_manifest.json").read_text())
    (other / "_manifest.json").write_text(json.dumps({**m, "options_key": "0" * 64}))
    pretrain(corpus["table"], None, tmp_path / "run", PretrainConfig(
        method="st", max_steps=4, **SMALL), progress=False)
    with pytest.raises(EcgsslError, match="read the data as"):
        pretrain(other, None, tmp_path / "run", PretrainConfig(
            method="st", max_steps=8, **SMALL), resume=True, progress=False)


def test_non_finite_loss_stops_with_a_clear_message(corpus, tmp_path, table_copy):
    def huge(t):   # 3e38 mV: finite in float32, but the first convolution overflows
        signal, mask = arrays([t], 1000)
        return signal_array(pack(signal * np.float32(3e38), mask), mask, 1000)
    with np.errstate(over="ignore"):
        bad = table_copy(corpus["table"], "signal", huge)
    with pytest.raises(EcgsslError, match="non-finite loss .* at step 0"):
        pretrain(bad, corpus["text_emb"], tmp_path / "run", PretrainConfig(
            method="st", max_steps=3, **SMALL), progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method", ["mets+st"])
def test_ddp_on_two_gloo_processes_equals_one_process(corpus, tmp_path, method):
    out = tmp_path / "ddp.pt"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                    "--master-port", str(_free_port()), str(HERE / "ddp_worker.py"),
                    str(corpus["table"]), str(corpus["text_emb"]), str(out), method],
                   check=True, capture_output=True, env=env, timeout=300)
    ddp = torch.load(out, weights_only=True)
    assert_same_step_as_one_process(ddp, corpus["table"], corpus["text_emb"], method)


def test_pretraining_is_tracked_in_mlflow(corpus, tmp_path, monkeypatch):
    import mlflow
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = PretrainConfig(method="mets", max_steps=3, log_every=1, **SMALL)
    pretrain(corpus["table"], corpus["text_emb"], tmp_path / "run", cfg, progress=False,
             ctx=RunContext(enabled=True, tracking_uri=uri, experiment="test-pretrain"))
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("test-pretrain")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["method"] == "mets" and run.data.params["width"] == "16"
    assert run.data.tags["stage"] == "pretrain" and "git.commit" in run.data.tags
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [0, 1, 2]
    for key in ("lr", "temperature", "samples_per_s", "mets"):
        assert client.get_metric_history(run.info.run_id, key)
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "pretrain")}
    assert {"pretrain/encoder.safetensors", "pretrain/config.json"} <= arts
    # what evaluate and register find this run by (their lineage), and its training table
    from ecgssl.storage import encoder_hash
    assert run.data.tags["encoder.sha256"] == encoder_hash(tmp_path / "run")
    assert run.data.tags["data.fingerprint"] == config_fp(tmp_path / "run")   # as evaluate's
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.digest == config_fp(tmp_path / "run")[:36]
    assert "samples_per_s" not in json.dumps(json.loads((tmp_path / "run/metrics.json")
                                                        .read_text()))   # a DVC output


def config_fp(run):
    return str(json.loads((run / "config.json").read_text())["data_fingerprint"])


def test_unreachable_tracking_server_is_a_clear_error(corpus, tmp_path, monkeypatch):
    ctx = RunContext(enabled=True, tracking_uri=f"http://127.0.0.1:{_free_port()}")
    cfg = PretrainConfig(method="st", max_steps=1, **SMALL)
    t0 = time.time()
    with pytest.raises(EcgsslError, match="MLflow tracking server http://127.0.0.1:.* is not "
                                          "reachable"):
        pretrain(corpus["table"], corpus["text_emb"], tmp_path / "run", cfg, progress=False,
                 ctx=ctx)
    assert time.time() - t0 < 30


def test_a_fresh_run_does_not_resume_into_an_earlier_runs_checkpoints(corpus, tmp_path):
    """A run started afresh (no --resume) in a folder holding a longer earlier run's
    checkpoints: its own checkpoints must not be pruned as 'older' than the stale ones, nor a
    later --resume continue the earlier run's weights."""
    from ecgssl.train import checkpoint
    small = {**SMALL, "method": "st", "loader_workers": 0}
    pretrain(corpus["table"], None, tmp_path, PretrainConfig(max_steps=8, **small),
             progress=False)
    pretrain(corpus["table"], None, tmp_path, PretrainConfig(max_steps=4, **{**small,
             "lr": 1e-3}), progress=False)          # afresh: another lr, 4 steps
    assert checkpoint.latest(tmp_path) == tmp_path / "checkpoints/step-0000004"
    r = pretrain(corpus["table"], None, tmp_path, PretrainConfig(max_steps=8, **{
        **small, "lr": 1e-3}), resume=True, progress=False)
    assert r.resumed_at == 4


def test_resume_refuses_a_checkpoint_past_the_runs_last_step(corpus, tmp_path):
    """Resuming an 8-step checkpoint with max_steps 4 must not write the step-8 weights as a
    4-step run (metrics.json would say steps 4)."""
    small = {**SMALL, "method": "st", "loader_workers": 0}
    pretrain(corpus["table"], None, tmp_path, PretrainConfig(max_steps=8, **small),
             progress=False)
    with pytest.raises(EcgsslError, match="step 8, past this run's last step 4"):
        pretrain(corpus["table"], None, tmp_path, PretrainConfig(max_steps=4, **small),
                 resume=True, progress=False)


def test_resuming_a_finished_run_claims_no_throughput(corpus, tmp_path):
    """A resume with no step left runs nothing: it must not write NaN samples/s (invalid JSON,
    a NaN point in MLflow) over the throughput the training run measured."""
    small = {**SMALL, "method": "st", "loader_workers": 0}
    cfg = PretrainConfig(max_steps=4, **small)
    first = pretrain(corpus["table"], None, tmp_path, cfg, progress=False)
    run_file = json.loads((tmp_path / "_run.json").read_text())
    again = pretrain(corpus["table"], None, tmp_path, cfg, resume=True, progress=False)
    assert again.resumed_at == 4 and again.samples_per_s is None
    assert "throughput/samples_per_s" not in again.metrics()
    assert json.loads((tmp_path / "_run.json").read_text()) == run_file
    assert run_file["throughput/samples_per_s"] == pytest.approx(first.samples_per_s)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["loss/final"] == pytest.approx(first.loss_final) and saved["steps"] == 4


def test_a_second_pretrain_into_a_folder_being_written_refuses(corpus, tmp_path):
    """Two runs into one folder would interleave checkpoints (and prune each other's as
    'older'): the second refuses at once, naming the folder; the lock sits beside the folder,
    so the model folder that is registered or pushed holds results only."""
    from ecgssl.storage import exclusive_beside
    out = tmp_path / "run"
    with exclusive_beside(out, "pretrain"):           # as a first run holds it
        with pytest.raises(EcgsslError, match=r"another `ecgssl pretrain` is writing to .*run"):
            pretrain(corpus["table"], None, out, PretrainConfig(
                method="st", max_steps=2, **SMALL), progress=False)
    assert list(out.iterdir()) == []
    pretrain(corpus["table"], None, out, PretrainConfig(method="st", max_steps=2, **SMALL),
             progress=False)
    assert (out / "encoder.safetensors").is_file() and not list(out.glob("*.lock"))


def test_a_short_run_reports_its_first_and_last_steps_apart(tables, tmp_path):
    """`pretrain --max-steps 4` printed "loss 2.3561 -> 2.3561": first and final were both the
    mean of the first/last 10 steps, i.e. of the same 4. Under 20 steps they are the halves."""
    r = pretrain(tables["cinc2017"], None, tmp_path / "run",
                 PretrainConfig(method="st", max_steps=4, **SMALL), progress=False)
    assert r.loss_first != r.loss_final
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (m["loss/first"], m["loss/final"]) == (r.loss_first, r.loss_final)
