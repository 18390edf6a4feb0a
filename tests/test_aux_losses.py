"""L1-L5: each passes a non-zero, finite gradient into the fake IHC (fp32 and bf16); values by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atst_model.cppnet.count import density_of
from atst_model.losses import TERMS, AuxLossConfig, AuxLosses, dab_loss, mask_losses, patch_losses
from atst_prep.mask import MaskConfig, dab_mask
from atst_prep.stain import dab_channel

CONFIG = AuxLossConfig(mask=MaskConfig(closing_radius=5))


@pytest.fixture(scope="module")
def aux() -> AuxLosses:
    return AuxLosses(CONFIG)  # the bundled CPP-Net, frozen


@pytest.fixture(scope="module")
def real_targets(real_ihc):
    """Mask, DAB mean and a count of a 64x64 real IHC crop, as the shards would give them."""
    crop = real_ihc[320:384, 0:64]
    mask = dab_mask(crop, CONFIG.mask)
    assert 0.1 < mask.mean() < 0.9  # a crop with both classes
    dab_mean = float(dab_channel(crop)[mask].mean())
    return (torch.from_numpy(mask).float()[None, None], torch.tensor([dab_mean]), torch.tensor([7.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("term", TERMS)
def test_every_aux_loss_passes_a_finite_nonzero_gradient_to_the_fake(aux, real_targets, term, dtype):
    torch.manual_seed(1)
    fake = (torch.rand(1, 3, 64, 64) * 1.6 - 0.8).to(dtype).requires_grad_(True)  # leaf, as G1's output
    mask, dab_mean, count = real_targets
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        losses = aux(fake, mask, dab_mean, count)
    assert torch.isfinite(losses[term]) and losses[term].dtype == torch.float32
    losses[term].backward()
    grad = fake.grad.float()
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0, f"{term} passes no gradient in {dtype}"


def test_the_frozen_counter_gets_no_gradient_and_stays_in_eval_mode(aux, real_targets):
    fake = torch.zeros(1, 3, 64, 64, requires_grad=True)
    aux.train()
    assert not aux.counter.training and not any(p.requires_grad for p in aux.counter.parameters())
    aux(fake, *real_targets)["l5"].backward()
    assert all(p.grad is None for p in aux.counter.parameters()) and fake.grad.abs().sum() > 0


def test_total_is_the_weighted_sum_with_the_paper_weights(aux, real_targets):
    assert AuxLossConfig().weights == (60.0, 10.0, 10.0, 20.0, 1.0)
    out = aux(torch.zeros(1, 3, 64, 64), *real_targets)
    want = sum(w * out[k] for w, k in zip(CONFIG.weights, TERMS))
    torch.testing.assert_close(out["total"], want)


def test_a_term_of_weight_zero_is_logged_but_passes_no_gradient(aux, real_targets):
    from dataclasses import replace

    fake = (torch.rand(1, 3, 64, 64) * 1.6 - 0.8).requires_grad_(True)
    full = aux(fake, *real_targets)
    only_l1 = AuxLosses(replace(CONFIG, weights=(60.0, 0.0, 0.0, 0.0, 0.0)), counter=aux.counter)
    out = only_l1(fake, *real_targets)
    for k in TERMS:  # same values, logged whatever the weight
        torch.testing.assert_close(out[k], full[k])
    assert out["l1"].requires_grad and not any(out[k].requires_grad for k in ("l2", "l3", "l4", "l5"))
    (grad,) = torch.autograd.grad(out["total"], fake)
    (want,) = torch.autograd.grad(60.0 * full["l1"], fake)
    torch.testing.assert_close(grad, want)
    none = AuxLosses(replace(CONFIG, weights=(0.0,) * 5), counter=aux.counter)(fake, *real_targets)
    assert float(none["total"]) == 0.0 and not none["total"].requires_grad


def test_mask_loss_is_zero_for_equal_masks_and_one_for_opposite_ones():
    m = (torch.rand(2, 1, 16, 16) > 0.5).float()
    assert mask_losses(m, m).item() == 0.0
    assert mask_losses(1 - m, m).item() == 1.0


def test_patch_losses_select_the_most_and_least_positive_patches():
    # 8x8 crop, 16 patches of 2x2; areas of M per patch (row-major) 0..15 except
    # patches 3 and 12 swapped: the largest four are 3, 13, 14, 15, the smallest 0, 1, 2, 12
    area = torch.arange(16).float()
    area[[3, 12]] = area[[12, 3]]
    mask = torch.zeros(1, 1, 8, 8)
    err = torch.zeros(1, 1, 8, 8)  # squared error placed per patch: patch p -> p / 100
    for p in range(16):
        r, c = divmod(p, 4)
        mask[..., 2 * r:2 * r + 2, 2 * c:2 * c + 2] = area[p] / 16  # positive area = 4 * area / 16
        err[..., 2 * r:2 * r + 2, 2 * c:2 * c + 2] = p / 100
    fake = mask + err.sqrt()
    l2, l3 = patch_losses(fake, mask, 16)
    largest = [3, 13, 14, 15]   # areas 12, 13, 14, 15
    smallest = [0, 1, 2, 12]    # areas 0, 1, 2, 3
    assert l2.item() == pytest.approx(sum(largest) / 100 / 4, rel=1e-5)
    assert l3.item() == pytest.approx(sum(smallest) / 100 / 4, rel=1e-5)


def test_patch_losses_break_ties_by_patch_order_and_check_the_grid():
    mask = torch.zeros(1, 1, 8, 8)
    fake = torch.zeros(1, 1, 8, 8)
    fake[..., :2, :8] = 1.0  # error only in the first patch row (patches 0-3)
    l2, l3 = patch_losses(fake, mask, 16)  # all areas 0: both pick patches 0-3
    assert l2.item() == 1.0 and l3.item() == 1.0
    with pytest.raises(ValueError, match="equal patches"):
        patch_losses(torch.zeros(1, 1, 10, 8), torch.zeros(1, 1, 10, 8), 16)


def test_dab_loss_compares_soft_masked_means():
    dab = torch.full((2, 1, 8, 8), 0.2)
    dab[1, :, :4] = 0.6  # image 1: 0.6 in the top half
    soft = torch.zeros(2, 1, 8, 8)
    soft[0] = 1.0
    soft[1, :, :4] = 1.0  # mask = top half
    target = torch.tensor([0.1, 0.6])
    # image 0: (0.2 - 0.1)^2 = 0.01, image 1: 0
    assert dab_loss(dab, soft, target, eps=1e-9).item() == pytest.approx(0.005, rel=1e-5)


def test_count_loss_is_the_absolute_error_of_the_soft_count(aux, real_ihc):
    fake = torch.from_numpy(real_ihc[:64, :64]).permute(2, 0, 1)[None].float() / 127.5 - 1
    dab, hema, soft = aux.fake_stains(fake)
    soft_count = (density_of(aux.counter, hema) * soft).sum().item()
    out = aux(fake, torch.zeros(1, 1, 64, 64), torch.zeros(1), torch.tensor([soft_count + 3.0]))
    assert out["l5"].item() == pytest.approx(3.0, abs=1e-3)


def test_losses_of_the_real_image_against_its_own_targets_are_small(aux, real_ihc):
    crop = real_ihc[:128, :128]
    fake = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
    mask = dab_mask(crop, CONFIG.mask)
    dab_mean = float(dab_channel(crop)[mask].mean())
    out = aux(fake, torch.from_numpy(mask).float()[None, None], torch.tensor([dab_mean]), torch.zeros(1))
    # the soft mask differs from the hard one where the gray is within a few temperatures of T
    # (measured 0.037 here at temperature 0.02, against 0.73 for an empty M')
    assert out["l1"] < 0.05 and out["l2"] < 0.05 and out["l3"] < 0.05 and out["l4"] < 1e-4


@pytest.mark.parametrize("bad", [dict(n_patches=9), dict(n_patches=8), dict(weights=(1, 2, 3)),
                                 dict(weights=(1, 1, 1, 1, -1)), dict(temperature=0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="invalid auxiliary-loss parameters"):
        AuxLossConfig(**bad)


def test_a_two_channel_counter_is_refused():
    from atst_model.cppnet.model import CppNet, CppNetConfig

    with pytest.raises(ValueError, match="in_channels=1"):
        AuxLosses(CONFIG, counter=CppNet(CppNetConfig(in_channels=2, base_channels=4, depth=1)))


def test_batched_losses_equal_the_mean_of_single_image_losses(aux, real_ihc):
    crops = [real_ihc[:64, :64], real_ihc[200:264, 300:364]]
    fakes = torch.stack([torch.from_numpy(c).permute(2, 0, 1).float() / 127.5 - 1 for c in crops])
    masks = torch.stack([torch.from_numpy(dab_mask(c, CONFIG.mask)).float()[None] for c in crops])
    dab_means, counts = torch.tensor([0.1, 0.2]), torch.tensor([3.0, 40.0])
    both = aux(fakes, masks, dab_means, counts)
    single = [aux(fakes[i:i + 1], masks[i:i + 1], dab_means[i:i + 1], counts[i:i + 1]) for i in range(2)]
    for k in TERMS:
        assert both[k].item() == pytest.approx(np.mean([s[k].item() for s in single]), rel=1e-4, abs=1e-6)
