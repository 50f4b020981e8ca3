"""Checkpoint folders: whole on disk before they are named."""

from __future__ import annotations

import os

import torch

from ecgssl.train import checkpoint


def test_a_checkpoint_is_on_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """A checkpoint appears by one rename and the older ones are then pruned: after a power
    loss a rename that reached the disk before the files' data leaves `latest()` an empty
    state.pt, and nothing older to resume from. Its files and folder must be fsynced first."""
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    monkeypatch.setattr(os, "fsync", fsync)
    final = checkpoint.save(tmp_path, 4, model, opt, sched, {})
    tmp = tmp_path / "checkpoints" / ".tmp-step-0000004"
    assert [str(tmp / "model.safetensors"), str(tmp / "state.pt"), str(tmp)] == synced[:3]
    assert str(tmp_path / "checkpoints") in synced[3:]
    assert checkpoint.latest(tmp_path) == final
