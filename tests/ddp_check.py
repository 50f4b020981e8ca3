"""Shared by the DDP tests (two processes, two nodes, a TrainJob's nodes): wait for a group of
launched ranks, and check a DDP step against the same step in one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ecgssl.config import PretrainConfig
from ecgssl.train.data import Plan, PretrainData
from ecgssl.train.loop import build, step_losses

WORKER = Path(__file__).parent / "train" / "ddp_worker.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"


def torchrun_node(node_rank: int, port: int, args: list[str], log: Path) -> subprocess.Popen:
    """One "node" of two on 127.0.0.1 running tests/train/ddp_worker.py: its own torchrun
    agent, meeting the other at the c10d endpoint."""
    return subprocess.Popen(
        [str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
         "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"ecgssl-test-{port}",
         "--node-rank", str(node_rank), "--max-restarts", "0", str(WORKER), *args],
        stdout=open(log, "w"), stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> str:
    """Wait for every process (killing the rest if one hangs); all must exit 0. Returns the
    tails of their logs."""
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = "\n".join(Path(log).read_text()[-3000:] for log in logs)
    assert codes == [0] * len(procs), text
    return text


def assert_same_step_as_one_process(ddp: dict, table, text_emb, method: str) -> None:
    """`ddp` (what tests/train/ddp_worker.py saved: rank-averaged losses and DDP gradients of
    step 3) equals step 3 of the whole batch in this process."""
    cfg = PretrainConfig(method=method, width=16, batch_size=16)
    ds = PretrainData.load(table, text_emb, need_text=True)
    model, _ = build(cfg, ds.n_samples, ds.text.shape[1], torch.device("cpu"))
    batch = ds.batch(3, Plan(cfg.batch_size, cfg.seed, cfg.shuffle_rows))   # the whole batch
    losses = step_losses(model, model, batch, cfg, 3, ds.fs)
    losses["loss"].backward()
    for k in ("loss", "mets", "recon", "lead"):
        assert ddp["losses"][k] == pytest.approx(losses[k].item(), rel=1e-5, abs=1e-6), k
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp["grads"][name], p.grad, rtol=1e-4, atol=1e-6)
