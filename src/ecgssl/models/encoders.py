"""1-D ECG encoders: [B, 12, T] signal + [B, 12] lead mask -> [B, D] embedding.

`resnet1d18` (default) is a ResNet-18 with 1-D convolutions; `vit1d` embeds non-overlapping
time patches and runs a transformer encoder. Both zero absent leads before anything else, and
both expose `features(x, mask)` -> a [B, C, L] time feature map for dense (reconstruction) heads
(the `ecgssl.models.Encoder` protocol; the registry is `ecgssl.models.ENCODERS`).

GroupNorm instead of BatchNorm: the encoder's output then does not depend on what else is in
the batch, so a DDP rank's slice computes exactly what the single-process run computes, and
small fine-tuning batches behave.
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, c // 4), c)


class BasicBlock1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 7, stride, 3, bias=False)
        self.n1 = _norm(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 7, 1, 3, bias=False)
        self.n2 = _norm(c_out)
        self.down = None if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv1d(c_in, c_out, 1, stride, bias=False), _norm(c_out))

    def forward(self, x):
        y = torch.relu(self.n1(self.conv1(x)))
        y = self.n2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet1d(nn.Module):
    def __init__(self, layers=(2, 2, 2, 2), width: int = 64, in_leads: int = 12):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(in_leads, width, 15, 2, 7, bias=False),
                                  _norm(width), nn.ReLU(), nn.MaxPool1d(3, 2, 1))
        blocks, c = [], width
        for i, n in enumerate(layers):
            c_out = width * 2 ** i
            for j in range(n):
                blocks.append(BasicBlock1d(c, c_out, 2 if j == 0 and i > 0 else 1))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.dim = c
        self.stride = 4 * 2 ** (len(layers) - 1)

    def features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x * mask[:, :, None].to(x.dtype)))

    def forward(self, x, mask):
        return self.features(x, mask).mean(-1)


class ViT1d(nn.Module):
    def __init__(self, n_samples: int, patch: int = 25, dim: int = 256, depth: int = 6,
                 heads: int = 8, in_leads: int = 12):
        super().__init__()
        if n_samples % patch:
            raise ValueError(f"vit1d: window of {n_samples} samples is not a multiple of the "
                             f"patch size {patch}")
        self.patch = nn.Conv1d(in_leads, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, n_samples // patch, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dim, self.stride = dim, patch

    def features(self, x, mask):
        tokens = self.patch(x * mask[:, :, None].to(x.dtype)).transpose(1, 2) + self.pos
        return self.norm(self.encoder(tokens)).transpose(1, 2)

    def forward(self, x, mask):
        return self.features(x, mask).mean(-1)



def pooled(encoder, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, 2 * dim]: mean and max over time of the encoder's feature map (what probes and
    classifiers read; the mean alone dilutes one ectopic beat among ~30 positions)."""
    f = encoder.features(x, mask)
    return torch.cat([f.mean(-1), f.amax(-1)], dim=1)
