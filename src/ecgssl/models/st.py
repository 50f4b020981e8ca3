"""Spatio-temporal pretext: dynamic random masking (reconstruct the signal) and lead-order
shuffling (predict each position's original lead), trained jointly on one encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ecgssl.distributed import SINGLE, DistState, global_mean

N_LEADS = 12
MIN_LEADS_FOR_IDENTITY = 3


def draw(shape: tuple[int, ...], generator: torch.Generator, device: torch.device,
         rows: slice = slice(None)) -> torch.Tensor:
    """Uniform draws made for the whole (global) batch, shape[0] rows, of which the caller
    keeps `rows`: every DDP rank draws the same numbers and uses its own slice."""
    return torch.rand(shape, generator=generator, device=device)[rows]


def random_masking(x: torch.Tensor, ratio_range: tuple[float, float], segment: int,
                   generator: torch.Generator, rows: slice = slice(None),
                   total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask random time segments, all leads at once, with a ratio drawn per sample.

    Returns the masked signal (zeros where masked) and the bool mask [B, T] (True = masked).
    The realised ratio is the drawn one rounded to whole segments. Draws are made for a batch
    of `total` rows (default: x's) of which x holds `rows`, on x's device.
    """
    b, _, t = x.shape
    total = total or b
    n_seg = t // segment
    lo, hi = ratio_range
    ratio = lo + (hi - lo) * draw((total,), generator, x.device, rows)
    k = torch.round(ratio * n_seg).long().clamp(0, n_seg)           # segments to mask
    scores = draw((total, n_seg), generator, x.device, rows)
    rank = scores.argsort(dim=1).argsort(dim=1)                      # random order per row
    seg_mask = rank < k[:, None]
    mask = torch.zeros(b, t, dtype=torch.bool, device=x.device)
    mask[:, :n_seg * segment] = seg_mask.repeat_interleave(segment, dim=1)
    return x.masked_fill(mask[:, None, :], 0.0), mask


def shuffle_leads(x: torch.Tensor, lead_mask: torch.Tensor, generator: torch.Generator,
                  rows: slice = slice(None), total: int | None = None):
    """Permute the present leads of each sample; absent leads keep their (zero) place.

    Returns (shuffled x, shuffled mask, targets [B, 12]) with x_shuffled[:, p] = x[:, target[p]]:
    the target of a position is the lead it came from (-100 where the lead is absent, and for
    samples with fewer than 3 leads). Vectorised: the k-th present position of a sample takes
    the k-th present lead in a random order (absent leads sort last).
    """
    b = x.shape[0]
    keys = draw((total or b, N_LEADS), generator, x.device, rows).masked_fill(~lead_mask, 2.0)
    random_order = keys.argsort(dim=1)                          # present leads first, shuffled
    kth_present = (lead_mask.cumsum(1) - 1).clamp(min=0)
    same = torch.arange(N_LEADS, device=x.device).expand(b, -1)
    perm = torch.where(lead_mask, random_order.gather(1, kth_present), same)
    idx = perm[:, :, None].expand(-1, -1, x.shape[2])
    # Identity is only learnable with >= 3 leads: one lead is trivial, two a coin flip.
    few = lead_mask.sum(1, keepdim=True) < MIN_LEADS_FOR_IDENTITY
    targets = perm.masked_fill(~lead_mask | few, -100)
    return x.gather(1, idx), lead_mask.gather(1, perm), targets


class STHead(nn.Module):
    """A light decoder back to [12, T] from the encoder's feature map, and a lead classifier."""

    def __init__(self, feat_dim: int, stride: int, hidden: int = 128):
        super().__init__()
        self.stride = stride
        self.decoder = nn.Sequential(nn.Conv1d(feat_dim, hidden, 3, padding=1), nn.GELU(),
                                     nn.Conv1d(hidden, N_LEADS * stride, 1))
        self.lead = nn.Linear(feat_dim, N_LEADS * N_LEADS)

    def forward(self, feats: torch.Tensor, n_samples: int):
        b, _, length = feats.shape
        rec = self.decoder(feats).view(b, N_LEADS, self.stride, length)
        rec = rec.permute(0, 1, 3, 2).reshape(b, N_LEADS, length * self.stride)
        rec = F.pad(rec, (0, max(0, n_samples - rec.shape[-1])))[..., :n_samples]
        return rec, self.lead(feats.mean(-1)).view(b, N_LEADS, N_LEADS)


def reconstruction_loss(pred, target, time_mask, lead_mask, dist: DistState = SINGLE):
    """MSE over masked time samples of present leads only (mean over the global batch)."""
    # fp32 weights even for a bf16 prediction: their sum is the count, exact only in fp32
    w = (time_mask[:, None, :] & lead_mask[:, :, None]).float()
    return global_mean(((pred - target) ** 2 * w).sum(), w.sum(), dist)


def lead_loss(logits, targets, dist: DistState = SINGLE):
    """Cross-entropy over 12 leads at every present position (mean over the global batch)."""
    flat = targets.reshape(-1)
    ce = F.cross_entropy(logits.reshape(-1, N_LEADS).float(), flat, ignore_index=-100,
                         reduction="sum")
    return global_mean(ce, (flat != -100).sum().to(ce.dtype), dist)
