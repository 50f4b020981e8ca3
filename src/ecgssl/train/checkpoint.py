"""Checkpoints: weights in safetensors, optimizer/scheduler/step state beside them.

A checkpoint is a folder `checkpoints/step-XXXXXXX/` written under a temp name and renamed,
so a killed run leaves either a whole checkpoint or none. The two newest are kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ecgssl.models.pretrain import check_fits
from ecgssl.storage import fsync_path

KEEP = 2


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save(folder: Path, step: int, model, optimizer, scheduler, extra: dict) -> Path:
    root = folder / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_state_dict(model), tmp / "model.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, **extra}, tmp / "state.pt")
    # on disk before it is named (older checkpoints are pruned next): after a power loss the
    # newest checkpoint is whole, never empty files under a step name
    for p in (tmp / "model.safetensors", tmp / "state.pt"):
        fsync_path(p)
    fsync_path(tmp, folder=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fsync_path(root, folder=True)
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old)
    return final


def clear(folder: Path) -> None:
    """Drop a folder's checkpoints, for a run that starts afresh there: an earlier run's would
    outlive the new run's (pruning keeps the highest steps) and a later --resume would continue
    the earlier run."""
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)


def latest(folder: Path) -> Path | None:
    """The newest whole checkpoint. Written here, a checkpoint appears by one rename; pulled
    from S3 after a push that was cut short, one may lack its state.pt (pushed last)."""
    found = sorted(p for p in (folder / "checkpoints").glob("step-*")
                   if (p / "state.pt").is_file() and (p / "model.safetensors").is_file())
    return found[-1] if found else None


def load(path: Path, model, optimizer, scheduler) -> dict:
    weights = load_file(path / "model.safetensors")
    check_fits(weights, model, path)
    model.load_state_dict(weights)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state
