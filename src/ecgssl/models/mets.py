"""METS: ECG-text contrastive pretraining against a frozen language model's report embeddings.

The language model never runs in the training step: report embeddings come from the cache
(`ecgssl embed-text`), and only a linear projection over them is trained.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ecgssl.distributed import SINGLE, DistState, gather_with_grad


class METSHead(nn.Module):
    def __init__(self, ecg_dim: int, text_dim: int, dim: int = 256, init_temperature: float = 0.07,
                 max_logit_scale: float = 100.0):
        super().__init__()
        self.ecg_proj = nn.Sequential(nn.Linear(ecg_dim, ecg_dim), nn.ReLU(),
                                      nn.Linear(ecg_dim, dim))
        self.text_proj = nn.Linear(text_dim, dim)
        # CLIP: learn log(1/temperature), clamp so the temperature never drops below 1/100.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_log_scale = math.log(max_logit_scale)

    def forward(self, ecg_emb: torch.Tensor, text_emb: torch.Tensor):
        z_e = F.normalize(self.ecg_proj(ecg_emb), dim=-1)
        z_t = F.normalize(self.text_proj(text_emb), dim=-1)
        return z_e, z_t, self.scale()

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped: the one place the clamp lives."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    @property
    def temperature(self) -> float:
        return 1.0 / float(self.scale().detach())


def info_nce(z_e: torch.Tensor, z_t: torch.Tensor, scale: torch.Tensor,
             text_ids: torch.Tensor, dist: DistState = SINGLE) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch (gathered across ranks).

    Rows whose reports say the same (same `text_ids`: equal statement codes, or equal text
    where a report has no codes) are not negatives of each other: their off-diagonal logits
    are masked out in both directions. Each rank scores its own rows
    against all columns; averaging over ranks gives the single-process loss.
    """
    # Logits in fp32 even under bf16 autocast: at scale 100 bf16's 8 mantissa bits round
    # neighbouring cosines together. Casting the inputs is not enough: autocast runs every
    # matmul in bf16 whatever its inputs, so it is switched off here.
    with torch.autocast(z_e.device.type, enabled=False):
        z_e, z_t, scale = z_e.float(), z_t.float(), scale.float()
        all_e, all_t = gather_with_grad(z_e, dist), gather_with_grad(z_t, dist)
        all_ids = gather_with_grad(text_ids, dist)
        rows = torch.arange(z_e.shape[0], device=z_e.device) + dist.rank * z_e.shape[0]
        same = text_ids[:, None] == all_ids[None, :]
        same[torch.arange(len(rows), device=rows.device), rows] = False   # keep the positive
        logits_e = (scale * z_e @ all_t.T).masked_fill(same, float("-inf"))
        logits_t = (scale * z_t @ all_e.T).masked_fill(same, float("-inf"))
        return 0.5 * (F.cross_entropy(logits_e, rows) + F.cross_entropy(logits_t, rows))

