"""Feature-distribution metrics: FID, KID and PHV, from precomputed features.

Features in, float64 math, no networks here (conventions below; README.md, "Evaluation"):

* FID: 2048-d FID-Inception pool features of all test images; :func:`frechet_distance`
  is pytorch-fid's ``calculate_frechet_distance`` (sample covariances, ``N - 1``).
* KID: Inception-v3 pool features; :func:`kernel_inception_distance` is the
  unbiased MMD^2 with the cubic polynomial kernel over random subsets, as in
  Binkowski et al. (2018) / torch-fidelity. Tables report KID x 1000: use
  :func:`kid_x1000` or multiply both returned numbers by 1000.
* PHV: per layer, features are spatial means per channel ``(N, C)``; image
  ``i`` of the fake set is paired with image ``i`` of the real set.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import linalg

__all__ = ["frechet_distance", "kernel_inception_distance", "kid_x1000", "phv", "phv_per_layer"]


def _features(x: np.ndarray, name: str, min_rows: int = 1) -> np.ndarray:
    """Validate an ``(N, D)`` real, finite feature array; return it as float64."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ValueError(f"{name} must be real numbers, got dtype {x.dtype}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _pair(feats_a: np.ndarray, feats_b: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _features(feats_a, "feats_a", 2), _features(feats_b, "feats_b", 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name}: feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return a, b


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID).

    ``||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr(sqrtm(S_a S_b))`` with
    ``S`` the sample covariance (``np.cov``, ``N - 1``). As in pytorch-fid: if
    ``sqrtm`` is not finite, ``eps * I`` is added to both covariances; an
    imaginary part (numerical noise) is dropped if its diagonal is below
    ``1e-3`` in absolute value, otherwise a ValueError is raised.

    Parameters
    ----------
    feats_a, feats_b : numpy.ndarray
        ``(N_a, D)`` and ``(N_b, D)`` features, ``N >= 2``; any real dtype
        (computed in float64).
    eps : float
        Diagonal offset used only when ``sqrtm`` fails.

    Returns
    -------
    float
        The distance (lower is better); about 0 for identical sets (it can be
        a tiny negative number from rounding).
    """
    a, b = _pair(feats_a, feats_b, "frechet_distance")
    s_a, s_b = (np.atleast_2d(np.cov(x, rowvar=False)) for x in (a, b))
    covmean = linalg.sqrtm(s_a @ s_b)
    if not np.all(np.isfinite(covmean)):
        offset = np.eye(s_a.shape[0]) * eps
        covmean = linalg.sqrtm((s_a + offset) @ (s_b + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary component: {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    diff = a.mean(axis=0) - b.mean(axis=0)
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape
    k_xx, k_yy, k_xy = ((u @ v.T / d + 1.0) ** 3 for u, v in ((x, x), (y, y), (x, y)))
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 100, subset_size: int | None = None, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2, cubic polynomial kernel.

    ``k(x, y) = (x . y / D + 1)^3``. For each of ``subsets`` rounds,
    ``subset_size`` rows are drawn without replacement from each set
    (``numpy.random.default_rng(seed)``, first ``a`` then ``b``) and the
    unbiased estimate ``[sum_{i!=j} k(x_i,x_j) + sum_{i!=j} k(y_i,y_j)] /
    (m(m-1)) - 2 sum_{i,j} k(x_i,y_j) / m^2`` is taken.

    Parameters
    ----------
    feats_a, feats_b : numpy.ndarray
        ``(N_a, D)`` and ``(N_b, D)`` features; computed in float64.
    subsets : int
        Number of random subsets (>= 1).
    subset_size : int or None
        Rows per subset, ``2 <= m <= min(N_a, N_b)``; default
        ``min(N_a, N_b, 100)``.
    seed : int
        Seed of the subset draws (results are deterministic given it).

    Returns
    -------
    mean, std : float
        Mean and population standard deviation (``ddof=0``) of the estimates
        over subsets, in raw units: multiply by 1000 (or use
        :func:`kid_x1000`) for the published tables. The estimator is
        unbiased, so the mean can be slightly negative for equal
        distributions.
    """
    a, b = _pair(feats_a, feats_b, "kernel_inception_distance")
    if int(subsets) < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    n_max = min(a.shape[0], b.shape[0])
    m = min(n_max, 100) if subset_size is None else int(subset_size)
    if not (2 <= m <= n_max):
        raise ValueError(f"subset_size must be in [2, min(N_a, N_b) = {n_max}], got {subset_size}")
    rng = np.random.default_rng(seed)
    values = np.empty(int(subsets), dtype=np.float64)
    for k in range(int(subsets)):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        values[k] = _mmd2_unbiased(x, y)
    return float(values.mean()), float(values.std())


def kid_x1000(feats_a: np.ndarray, feats_b: np.ndarray, **kwargs) -> tuple[float, float]:
    """:func:`kernel_inception_distance` with mean and std scaled by 1000 (table units)."""
    return tuple(1000.0 * v for v in kernel_inception_distance(feats_a, feats_b, **kwargs))


def phv(feats_fake: np.ndarray, feats_real: np.ndarray, threshold: float = 0.01) -> float:
    """Perceptual hash value of one layer (lower is better).

    Fake image ``i`` is paired with real image ``i``. For each pair, the
    fraction of channels with ``|fake[i, c] - real[i, c]| > threshold``
    (strictly greater) is taken; PHV is the mean of that fraction over the
    ``N`` pairs.

    Parameters
    ----------
    feats_fake, feats_real : numpy.ndarray
        ``(N, C)`` spatial means per channel of one layer's feature maps, in
        the same image order.
    threshold : float
        ``T`` (0.01 in the published tables), >= 0.

    Returns
    -------
    float
        PHV in ``[0, 1]``.
    """
    f, r = _features(feats_fake, "feats_fake"), _features(feats_real, "feats_real")
    if f.shape != r.shape:
        raise ValueError(f"phv: fake and real features must pair up, got shapes {f.shape} vs {r.shape}")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    return float(np.mean(np.mean(np.abs(f - r) > threshold, axis=1)))


def phv_per_layer(
    layer_feats: Mapping[str, tuple[np.ndarray, np.ndarray]], threshold: float = 0.01
) -> tuple[dict[str, float], float]:
    """PHV of several layers (e.g. ResNet-50 layer1..4) and their mean.

    Parameters
    ----------
    layer_feats : Mapping[str, tuple of numpy.ndarray]
        ``layer -> (fake, real)``, each ``(N, C_layer)`` as in :func:`phv`.
    threshold : float
        ``T`` for every layer.

    Returns
    -------
    per_layer : dict[str, float]
        PHV of each layer, in the mapping's order.
    mean : float
        Unweighted mean of the per-layer values.
    """
    if not layer_feats:
        raise ValueError("phv_per_layer: no layers given")
    per_layer = {}
    for layer, pair in layer_feats.items():
        if len(pair) != 2:
            raise ValueError(f"phv_per_layer: layer {layer!r} must map to (fake, real)")
        per_layer[layer] = phv(*pair, threshold=threshold)
    return per_layer, float(np.mean(list(per_layer.values())))
