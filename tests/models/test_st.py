import torch

from ecgssl.models.st import lead_loss, random_masking, reconstruction_loss, shuffle_leads


def test_masking_ratio_is_drawn_per_sample_within_the_range():
    x = torch.randn(64, 12, 1000)
    g = torch.Generator().manual_seed(0)
    masked, mask = random_masking(x, (0.2, 0.6), 25, g)
    ratio = mask.float().mean(1)
    assert ((ratio >= 0.2 - 1 / 40) & (ratio <= 0.6 + 1 / 40)).all()   # whole 25-sample segments
    assert ratio.std() > 0.05                                            # dynamic, not fixed
    assert (masked[mask[:, None, :].expand_as(x)] == 0).all()
    assert torch.equal(masked[~mask[:, None, :].expand_as(x)], x[~mask[:, None, :].expand_as(x)])
    # segments: the mask changes value only at segment boundaries
    edges = (mask[:, 1:] != mask[:, :-1]).nonzero()[:, 1] + 1
    assert (edges % 25 == 0).all()


def test_reconstruction_loss_counts_masked_samples_of_present_leads_only():
    target = torch.zeros(1, 12, 10)
    pred = torch.zeros(1, 12, 10)
    time_mask = torch.zeros(1, 10, dtype=torch.bool)
    time_mask[0, :4] = True
    lead_mask = torch.zeros(1, 12, dtype=torch.bool)
    lead_mask[0, :2] = True
    pred[0, 5:] = 100.0                           # absent leads: ignored
    pred[0, :2, 4:] = 100.0                       # unmasked time: ignored
    pred[0, 0, :4] = 2.0                          # 4 masked samples off by 2 in lead 0
    assert reconstruction_loss(pred, target, time_mask, lead_mask).item() == 4 * 4 / 8


def test_shuffle_targets_invert_the_permutation_and_absent_leads_stay():
    g = torch.Generator().manual_seed(1)
    x = torch.arange(12.0)[None, :, None].repeat(4, 1, 3)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[1, [2, 5, 7]] = False
    x[1, [2, 5, 7]] = 0
    xs, ms, target = shuffle_leads(x, mask, g)
    for i in range(4):
        present = target[i] != -100
        # x_shuffled[p] came from lead target[p]: undoing it restores the original
        restored = torch.zeros_like(x[i])
        restored[target[i][present]] = xs[i][present]
        assert torch.equal(restored[mask[i]], x[i][mask[i]])
    assert (target[1, [2, 5, 7]] == -100).all() and not ms[1, [2, 5, 7]].any()
    assert not torch.equal(target[0], torch.arange(12))          # actually shuffled


def test_lead_loss_ignores_absent_positions():
    logits = torch.zeros(1, 12, 12)
    targets = torch.full((1, 12), -100)
    targets[0, 0] = 3
    logits[0, 0, 3] = 10.0
    assert lead_loss(logits, targets).item() < 1e-3


def test_draws_for_a_global_batch_give_each_rank_its_slice():
    """A DDP rank draws for the global batch and keeps its rows: the same masking and shuffling
    as one process (the vectorised shuffle included: no per-sample loop, any device)."""
    from ecgssl.models.pretrain import random_lead_subsets, st_inputs
    x = torch.randn(8, 12, 100)
    mask = torch.rand(8, 12) < 0.7
    mask[:, 0] = True
    x = x * mask[:, :, None]
    whole = st_inputs(x, mask, (0.2, 0.6), 10, torch.Generator().manual_seed(5))
    sub = random_lead_subsets(mask, 0.5, torch.Generator().manual_seed(6))
    for r in range(4):
        rows = slice(2 * r, 2 * r + 2)
        part = st_inputs(x[rows], mask[rows], (0.2, 0.6), 10,
                         torch.Generator().manual_seed(5), rows, 8)
        for k in whole:
            assert torch.equal(part[k], whole[k][rows]), k
        assert torch.equal(random_lead_subsets(mask[rows], 0.5, torch.Generator().manual_seed(6),
                                               rows, 8), sub[rows])
    assert (whole["mask"].sum(1) == mask.sum(1)).all()    # a permutation of present leads


def test_reconstruction_loss_of_a_bf16_prediction_divides_by_the_exact_count():
    # Under bf16 autocast the decoder's output is bf16; the count of masked samples must not
    # be rounded to bf16's 8 bits (257 -> 256), or every step's loss is off by up to 0.4 %.
    pred = torch.zeros(1, 12, 300, dtype=torch.bfloat16)
    target = torch.ones(1, 12, 300)
    time_mask = torch.zeros(1, 300, dtype=torch.bool)
    time_mask[0, :257] = True
    lead_mask = torch.zeros(1, 12, dtype=torch.bool)
    lead_mask[0, 0] = True
    assert reconstruction_loss(pred, target, time_mask, lead_mask).item() == 1.0
