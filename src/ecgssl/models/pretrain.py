"""One module per pretraining method: an encoder plus the heads its objectives need."""

from __future__ import annotations

import torch
from torch import nn

from ecgssl.distributed import SINGLE, DistState
from ecgssl.errors import EcgsslError
from ecgssl.models import METHODS, build_encoder
from ecgssl.models.mets import METSHead, info_nce
from ecgssl.models.st import (
    STHead,
    draw,
    lead_loss,
    random_masking,
    reconstruction_loss,
    shuffle_leads,
)


class PretrainModel(nn.Module):
    def __init__(self, method: str, encoder: str, n_samples: int, text_dim: int = 384,
                 proj_dim: int = 256, init_temperature: float = 0.07, width: int = 64):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.method, self.n_samples = method, n_samples
        self.encoder = build_encoder(encoder, n_samples, width)
        objectives = METHODS[method].objectives
        self.mets = METSHead(self.encoder.dim, text_dim, proj_dim, init_temperature) \
            if "mets" in objectives else None
        self.st = STHead(self.encoder.dim, self.encoder.stride) if "st" in objectives else None

    def forward(self, batch: dict, aug: dict, weights: dict,
                dist: DistState = SINGLE) -> dict[str, torch.Tensor]:
        """Losses of one (local) batch; `aug` holds this batch's masking/shuffling draws."""
        losses = {}
        if self.mets is not None:
            mask = batch.get("mets_mask", batch["mask"])
            z_e, z_t, scale = self.mets(self.encoder(batch["x"], mask), batch["text"])
            losses["mets"] = info_nce(z_e, z_t, scale, batch["text_id"], dist)
        if self.st is not None:
            feats = self.encoder.features(aug["x"], aug["mask"])
            rec, logits = self.st(feats, self.n_samples)
            losses["recon"] = reconstruction_loss(rec, aug["target"], aug["time_mask"],
                                                  aug["mask"], dist)
            losses["lead"] = lead_loss(logits, aug["lead_target"], dist)
            losses["st"] = losses["recon"] + weights["lead"] * losses["lead"]
        losses["loss"] = sum(weights[k] * losses[k] for k in ("mets", "st") if k in losses)
        return losses


def st_inputs(x: torch.Tensor, mask: torch.Tensor, ratio: tuple[float, float], segment: int,
              generator: torch.Generator, rows: slice = slice(None), total: int | None = None
              ) -> dict:
    """Masked and lead-shuffled inputs with their targets, on x's device. The draws are made
    for a global batch of `total` rows (default: x's) of which x holds `rows` (a DDP rank's)."""
    shuffled, shuffled_mask, lead_target = shuffle_leads(x, mask, generator, rows, total)
    masked, time_mask = random_masking(shuffled, ratio, segment, generator, rows, total)
    return {"x": masked, "mask": shuffled_mask, "target": shuffled, "time_mask": time_mask,
            "lead_target": lead_target}


def random_lead_subsets(mask: torch.Tensor, p: float, generator: torch.Generator,
                        rows: slice = slice(None), total: int | None = None) -> torch.Tensor:
    """With probability `p` per sample, keep a random non-empty subset of its present leads
    (size uniform in 1..n, down to one lead alone), so that one- and two-lead inputs are not out
    of distribution for an encoder that mostly sees 12-lead ECGs. Draws as in `st_inputs`."""
    total = total or mask.shape[0]
    draw_p = draw((total,), generator, mask.device, rows) < p
    keys = draw((total, mask.shape[1]), generator, mask.device, rows).masked_fill(~mask, 2.0)
    rank = keys.argsort(1).argsort(1)                    # random order, present leads first
    n = mask.sum(1)
    keep = (draw((total,), generator, mask.device, rows) * n).floor().long() + 1
    subset = (rank < keep[:, None]) & mask
    return torch.where(draw_p[:, None], subset, mask)


def load_pretrained(folder, random_init: bool = False) -> tuple[PretrainModel, dict]:
    """The model `ecgssl pretrain` wrote to `folder` (or its randomly initialised twin)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from ecgssl.storage import read_json

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise EcgsslError(f"{folder} is not a pretrained encoder (no config.json; the output "
                          "of `ecgssl pretrain`)")
    cfg = read_json(folder / "config.json")
    torch.manual_seed(cfg.get("seed", 0) + 1)
    model = PretrainModel(cfg["method"], cfg["encoder"], cfg["n_samples"], cfg["text_dim"],
                          cfg["proj_dim"], cfg["init_temperature"], cfg.get("width", 64))
    if not random_init:
        weights = {f"encoder.{k}": v for k, v in load_file(folder / "encoder.safetensors").items()}
        if (folder / "heads.safetensors").is_file():
            weights.update(load_file(folder / "heads.safetensors"))
        check_fits(weights, model, folder)
        model.load_state_dict(weights)
    return model.eval(), cfg


def check_fits(weights: dict[str, torch.Tensor], model: nn.Module, path) -> None:
    """A clear error when saved weights belong to another architecture."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(weights)) if weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise EcgsslError(f"checkpoint {path} does not fit this model (another encoder, width "
                          f"or method?): missing {missing[:3]}, unexpected {unexpected[:3]}, "
                          f"shape mismatches {shapes[:3]}")
