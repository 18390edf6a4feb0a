"""atst_model.metrics against independent float64 implementations of each definition."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from atst_model.metrics import (
    css,
    frechet_distance,
    kernel_inception_distance,
    kid_x1000,
    phv,
    phv_per_layer,
    psnr,
    ssim,
)


@pytest.fixture(scope="module")
def pair(real_ihc):
    """A real IHC crop and a noisy, slightly shifted copy (uint8 RGB)."""
    real = np.ascontiguousarray(real_ihc[:128, :160])
    rng = np.random.default_rng(1)
    noisy = real.astype(np.float64) + rng.normal(0, 12, real.shape)
    fake = np.clip(np.roll(noisy, 1, axis=1), 0, 255).astype(np.uint8)
    return fake, real


# ---------------------------------------------------------------- PSNR / SSIM


def test_psnr_matches_definition(pair):
    fake, real = pair
    mse = np.mean((fake.astype(np.float64) - real.astype(np.float64)) ** 2)
    assert psnr(fake, real) == pytest.approx(10 * np.log10(255.0**2 / mse), rel=1e-12)
    assert psnr(real, real) == float("inf")


def test_ssim_is_per_channel_mean_and_one_for_identical(pair):
    fake, real = pair
    per_channel = [structural_similarity(real[..., c], fake[..., c], data_range=255) for c in range(3)]
    value = ssim(fake, real)
    assert value == pytest.approx(np.mean(per_channel), rel=1e-12)
    assert 0.0 < value < 1.0
    assert ssim(real, real) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("fn", [psnr, ssim, css])
def test_image_metrics_validate(fn, pair):
    fake, real = pair
    with pytest.raises(ValueError, match="uint8"):
        fn(fake.astype(np.float32), real)
    with pytest.raises(ValueError, match="shapes differ"):
        fn(fake[:-1], real)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        fn(fake[..., 0], real[..., 0])
    if fn is not psnr:
        with pytest.raises(ValueError, match="at least"):
            fn(fake[:4, :4], real[:4, :4])


# ---------------------------------------------------------------- CSS


def _css_loop(a: np.ndarray, b: np.ndarray, ws: int = 5) -> float:
    """Direct definition: every valid ws x ws window, population moments, per channel."""
    c2 = (0.03 * 255) ** 2
    h, w, _ = a.shape
    channel_means = []
    for c in range(3):
        vals = []
        for i in range(h - ws + 1):
            for j in range(w - ws + 1):
                x = a[i : i + ws, j : j + ws, c].astype(np.float64).ravel()
                y = b[i : i + ws, j : j + ws, c].astype(np.float64).ravel()
                cov = np.mean((x - x.mean()) * (y - y.mean()))
                vals.append((2 * cov + c2) / (x.var() + y.var() + c2))
        channel_means.append(np.mean(vals))
    return float(np.mean(channel_means))


def test_css_matches_loop_definition():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    assert css(a, b) == pytest.approx(_css_loop(a, b), rel=1e-10)
    assert css(b, a) == pytest.approx(css(a, b), rel=1e-12)


def test_css_identity_and_brightness_invariance(pair):
    fake, real = pair
    assert css(real, real) == pytest.approx(1.0, abs=1e-12)
    dim = (real.astype(int) // 2 + 0).astype(np.uint8)
    shifted = np.clip(dim.astype(int) + 40, 0, 255).astype(np.uint8)  # constant offset, no clipping
    assert css(shifted, dim) == pytest.approx(1.0, abs=1e-12)
    assert 0.0 < css(fake, real) < 1.0


def test_css_matches_sewar_if_installed(pair):
    sewar = pytest.importorskip("sewar.full_ref")
    fake, real = pair
    _, cs = sewar.ssim(real, fake, ws=5)
    assert css(fake, real) == pytest.approx(cs, rel=1e-10)


# ---------------------------------------------------------------- FID


def _fid_reference(a: np.ndarray, b: np.ndarray) -> float:
    """FID via symmetric eigendecompositions: tr sqrt(Sa Sb) = tr sqrt(Sa^1/2 Sb Sa^1/2)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    s_a = ca.T @ ca / (len(a) - 1)
    s_b = cb.T @ cb / (len(b) - 1)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def test_fid_matches_reference_formula():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 24))
    b = rng.normal(0.3, 1.2, size=(250, 24)) @ rng.normal(size=(24, 24)) * 0.3
    expected = _fid_reference(a, b)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a.astype(np.float32), b) == pytest.approx(_fid_reference(a.astype(np.float32).astype(np.float64), b), rel=1e-6)


