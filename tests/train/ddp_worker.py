"""Run by test_pretrain.py under `torchrun --nproc-per-node 2`: one DDP step on gloo, saving the
rank-averaged losses and the (DDP-averaged) gradients for comparison with one process."""

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from ecgssl.config import PretrainConfig
from ecgssl.train.data import PretrainData
from ecgssl.train.distributed import init_from_env, rank
from ecgssl.train.loop import _mean_over_ranks, build, step_losses


def main(table: str, text_emb: str, out: str, method: str) -> None:
    device = torch.device("cpu")
    init_from_env(device)
    cfg = PretrainConfig(method=method, width=16, batch_size=16, mlflow=False)
    ds = PretrainData.load(table, text_emb, need_text="mets" in method)
    model, _ = build(cfg, ds.signal.shape[-1], ds.text.shape[1], device)
    net = DistributedDataParallel(model)
    losses = step_losses(net, model, ds, cfg, 3, device)
    losses["loss"].backward()
    values = _mean_over_ranks({k: v.detach() for k, v in losses.items()})
    if rank() == 0:
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"losses": values, "grads": grads}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
