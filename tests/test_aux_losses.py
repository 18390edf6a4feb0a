"""L1-L5: each passes a non-zero, finite gradient into the fake IHC (fp32 and bf16); values by hand."""
# the targets are (real IHC crop, M, L4's target): L5 counts the real crop with the same frozen counter

from __future__ import annotations

import numpy as np
import pytest
import torch

from atst_model.cppnet.count import density_of
from atst_model.losses import TERMS, AuxLossConfig, AuxLosses, dab_loss, mask_losses, patch_losses
from atst_prep.mask import MaskConfig, dab_mask
from atst_prep.stain import dab_channel, dab_gray

CONFIG = AuxLossConfig(mask=MaskConfig(closing_radius=5))


@pytest.fixture(scope="module")
def aux() -> AuxLosses:
    return AuxLosses(CONFIG)  # the bundled CPP-Net, frozen


def _unit(rgb):
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 127.5 - 1


@pytest.fixture(scope="module")
def real_targets(real_ihc):
    """The real IHC crop (64x64), its mask and L4's target (mean darkness in M), as the loader gives them."""
    crop = real_ihc[320:384, 0:64]
    mask = dab_mask(crop, CONFIG.mask)
    assert 0.1 < mask.mean() < 0.9  # a crop with both classes
    darkness = 1.0 - float(dab_gray(dab_channel(crop))[mask].mean())
    return (_unit(crop), torch.from_numpy(mask).float()[None, None], torch.tensor([darkness]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("term", TERMS)
def test_every_aux_loss_passes_a_finite_nonzero_gradient_to_the_fake(aux, real_targets, term, dtype):
    torch.manual_seed(1)
    # a wrong fake: the real crop turned a quarter, with noise. (M' is Eq. 1 in value, so a term is
    # exactly 0, with no gradient, wherever M' already equals M: a random fake is blank where M is.)
    real = real_targets[0]
    fake = (real.rot90(1, (-2, -1)) + 0.2 * torch.randn_like(real)).clamp(-1, 1)
    fake = fake.to(dtype).requires_grad_(True)  # leaf, as G1's output
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        losses = aux(fake, *real_targets)
    assert torch.isfinite(losses[term]) and losses[term].dtype == torch.float32 and losses[term] > 0
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


def test_dab_loss_damps_both_means_alike_so_equal_masks_score_zero():
    dab = torch.rand(1, 1, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :2, :2] = 1.0  # a speck of 4 px
    plain = dab[mask > 0].mean().view(1)
    assert dab_loss(dab, mask, plain, eps=4.0, mask=mask).item() == pytest.approx(0.0, abs=1e-12)
    # the speck's mean is halved on both sides (4 / (4 + 4)), and its gradient bounded by 1 / (area + eps)
    fake = dab.clone().requires_grad_(True)
    dab_loss(fake, mask, torch.zeros(1), eps=4.0).backward()
    assert fake.grad.abs().max().item() == pytest.approx(2 * (plain.item() / 2) / 8, rel=1e-5)


def test_count_loss_is_the_error_of_the_soft_count_in_poisson_standard_deviations(aux, real_ihc):
    fake = _unit(real_ihc[:64, :64])
    real = _unit(real_ihc[64:128, :64])
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32, :] = 1.0
    dab, hema, m = aux.fake_stains(fake)
    fake_count = (density_of(aux.counter, hema) * m).sum().item()
    real_hema = aux.fake_stains(real)[1]
    target = (density_of(aux.counter, real_hema) * mask).sum().item()
    crop = density_of(aux.counter, real_hema).sum().item()
    out = aux(fake, real, mask, torch.zeros(1))
    assert out["l5"].item() == pytest.approx(abs(fake_count - target) / max(crop, 1.0) ** 0.5, rel=1e-4)


def test_losses_of_the_real_image_against_its_own_targets_are_zero(aux, real_ihc):
    crop = real_ihc[:128, :128]
    fake = _unit(crop)
    mask = dab_mask(crop, CONFIG.mask)
    darkness = 1.0 - float(dab_gray(dab_channel(crop))[mask].mean())
    out = aux(fake, fake.clone(), torch.from_numpy(mask).float()[None, None], torch.tensor([darkness]))
    # M' is Eq. 1 in value (straight-through): the real image's M' is M, whatever the temperature
    assert out["l1"] == 0 and out["l2"] == 0 and out["l3"] == 0 and out["l5"] == 0 and out["l4"] < 1e-10


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
    reals = fakes.flip(-1)
    masks = torch.stack([torch.from_numpy(dab_mask(c, CONFIG.mask)).float()[None] for c in crops])
    targets = torch.tensor([0.1, 0.2])
    both = aux(fakes, reals, masks, targets)
    single = [aux(fakes[i:i + 1], reals[i:i + 1], masks[i:i + 1], targets[i:i + 1]) for i in range(2)]
    for k in TERMS:
        assert both[k].item() == pytest.approx(np.mean([s[k].item() for s in single]), rel=1e-4, abs=1e-6)
