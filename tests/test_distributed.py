"""Multi-node DDP: two torchrun "nodes" on 127.0.0.1 (c10d rendezvous, one gloo process each)
take the same step as one process, to the float (losses and gradients)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from ddp_check import assert_same_step_as_one_process, torchrun_node, wait_all

from ecgssl.distributed import init_from_env, local_rank
from ecgssl.errors import EcgsslError
from ecgssl.storage import Paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_with_c10d_rendezvous_equal_one_process(corpus, tmp_path):
    method = "mets+st"
    out = tmp_path / "ddp.pt"
    args = [str(corpus["table"]), str(corpus["text_emb"]), str(out), method]
    port = free_port()
    nodes = [torchrun_node(i, port, args, tmp_path / f"node{i}.log") for i in (0, 1)]
    wait_all(nodes, [tmp_path / f"node{i}.log" for i in (0, 1)])
    ddp = torch.load(out, weights_only=True)
    # Two nodes, not two processes on one: each rank is local rank 0 of its own node.
    layout = sorted(ddp["layout"], key=lambda r: r["RANK"])
    assert [r["RANK"] for r in layout] == [0, 1]
    assert sorted(r["GROUP_RANK"] for r in layout) == [0, 1]
    assert all(r["LOCAL_RANK"] == 0 and r["LOCAL_WORLD_SIZE"] == 1 and r["WORLD_SIZE"] == 2
               for r in layout), layout

    assert_same_step_as_one_process(ddp, corpus["table"], corpus["text_emb"], method)


def test_local_rank_picks_the_device_not_the_global_rank(monkeypatch):
    # Rank 9 of a job is local rank 1 of node 1: it drives that node's GPU 1.
    monkeypatch.setenv("RANK", "9")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_rank() == 1
    monkeypatch.delenv("LOCAL_RANK")
    assert local_rank() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_more_ranks_per_node_than_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(torch.cuda.device_count() + 1))
    with pytest.raises(EcgsslError, match="at most the GPUs per node"):
        init_from_env(torch.device("cuda", 0))


def test_only_global_rank_0_uploads_an_s3_output(tmp_path, monkeypatch):
    """Every rank stages an s3:// --output; only rank 0's copy is the run (another rank's is
    stale, and pushing it would delete what rank 0 uploaded)."""
    # Nothing listens on the endpoint: an upload attempt fails at once, so no attempt = no error.
    for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                 "ECGSSL_S3_RETRIES": "1", "AWS_ACCESS_KEY_ID": "test",
                 "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    local = tmp_path / "run"
    local.mkdir()
    (local / "metrics.json").write_text("{}")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        paths = Paths()
        paths.outputs.append((local, "s3://bucket/run"))
        if rank == "0":
            with pytest.raises(EcgsslError, match="S3 listing of s3://bucket/run failed"):
                paths.commit()
        else:
            paths.commit()


_AGREE = """
import os, sys, torch
from ecgssl.distributed import init_from_env, same_on_every_rank
from ecgssl.errors import EcgsslError
state = init_from_env(torch.device("cpu"))
same_on_every_rank(4, "the same value", state)               # agreed: nothing happens
try:
    same_on_every_rank(int(os.environ["RANK"]) * 2, "the step to resume from", state)
except EcgsslError as exc:
    print("refused:", exc)
torch.distributed.destroy_process_group()   # as pretrain does: no abort at shutdown
"""


def test_ranks_that_would_resume_from_different_steps_are_refused(tmp_path):
    # As two nodes with node-local --output folders would: rank 0 found a checkpoint at step
    # 2, rank 1 none. Both refuse, naming what each saw, over a real gloo group.
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-c", _AGREE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        for r in (0, 1)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert "refused: the ranks disagree on the step to resume from (rank 0: 0, " \
               "rank 1: 2)" in out and "s3://" in out, out
