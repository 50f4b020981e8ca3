"""The few distributed helpers training and the losses need (torchrun + DDP; gloo on CPU).

One node or many: `torchrun` sets RANK / WORLD_SIZE (the whole job) and LOCAL_RANK /
LOCAL_WORLD_SIZE (this node). The GPU is chosen by LOCAL_RANK; everything that writes or logs
(checkpoints, the encoder, MLflow, progress bars, S3 uploads) asks for the global rank 0, so a
job of N nodes writes once, from node 0.

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 --rdzv-id JOB -m ecgssl.cli pretrain ...   # on every node

Losses take the distributed state explicitly (as open_clip's `ClipLoss(rank, world_size)`), so
`models/` never asks the process group itself and the same loss runs in one process or many.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ecgssl.errors import EcgsslError


@dataclass(frozen=True)
class DistState:
    """Where this process sits in the job: rank and world size (1 = no process group)."""
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DistState:
        return cls(dist.get_rank(), dist.get_world_size()) if is_distributed() else cls()

    @property
    def active(self) -> bool:
        return self.world_size > 1


SINGLE = DistState()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK; 0 without torchrun): the GPU
    it drives. Never the global RANK, which runs past the node's GPU count on node 1."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: torch.device) -> DistState:
    """Join the process group torchrun describes in the environment (single process when not
    launched by torchrun). On CUDA the process is bound to its device before NCCL starts, so
    that collectives never land on GPU 0 of every node."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        if device.type == "cuda":
            per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            if per_node > torch.cuda.device_count():
                raise EcgsslError(
                    f"torchrun starts {per_node} processes on this node "
                    f"({os.environ.get('HOSTNAME', 'this host')}) but it has "
                    f"{torch.cuda.device_count()} GPU(s): NCCL cannot share a GPU between "
                    "ranks; set --nproc-per-node to at most the GPUs per node")
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return DistState.current()


def gather_with_grad(t: torch.Tensor, state: DistState = SINGLE) -> torch.Tensor:
    """Concatenate a tensor from every rank, rank order, keeping the autograd graph so that
    gradients reach the rank that produced each row."""
    if not state.active:
        return t
    if not t.is_floating_point():
        parts = [torch.empty_like(t) for _ in range(state.world_size)]
        dist.all_gather(parts, t)
        return torch.cat(parts)
    import torch.distributed.nn.functional as dist_fn
    return torch.cat(dist_fn.all_gather(t))


def global_mean(total: torch.Tensor, count: torch.Tensor,
                state: DistState = SINGLE) -> torch.Tensor:
    """A mean over the global batch from per-rank sums and counts. Scaled by the world size
    because DDP averages gradients over ranks: the average of the ranks' values (and their
    gradients) then equals the single-process mean."""
    if not state.active:
        return total / count.clamp(min=1)
    count = count.detach().clone()
    dist.all_reduce(count)
    return total * state.world_size / count.clamp(min=1)


def mean_over_ranks(values: dict[str, torch.Tensor], state: DistState = SINGLE
                    ) -> dict[str, float]:
    """Loss values averaged over ranks (each rank holds its share of the global mean), as
    Python floats: one host sync for all of them."""
    t = torch.stack([v.detach().float() for v in values.values()]).cpu()
    if state.active:
        dist.all_reduce(t)
        t /= state.world_size
    return dict(zip(values, t.tolist()))


def same_on_every_rank(value: int, what: str, state: DistState = SINGLE,
                       device: torch.device = torch.device("cpu")) -> None:
    """EcgsslError on every rank unless all ranks hold the same `value` (one all_gather, at
    start-up): e.g. the step a run resumes from, which each node reads from its own view of
    --output. Nodes that saw different checkpoints would train from different steps while
    DDP syncs rank 0's weights into all of them, and no later check would notice."""
    if not state.active:
        return
    got = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(state.world_size)]
    dist.all_gather(got, torch.tensor([value], dtype=torch.long, device=device))
    seen = [int(t.item()) for t in got]
    if len(set(seen)) > 1:
        each = ", ".join(f"rank {r}: {v}" for r, v in enumerate(seen))
        raise EcgsslError(f"the ranks disagree on {what} ({each}). Every node must see the "
                          "same --output: a shared volume or an s3:// prefix, not a folder "
                          "local to each node")