def test_fid_identical_sets_is_zero():
    a = np.random.default_rng(4).normal(size=(200, 16))
    assert abs(frechet_distance(a, a)) < 1e-6


def test_fid_validates():
    a = np.zeros((10, 4))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(a, np.zeros((10, 5)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        frechet_distance(a.ravel(), a)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((10, 4), np.nan), a)


# ---------------------------------------------------------------- KID


def _kid_reference(a, b, subsets, m, seed):
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        k = lambda u, v: (float(np.dot(u, v)) / d + 1.0) ** 3  # noqa: E731
        sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
        syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
        sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
        vals.append((sxx + syy) / (m * (m - 1)) - 2 * sxy / m**2)
    return float(np.mean(vals)), float(np.std(vals))


def test_kid_matches_reference_formula():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(60, 8))
    b = rng.normal(0.5, 1.0, size=(45, 8))
    mean, std = kernel_inception_distance(a, b, subsets=4, subset_size=20, seed=7)
    ref_mean, ref_std = _kid_reference(a, b, 4, 20, 7)
    assert mean == pytest.approx(ref_mean, rel=1e-6)
    assert std == pytest.approx(ref_std, rel=1e-6)
    assert mean > 0
    assert kid_x1000(a, b, subsets=4, subset_size=20, seed=7) == pytest.approx((1000 * mean, 1000 * std), rel=1e-12)


def test_kid_identical_sets_and_default_subset_size():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(50, 8))
    # default subset_size = min(50, 50, 100) = 50: every subset is the whole set, so no spread.
    mean, std = kernel_inception_distance(a, a, subsets=5)
    assert std < 1e-9 * max(1.0, abs(mean))
    # The same points on both sides are not independent samples: the unbiased estimate is
    # exactly (2/m) * (mean off-diagonal k - mean diagonal k) <= 0, which vanishes as O(1/m).
    k = (a @ a.T / a.shape[1] + 1.0) ** 3
    m = len(a)
    off = (k.sum() - np.trace(k)) / (m * (m - 1))
    assert mean == pytest.approx(2.0 / m * (off - np.trace(k) / m), rel=1e-9)
    # Two independent samples of one distribution: KID ~ 0 next to a real shift.
    a, b = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8))
    same_mean, _ = kernel_inception_distance(a, b)
    shifted_mean, _ = kernel_inception_distance(a, b + 0.5)
    assert abs(same_mean) < 0.05 * shifted_mean


def test_kid_validates():
    a = np.zeros((10, 4))
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(a, a, subset_size=11)
    with pytest.raises(ValueError, match="subsets"):
        kernel_inception_distance(a, a, subsets=0)
    with pytest.raises(ValueError, match="dimensions differ"):
        kernel_inception_distance(a, np.zeros((10, 3)))


# ---------------------------------------------------------------- PHV


def _phv_reference(fake, real, t):
    n, c = fake.shape
    per_image = [sum(1 for k in range(c) if abs(fake[i, k] - real[i, k]) > t) / c for i in range(n)]
    return sum(per_image) / n


def test_phv_matches_definition_and_pairs_by_index():
    rng = np.random.default_rng(8)
    layers = {}
    for name, c in (("layer1", 256), ("layer2", 512), ("layer3", 64), ("layer4", 32)):
        real = rng.uniform(0, 1, (6, c))
        fake = real + rng.normal(0, 0.01, (6, c)) * np.arange(1, 7)[:, None]  # image-dependent error
        layers[name] = (fake, real)
    per_layer, mean = phv_per_layer(layers)
    for name, (fake, real) in layers.items():
        expected = _phv_reference(fake, real, 0.01)
        assert per_layer[name] == pytest.approx(expected, abs=1e-12)
        assert phv(fake, real) == pytest.approx(expected, abs=1e-12)
    assert list(per_layer) == list(layers)
    assert mean == pytest.approx(np.mean(list(per_layer.values())), abs=1e-15)
    fake, real = layers["layer1"]
    assert phv(fake, fake) == 0.0
    assert phv(fake, real[::-1]) != pytest.approx(phv(fake, real))  # pairing is fake i vs real i
    assert phv(fake, real, threshold=0.05) < phv(fake, real, threshold=0.01)


def test_phv_validates():
    with pytest.raises(ValueError, match="pair up"):
        phv(np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="threshold"):
        phv(np.zeros((3, 4)), np.zeros((3, 4)), threshold=-1)
    with pytest.raises(ValueError, match="no layers"):
        phv_per_layer({})
