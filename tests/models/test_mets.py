import math

import torch

from ecgssl.models.mets import METSHead, info_nce


def test_info_nce_matches_a_hand_computed_case():
    z_e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(2.0)
    # ECG->text logits: row 0 = 2*[1, 0.6] = [2, 1.2]; row 1 = 2*[0, 0.8] = [0, 1.6]
    e2t = [-math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))),
           -math.log(math.exp(1.6) / (1 + math.exp(1.6)))]
    # text->ECG: t0 vs e: [2, 0]; t1 vs e: [1.2, 1.6]
    t2e = [-math.log(math.exp(2) / (math.exp(2) + 1)),
           -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))]
    expected = 0.5 * (sum(e2t) / 2 + sum(t2e) / 2)
    got = info_nce(z_e, z_t, scale, torch.tensor([1, 2]))
    assert abs(got.item() - expected) < 1e-6


def test_duplicate_reports_are_not_negatives():
    z = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    t[1] = t[0]                                        # rows 0 and 1 have the same report
    ids = torch.tensor([7, 7, 8, 9])
    masked = info_nce(z, t, torch.tensor(10.0), ids)
    # by hand: drop column 1 for row 0 and column 0 for row 1 (and the same for text->ECG)
    logits = 10.0 * z @ t.T
    logits[0, 1] = logits[1, 0] = float("-inf")
    lt = 10.0 * t @ z.T
    lt[0, 1] = lt[1, 0] = float("-inf")
    labels = torch.arange(4)
    expected = 0.5 * (torch.nn.functional.cross_entropy(logits, labels)
                      + torch.nn.functional.cross_entropy(lt, labels))
    assert torch.allclose(masked, expected)
    unmasked = info_nce(z, t, torch.tensor(10.0), torch.arange(4))
    assert not torch.allclose(masked, unmasked)


def test_temperature_starts_at_0_07_and_is_clamped():
    head = METSHead(16, 8)
    assert abs(head.temperature - 0.07) < 1e-6
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    _, _, scale = head(torch.randn(2, 16), torch.randn(2, 8))
    assert abs(scale.item() - 100.0) < 1e-4 and abs(head.temperature - 0.01) < 1e-8


def test_logits_stay_fp32_under_bf16_autocast():
    # The training step runs under bf16 autocast, which casts every matmul to bf16 whatever
    # its inputs' dtype: at scale 100 the logits would be rounded by up to ~0.4, and
    # neighbouring cosines merged. The loss must be the fp32 one.
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=-1)
    scale = torch.tensor(100.0)
    ids = torch.arange(64)
    fp32 = info_nce(z, t, scale, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = info_nce(z, t, scale, ids)
    assert mixed.dtype == torch.float32
    assert abs(mixed.item() - fp32.item()) < 1e-4, (mixed.item(), fp32.item())
