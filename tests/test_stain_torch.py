"""The torch twin of prep's unmixing and Eq. 1 against prep itself, on real IHC images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atst_model import stain_torch as st
from atst_prep.mask import MaskConfig, gaussian_blur, mask_from_dab, otsu_threshold
from atst_prep.morphology import binary_dilation_disk
from atst_prep.stain import dab_and_hematoxylin, dab_channel, dab_gray


def _unit(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1], as the generator's output would be."""
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def test_unmix_equals_prep_on_real_ihc_crops_and_tile(real_ihc_crops, real_ihc_1024):
    for rgb in real_ihc_crops + [real_ihc_1024]:
        dab, hema = st.unmix(_unit(rgb))
        want_dab, want_hema = dab_and_hematoxylin(rgb)
        assert dab.shape == (1, 1) + rgb.shape[:2] and dab.dtype == torch.float32
        np.testing.assert_allclose(dab[0, 0].numpy(), want_dab, rtol=0, atol=3e-7)
        np.testing.assert_allclose(hema[0, 0].numpy(), want_hema, rtol=0, atol=3e-7)


def test_unmix_is_finite_with_a_finite_gradient_at_black():
    x = torch.full((1, 3, 4, 4), -1.0, requires_grad=True)  # I = 0: clamped at 1e-6
    dab, hema = st.unmix(x)
    (dab.sum() + hema.sum()).backward()
    assert torch.isfinite(dab).all() and torch.isfinite(x.grad).all()


def test_gray_blur_and_otsu_equal_prep(real_ihc_crops):
    for rgb in real_ihc_crops:
        dab = dab_channel(rgb)
        want = gaussian_blur(dab_gray(dab), 1.0)
        gray = st.gaussian_blur(st.dab_gray(torch.from_numpy(dab)[None, None]), 1.0)
        np.testing.assert_allclose(gray[0, 0].numpy(), want, rtol=0, atol=1e-6)
        assert st.otsu_threshold(torch.from_numpy(want)[None, None]).item() == otsu_threshold(want)


def test_otsu_is_per_image_in_a_batch_and_constant_images_return_their_value(real_ihc):
    gray = st.gaussian_blur(st.dab_gray(torch.from_numpy(dab_channel(real_ihc))[None, None]), 1.0)
    batch = torch.cat([gray, gray * 0.5 + 0.2, torch.full_like(gray, 0.3)])
    t = st.otsu_threshold(batch)
    assert t[0].item() == otsu_threshold(gray[0, 0].numpy())
    assert t[1].item() == otsu_threshold(batch[1, 0].numpy())
    assert t[2].item() == pytest.approx(0.3)


@pytest.mark.parametrize("radius", [5, 30])
def test_soft_mask_thresholded_equals_prep_mask_on_real_ihc(real_ihc_crops, real_ihc_1024, radius):
    config = MaskConfig(closing_radius=radius)
    ious = []
    for rgb in real_ihc_crops + [real_ihc_1024]:
        dab, _ = st.unmix(_unit(rgb))
        soft = st.soft_mask(dab, config, temperature=0.02)
        assert soft.shape == dab.shape and 0 <= soft.min() and soft.max() <= 1
        want = mask_from_dab(dab_channel(rgb), config)
        ious.append(_iou(soft[0, 0].numpy() > 0.5, want))
    assert min(ious) >= 0.999, ious  # measured: 1.0 (identical masks) on every image


def test_soft_mask_of_a_batch_equals_each_image_alone(real_ihc_crops):
    a, b = real_ihc_crops[0], real_ihc_crops[1]
    config = MaskConfig(closing_radius=5)
    dab = st.unmix(torch.cat([_unit(a), _unit(b)]))[0]
    both = st.soft_mask(dab, config)
    for i in range(2):
        torch.testing.assert_close(both[i:i + 1], st.soft_mask(dab[i:i + 1], config), rtol=0, atol=0)


def test_soft_mask_of_a_dab_free_image_is_empty():
    white = torch.ones(1, 3, 64, 64)
    dab, _ = st.unmix(white * 0.9)
    assert st.soft_mask(dab, MaskConfig(closing_radius=5)).max() < 0.5


def test_disk_dilation_equals_the_exact_binary_disk(rng=np.random.default_rng(3)):
    mask = rng.random((70, 90)) > 0.995
    for r in (1, 4, 11):
        padded = torch.from_numpy(np.pad(mask, r).astype(np.float32))[None, None]
        got = st.dilate_disk(padded, r)[0, 0].numpy() > 0.5
        np.testing.assert_array_equal(got, binary_dilation_disk(np.pad(mask, r), r)[r:-r, r:-r])


def test_disk_dilation_gradient_is_the_max_subgradient():
    torch.manual_seed(0)
    r = 3
    x = torch.rand(2, 1, 14, 15, requires_grad=True)
    got = st.dilate_disk(x, r)
    grad_out = torch.rand_like(got)
    (g_got,) = torch.autograd.grad(got, x, grad_out)
    # reference: max over the disk footprint of unfolded patches (no ties in random floats)
    k = torch.arange(-r, r + 1)
    footprint = ((k[:, None] ** 2 + k[None, :] ** 2) <= r * r).flatten()
    patches = torch.nn.functional.unfold(x, 2 * r + 1)[:, footprint]  # (B, |disk|, h*w)
    ref = patches.amax(dim=1).view_as(got)
    (g_ref,) = torch.autograd.grad(ref, x, grad_out)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(g_got, g_ref)


def test_soft_mask_passes_an_unsaturated_gradient_under_bf16_autocast(real_ihc):
    fake = _unit(real_ihc[:128, :128]).to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dab, _ = st.unmix(fake)
        soft = st.soft_mask(dab, MaskConfig(closing_radius=5))
    assert soft.dtype == torch.float32
    soft.mean().backward()
    grad = fake.grad.float()
    assert torch.isfinite(grad).all() and (grad != 0).float().mean() > 0.05  # not saturated to 0/1


def test_soft_mask_rejects_a_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        st.soft_mask(torch.zeros(1, 1, 8, 8), MaskConfig(), temperature=0)
