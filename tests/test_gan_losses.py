"""The cycle loss's SSIM against scikit-image on real images; its gradient; the LSGAN term.

The convention under test (``atst_model/losses/gan.py``'s docstring): images in [-1, 1] are
mapped to [0, 1]; 11x11 Gaussian window, sigma 1.5; population (Gaussian-weighted) variances;
``C1 = 0.01**2``, ``C2 = 0.03**2``; no padding, so the map covers only the centres whose window
lies inside the image, which is the part scikit-image averages after cropping 5 px per side.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from atst_model.losses import cycle_loss, lsgan, ssim
from atst_model.losses.gan import ssim_map
from atst_model.metrics.image import ssim as eval_ssim

#: scikit-image's half-window, ``(win_size - 1) // 2`` for sigma 1.5 and truncate 3.5 (win_size 11)
CROP = 5


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1], as the generators' outputs."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 127.5 - 1


def _skimage(a: np.ndarray, b: np.ndarray, **kwargs):
    """The reference: Wang et al.'s Gaussian SSIM, population covariance, in float64 on [0, 1]."""
    return structural_similarity(a / 255.0, b / 255.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0, channel_axis=2, **kwargs)


def _blur(rgb):
    return cv2.GaussianBlur(rgb, (0, 0), 1.2)


def _noise(rgb):
    noise = np.random.default_rng(0).normal(0.0, 12.0, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


def _jpeg(rgb):
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 30])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def _shift(rgb):
    return np.ascontiguousarray(np.roll(rgb, 3, axis=1))


DISTORTIONS = {"blur": _blur, "noise": _noise, "jpeg": _jpeg, "shift": _shift}


@pytest.fixture(scope="module")
def real_he() -> np.ndarray:
    """A 512 px tissue tile of the real H&E slide in tests/data."""
    from .realslide import TILES_512, read_slide

    x, y = TILES_512[0]
    return np.ascontiguousarray(read_slide()[y:y + 512, x:x + 512])


@pytest.fixture(scope="module")
def real_images(real_ihc, real_ihc_crops, real_he) -> dict[str, np.ndarray]:
    """Real IHC (whole, and a non-square rotated crop) and real H&E."""
    return {"ihc": real_ihc, "ihc_crop": real_ihc_crops[2], "he": real_he}


@pytest.mark.parametrize("distortion", DISTORTIONS)
@pytest.mark.parametrize("image", ["ihc", "ihc_crop", "he"])
def test_cycle_ssim_is_skimage_gaussian_ssim_on_real_images(real_images, image, distortion):
    original = real_images[image]
    changed = DISTORTIONS[distortion](original)
    ours = float(ssim(_tensor(changed), _tensor(original)))
    reference = _skimage(changed, original)
    assert 0.1 < reference < 0.99  # a real difference, not a trivial pair
    assert ours == pytest.approx(reference, abs=1e-4)


def test_cycle_ssim_map_is_skimages_map_without_its_reflected_border(real_images):
    original = real_images["he"]
    changed = _blur(original)
    ours = ssim_map(_tensor(changed), _tensor(original))[0].permute(1, 2, 0).double().numpy()
    _, full = _skimage(changed, original, full=True)
    h, w = original.shape[:2]
    assert ours.shape == (h - 2 * CROP, w - 2 * CROP, 3)  # "valid" centres only: no padding
    interior = full[CROP:-CROP, CROP:-CROP]
    # pixel for pixel to float32 rounding: E[x^2] - mu^2 cancels where the window is flat and bright
    # (glass), which costs up to ~1.4e-3 at a few pixels; on average it is ~2e-5
    np.testing.assert_allclose(ours, interior, atol=3e-3)
    assert np.abs(ours - interior).mean() < 1e-4
    # ... and the centres line up: the same map one pixel off is ~1000x further
    assert np.abs(ours - full[CROP + 1:h - CROP + 1, CROP:-CROP]).mean() > 1e-2
    assert np.abs(ours - full[CROP:-CROP, CROP + 1:w - CROP + 1]).mean() > 1e-2
    # the mean scikit-image reports is the mean of exactly that interior
    assert _skimage(changed, original) == pytest.approx(float(interior.mean()), abs=1e-12)
    # the reflected border is not the same: including it would shift the mean
    assert abs(float(full.mean()) - float(interior.mean())) > 1e-4


