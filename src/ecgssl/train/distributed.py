"""The few distributed helpers the training loop needs (torchrun + DDP; gloo on CPU)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes in the environment; False when not launched
    by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank, rank order, keeping the autograd graph so that
    gradients reach the rank that produced each row."""
    if not is_distributed():
        return t
    if not t.is_floating_point():
        parts = [torch.empty_like(t) for _ in range(world_size())]
        dist.all_gather(parts, t)
        return torch.cat(parts)
    import torch.distributed.nn.functional as dist_fn
    return torch.cat(dist_fn.all_gather(t))


def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """A mean over the global batch from per-rank sums and counts. Scaled by the world size
    because DDP averages gradients over ranks: the average of the ranks' values (and their
    gradients) then equals the single-process mean."""
    if not is_distributed():
        return total / count.clamp(min=1)
    count = count.detach().clone()
    dist.all_reduce(count)
    return total * world_size() / count.clamp(min=1)
