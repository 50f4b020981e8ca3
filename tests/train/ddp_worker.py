"""Run by test_pretrain.py under `torchrun --nproc-per-node 2` and by tests/test_distributed.py
as two torchrun "nodes": one DDP step on gloo, saving the rank-averaged losses, the
(DDP-averaged) gradients and where each rank ran, for comparison with one process."""

import os
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from ecgssl.config import PretrainConfig
from ecgssl.distributed import init_from_env, mean_over_ranks
from ecgssl.train.data import Plan, PretrainData
from ecgssl.train.loop import build, step_losses


def main(table: str, text_emb: str, out: str, method: str) -> None:
    device = torch.device("cpu")
    dist = init_from_env(device)
    cfg = PretrainConfig(method=method, width=16, batch_size=16)
    ds = PretrainData.load(table, text_emb, need_text="mets" in method)
    model, _ = build(cfg, ds.n_samples, ds.text.shape[1], device)
    net = DistributedDataParallel(model)
    batch = ds.batch(3, Plan(cfg.batch_size, cfg.seed, cfg.shuffle_rows, dist.rank,
                             dist.world_size))      # this rank's slice only
    losses = step_losses(net, model, batch, cfg, 3, ds.fs, dist)
    losses["loss"].backward()
    values = mean_over_ranks({k: v.detach() for k, v in losses.items()}, dist)
    # Where each rank ran (torchrun's variables), so a test can tell 2 nodes from 2 processes.
    layout = [None] * dist.world_size
    torch.distributed.all_gather_object(layout, {k: int(os.environ[k]) for k in (
        "RANK", "LOCAL_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE")})
    if dist.rank == 0:
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"losses": values, "grads": grads, "layout": layout}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
