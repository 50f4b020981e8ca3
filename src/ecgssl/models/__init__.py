"""The model menus: ECG encoders and pretraining methods, one registry each.

    from ecgssl.models import ENCODERS, METHODS
    encoder = ENCODERS["resnet1d18"](n_samples=1000, width=64)

Adding an encoder is one module with an `nn.Module` that satisfies `Encoder`, plus one entry in
`ENCODERS`; config validation, `--help` and the CLI choices read the keys. The builders import
torch lazily so that reading the menu (e.g. validating params.yaml) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class Encoder(Protocol):
    """[B, 12, T] signal + [B, 12] lead mask -> [B, dim] embedding."""
    dim: int       # embedding width
    stride: int    # samples per position of the feature map

    def features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, dim, L] time feature map (for dense heads such as reconstruction)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, dim] pooled embedding."""


def _resnet1d18(n_samples: int, width: int = 64) -> Encoder:
    from ecgssl.models.encoders import ResNet1d
    return ResNet1d(width=width)


def _vit1d(n_samples: int, width: int = 64) -> Encoder:
    from ecgssl.models.encoders import ViT1d
    return ViT1d(n_samples, dim=4 * width, heads=max(1, width // 8))


ENCODERS: dict[str, Callable[..., Encoder]] = {
    "resnet1d18": _resnet1d18,   # ResNet-18 with 1-D convolutions (width = stem channels)
    "vit1d": _vit1d,             # patch embedding + transformer (token dim = 4 * width)
}


@dataclass(frozen=True)
class Method:
    """A pretraining method: which objectives (heads + losses) it trains on one encoder."""
    objectives: tuple[str, ...]
    help: str

    @property
    def needs_text(self) -> bool:
        return "mets" in self.objectives


METHODS: dict[str, Method] = {
    "mets": Method(("mets",), "ECG-text contrastive (METS) against frozen-LM report embeddings"),
    "st": Method(("st",), "spatio-temporal pretext: dynamic masking + lead shuffling"),
    "mets+st": Method(("mets", "st"), "both objectives on one encoder"),
}


def build_encoder(name: str, n_samples: int, width: int = 64) -> Encoder:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name](n_samples, width)


__all__ = ["ENCODERS", "METHODS", "Encoder", "Method", "build_encoder"]