def test_cycle_ssim_of_a_batch_is_the_mean_of_the_images(real_ihc_crops):
    originals = [real_ihc_crops[0], real_ihc_crops[1]]  # both 256x256
    changed = [_blur(originals[0]), _noise(originals[1])]
    ours = float(ssim(torch.cat([_tensor(c) for c in changed]), torch.cat([_tensor(o) for o in originals])))
    reference = np.mean([_skimage(c, o) for c, o in zip(changed, originals)])
    assert ours == pytest.approx(reference, abs=1e-4)


def test_cycle_ssim_works_on_0_1_not_on_minus_1_1_and_is_not_the_evaluation_ssim(real_images):
    original = real_images["ihc"]
    changed = _blur(original)
    ours = float(ssim(_tensor(changed), _tensor(original)))
    # the luminance term is not shift-invariant: SSIM of the [-1, 1] values themselves is another number
    on_minus_1_1 = structural_similarity(changed / 127.5 - 1, original / 127.5 - 1, gaussian_weights=True,
                                         sigma=1.5, use_sample_covariance=False, data_range=2.0, channel_axis=2)
    assert abs(ours - on_minus_1_1) > 1e-2
    # the evaluation SSIM (7x7 uniform window, sample covariance) is a different convention
    assert abs(ours - eval_ssim(changed, original)) > 1e-2


def test_identical_images_give_ssim_1_and_cycle_loss_0(real_images):
    for rgb in real_images.values():
        x = _tensor(rgb)
        assert float(ssim(x, x.clone())) == pytest.approx(1.0, abs=1e-6)
        assert float(cycle_loss(x, x.clone())) == pytest.approx(0.0, abs=1e-6)


def test_cycle_loss_is_l1_plus_one_minus_ssim(real_images):
    original = real_images["ihc_crop"]
    a, b = _tensor(_jpeg(original)), _tensor(original)
    expected = float((a - b).abs().mean()) + 1 - _skimage(_jpeg(original), original)
    assert float(cycle_loss(a, b)) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("distortion", ["noise", "identical"])
def test_cycle_loss_passes_a_finite_gradient(real_ihc_crops, distortion):
    original = real_ihc_crops[0]
    start = original if distortion == "identical" else _noise(original)
    reconstructed = _tensor(start).requires_grad_(True)
    target = _tensor(original)
    loss = cycle_loss(reconstructed, target)
    loss.backward()
    grad = reconstructed.grad
    assert grad is not None and grad.shape == reconstructed.shape
    assert torch.isfinite(grad).all()
    if distortion == "identical":
        return  # the minimum: L1's sub-gradient and SSIM's gradient are 0 there, and finite
    assert grad.abs().sum() > 0
    with torch.no_grad():  # a small step down the gradient lowers the loss
        stepped = reconstructed - 0.5 * grad / grad.abs().max() * (reconstructed - target).abs().mean()
        assert float(cycle_loss(stepped, target)) < float(loss)


def test_ssim_gradient_alone_is_finite_and_nonzero(real_images):
    original = real_images["he"][:128, :128]
    a = _tensor(_blur(original)).requires_grad_(True)
    ssim(a, _tensor(original)).backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_cycle_ssim_stays_float32_under_bf16_autocast(real_ihc_crops):
    original = real_ihc_crops[1]
    a, b = _tensor(_noise(original)), _tensor(original)
    plain = ssim(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ssim(a, b)
        loss = cycle_loss(a, b)
    assert inside.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.equal(inside, plain)


def test_lsgan_is_mean_squared_distance_to_the_target():
    prediction = torch.tensor([[0.25, 1.5], [-0.5, 1.0]])
    assert float(lsgan(prediction, True)) == pytest.approx(np.mean((prediction.numpy() - 1) ** 2))
    assert float(lsgan(prediction, False)) == pytest.approx(np.mean(prediction.numpy() ** 2))
    assert lsgan(prediction.bfloat16(), True).dtype == torch.float32
