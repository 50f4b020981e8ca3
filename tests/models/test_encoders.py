"""Every registered encoder keeps the `Encoder` contract the heads and evaluation rely on."""

from __future__ import annotations

import pytest
import torch

from ecgssl.models import ENCODERS, METHODS, build_encoder
from ecgssl.models.pretrain import PretrainModel


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_contract(name):
    torch.manual_seed(0)
    enc = build_encoder(name, 1000, width=16).eval()
    x = torch.randn(3, 12, 1000)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 3:] = False                                   # row 1: leads I-III only
    feats = enc.features(x, mask)
    assert feats.shape[:2] == (3, enc.dim) and feats.shape[2] * enc.stride >= 1000 // 2
    emb = enc(x, mask)
    assert emb.shape == (3, enc.dim)
    # An absent lead is ignored whatever it holds: the mask, not the caller, zeroes it.
    noisy = x.clone()
    noisy[1, 3:] = 100.0
    torch.testing.assert_close(enc(noisy, mask)[1], emb[1])


def test_unknown_encoder_names_the_choices():
    with pytest.raises(ValueError, match="resnet1d18"):
        build_encoder("resnet9000", 1000)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_methods_build_the_heads_of_their_objectives(method):
    model = PretrainModel(method, "resnet1d18", 1000, width=8)
    objectives = METHODS[method].objectives
    assert (model.mets is not None) == ("mets" in objectives) == METHODS[method].needs_text
    assert (model.st is not None) == ("st" in objectives)
