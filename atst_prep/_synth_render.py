"""Pixel and geometry helpers of the synthetic pair generator (numpy + OpenCV).

Conventions shared with :mod:`atst_prep.synth`: images are channels-last,
pixel ``(row r, column c)`` has its centre at the point ``(x, y) = (c, r)``;
optical density (OD) is decadic, ``I = white * 10**(-OD)``; concentrations
are in OD units per unit-norm stain vector.
"""

from __future__ import annotations

import cv2
import numpy as np

from .align.score import rotation_matrix  # 2x2, OpenCV's convention: positive = counter-clockwise on screen, y down
from .stain import RGB_FROM_HED

_LN10 = float(np.log(10.0))
#: Number of elastic control knots per axis (Gaussian RBF, one field per tile).
ELASTIC_KNOTS = 6


# --------------------------------------------------------------------- fields
def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], length: float) -> np.ndarray:
    """Gaussian random field with feature size ~``length`` px, zero mean, unit std.

    Drawn at a coarse resolution and upsampled, so cost does not grow with
    ``length``. Returns (H, W) float32.
    """
    h, w = shape
    f = length / 4.0
    if f <= 1.0:
        field = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), max(length / 4.0, 0.5))
    else:
        sh, sw = int(h / f) + 3, int(w / f) + 3
        coarse = cv2.GaussianBlur(rng.standard_normal((sh, sw), dtype=np.float32), (0, 0), 1.0)
        big = cv2.resize(coarse, (int(round(sw * f)), int(round(sh * f))), interpolation=cv2.INTER_CUBIC)
        field = big[:h, :w]
    field = field - field.mean()
    return (field / max(float(field.std()), 1e-6)).astype(np.float32)


def fibre_noise(rng: np.random.Generator, shape: tuple[int, int], length: float) -> np.ndarray:
    """Anisotropic field (stroma fibres) along one random direction; (H, W) float32, unit std."""
    h, w = shape
    side = int(np.ceil(np.hypot(h, w))) + 2
    streaks = cv2.GaussianBlur(rng.standard_normal((side, side), dtype=np.float32), (0, 0),
                               sigmaX=length, sigmaY=max(length / 5.0, 0.6))
    rot = cv2.getRotationMatrix2D((side / 2.0, side / 2.0), float(rng.uniform(0, 180)), 1.0)
    rot[:, 2] -= [(side - w) / 2.0, (side - h) / 2.0]
    field = cv2.warpAffine(streaks, rot, (w, h), flags=cv2.INTER_LINEAR)
    # Wavy fibres: bend the straight streaks with a smooth displacement.
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    bend = 1.5 * length
    field = cv2.remap(field, gx + bend * smooth_noise(rng, (h, w), 12 * length),
                      gy + bend * smooth_noise(rng, (h, w), 12 * length), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    field = field - field.mean()
    return (field / max(float(field.std()), 1e-6)).astype(np.float32)


def fraction_threshold(field: np.ndarray, where: np.ndarray, fraction: float) -> float:
    """Threshold so that ``field > t`` covers ``fraction`` of the ``where`` pixels.

    Estimated on a 1-in-16 pixel subsample (cheap, deterministic).
    """
    sample = field[::4, ::4][where[::4, ::4]]
    if fraction <= 0.0 or sample.size == 0:
        return float("inf")
    if fraction >= 1.0:
        return -float("inf")
    return float(np.quantile(sample, 1.0 - fraction))


def tissue_maps(rng: np.random.Generator, n: int, scale: float, tissue_fraction: float,
                positive_fraction: float) -> tuple[np.ndarray, ...]:
    """Random tissue layout on an (n, n) canvas; lengths in px at ``scale`` 1.

    Returns ``tissue`` (bool: tissue minus lumina/fat holes, ragged edges),
    ``cellular`` (float32 in [0, 1], tumour cellularity), ``region`` (bool,
    biomarker-positive tissue covering ``positive_fraction`` of the tissue)
    and ``fine`` (float32, unit-std texture at ~3 px).
    """
    field = smooth_noise(rng, (n, n), 180 * scale) + 0.12 * smooth_noise(rng, (n, n), 8 * scale)
    tissue = field > fraction_threshold(field, np.ones((n, n), bool), tissue_fraction)
    tissue &= smooth_noise(rng, (n, n), 40 * scale) < rng.uniform(1.8, 2.8)  # lumina / fat holes
    cellular = 1.0 / (1.0 + np.exp(-2.0 * (smooth_noise(rng, (n, n), 140 * scale) + rng.uniform(-0.5, 1.0))))
    blobs = smooth_noise(rng, (n, n), 120 * scale)
    region = tissue & (blobs > fraction_threshold(blobs, tissue, positive_fraction))
    return tissue, cellular.astype(np.float32), region, smooth_noise(rng, (n, n), 3 * scale)


def draw_ellipses(shape: tuple[int, int], xy: np.ndarray, axes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Label image of filled ellipses: pixel value ``i + 1`` for ellipse ``i``, 0 elsewhere.

    ``xy`` (N, 2) centres and ``axes`` (N, 2) semi-axes in px (sub-pixel
    accurate, 4 fractional bits), ``angles`` (N,) degrees. Later ellipses
    overwrite earlier ones. Returns (H, W) int32.
    """
    labels = np.zeros(shape, np.int32)
    centres = np.round(np.asarray(xy) * 16.0).astype(np.int64).tolist()
    semi = np.maximum(np.round(np.asarray(axes) * 16.0), 16).astype(np.int64).tolist()
    for i, (c, a, ang) in enumerate(zip(centres, semi, np.asarray(angles, float).tolist())):
        cv2.ellipse(labels, c, a, ang, 0, 360, i + 1, -1, cv2.LINE_8, 4)
    return labels


def cell_membranes(labels: np.ndarray, xy: np.ndarray, positive: np.ndarray,
                   tissue: np.ndarray, cell_radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Membranes and cytoplasm of the positive cells (Voronoi cells of the nucleus centres).

    Parameters
    ----------
    labels : (H, W) int32 nucleus labels, 0 outside nuclei (membranes avoid nuclei).
    xy : (N, 2) nucleus centres, px. positive : (N,) bool.
    tissue : (H, W) bool. cell_radius : largest centre-to-membrane distance, px.

    Returns
    -------
    membrane : (H, W) float32 in [0, 1], 2-3 px wide lines on positive cells.
    cytoplasm : (H, W) bool, cytoplasm of positive cells.
    """
    h, w = labels.shape
    seeds = np.ones((h, w), np.uint8)
    ij = np.clip(np.round(xy).astype(np.int64), 0, [w - 1, h - 1])
    seeds[ij[:, 1], ij[:, 0]] = 0
    # One seed pixel per nucleus, so touching nuclei still get their own cells.
    dist, comp = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_CCOMP)
    pos_comp = np.zeros(int(comp.max()) + 1, bool)
    np.logical_or.at(pos_comp, comp[ij[:, 1], ij[:, 0]], positive)
    border = np.zeros((h, w), bool)
    dx = comp[:, 1:] != comp[:, :-1]
    dy = comp[1:, :] != comp[:-1, :]
    border[:, 1:] |= dx
    border[:, :-1] |= dx
    border[1:, :] |= dy
    border[:-1, :] |= dy
    cell = (dist < cell_radius) & (labels == 0) & tissue & pos_comp[comp]
    outline = dist >= cell_radius - 1.5
    membrane = cv2.dilate(((border | outline) & cell).astype(np.uint8), np.ones((2, 2), np.uint8))
    membrane = (membrane.astype(bool) & cell).astype(np.float32)
    return cv2.GaussianBlur(membrane, (0, 0), 0.7), cell


# ---------------------------------------------------------------- nuclei
def place_nuclei(rng, cfg, tissue, cellular, positive_region) -> dict:
    """Nuclei of the H&E section on a jittered grid, denser where ``cellular`` is high.

    ``tissue``, ``positive_region`` (n, n) bool, ``cellular`` (n, n) in [0, 1].
    Returns arrays over the N nuclei: "xy" (N, 2) centres px, "axes" (N, 2)
    semi-axes px, "angle" (N,) degrees, "density" (N,) hematoxylin OD,
    "positive" (N,) bool (centre in the positive region; such nuclei are
    ``1 + cfg.he_cue`` times larger and denser).
    """
    n = tissue.shape[0]
    r_lo, r_hi = (v * cfg.scale for v in cfg.nucleus_radius)
    step = 1.35 * (r_lo + r_hi)
    grid = np.arange(step / 2, n, step)
    xy = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    xy = xy + rng.uniform(-0.4 * step, 0.4 * step, xy.shape)
    ij = np.clip(np.round(xy).astype(int), 0, n - 1)
    c = cellular[ij[:, 1], ij[:, 0]]
    keep = tissue[ij[:, 1], ij[:, 0]] & (rng.random(len(xy)) < 0.1 + 0.75 * c)
    xy, c, ij = xy[keep], c[keep], ij[keep]
    k = len(xy)
    positive = positive_region[ij[:, 1], ij[:, 0]]
    stromal = rng.random(k) > c  # stromal nuclei: slim fibroblast-like
    radius = rng.uniform(r_lo, r_hi, k) * np.where(stromal, 0.8, 1.0)
    aspect = np.where(stromal, rng.uniform(0.25, 0.5, k), rng.uniform(0.55, 0.95, k))
    cue = np.where(positive, 1.0 + cfg.he_cue, 1.0)
    radius = radius * cue
    axes = np.stack([radius / np.sqrt(aspect), radius * np.sqrt(aspect)], -1)
    density = rng.uniform(0.55, 0.95, k) * cue
    return dict(xy=xy, axes=axes, angle=rng.uniform(0, 180, k), density=density, positive=positive)


def consecutive_nuclei(rng, cfg, nuc, tissue, positive_region) -> dict:
    """Nuclei of the consecutive (IHC) section, still in H&E-canvas px.

    Some of ``nuc`` are dropped, some moved and resized, some new ones added
    in tissue. Returns "xy", "axes", "angle" as :func:`place_nuclei`, "source"
    (M,) index into ``nuc`` (-1: new) and "positive" (M,) bool.
    """
    k, n = len(nuc["xy"]), tissue.shape[0]
    kept = np.flatnonzero(rng.random(k) >= cfg.nucleus_drop_rate)
    xy, axes, angle = nuc["xy"][kept].copy(), nuc["axes"][kept].copy(), nuc["angle"][kept].copy()
    moved = rng.random(len(kept)) < cfg.nucleus_jitter_rate
    xy[moved] += rng.normal(0.0, cfg.nucleus_jitter_px, (int(moved.sum()), 2))
    axes[moved] *= rng.uniform(0.85, 1.15, (int(moved.sum()), 1))
    n_add = int(round(cfg.nucleus_add_rate * k))
    cand = rng.uniform(0, n - 1, (3 * n_add + 8, 2))
    cand = cand[tissue[np.round(cand[:, 1]).astype(int), np.round(cand[:, 0]).astype(int)]][:n_add]
    if len(cand):
        donor = rng.integers(0, max(k, 1), len(cand))  # new nuclei look like existing ones
        xy, axes = np.concatenate([xy, cand]), np.concatenate([axes, nuc["axes"][donor]])
        angle = np.concatenate([angle, rng.uniform(0, 180, len(cand))])
    source = np.concatenate([kept, np.full(len(cand), -1)])
    ij = np.clip(np.round(xy).astype(int), 0, n - 1)
    return dict(xy=xy, axes=axes, angle=angle, source=source, positive=positive_region[ij[:, 1], ij[:, 0]])


def in_tile(xy: np.ndarray, size: int) -> np.ndarray:
    """(N,) bool: points (N, 2) that fall on a pixel of a ``size`` x ``size`` tile."""
    return np.all((xy >= -0.5) & (xy < size - 0.5), axis=1)


# ---------------------------------------------------------------- colour
def unit_stains() -> np.ndarray:
    """``RGB_FROM_HED`` rows (hematoxylin, eosin, DAB) scaled to unit norm; (3, 3)."""
    return RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)


def perturb_stains(rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Unit stain vectors with i.i.d. N(0, jitter) noise per component, renormalised; (3, 3)."""
    v = unit_stains() + rng.normal(0.0, jitter, (3, 3)) if jitter > 0 else unit_stains()
    v = np.maximum(v, 0.01)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def beer_lambert(conc: np.ndarray, vectors: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Transmitted intensity ``white * 10**(-conc @ vectors)``.

    ``conc`` (H, W, S) decadic OD per stain, ``vectors`` (S, 3) rows,
    ``white`` (3,) in 8-bit units. Returns (H, W, 3) float32, 8-bit units.
    """
    od = conc.reshape(-1, conc.shape[-1]) @ vectors.astype(np.float32)
    out = np.exp(od * np.float32(-_LN10)) * white.astype(np.float32)
    return out.reshape(conc.shape[:2] + (3,))


def scan(rng: np.random.Generator, conc: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Render concentrations with a random scanner (white level, gamma, optics, noise); uint8 RGB."""
    white = rng.uniform(236.0, 252.0) + rng.normal(0.0, 2.0, 3)
    gamma = rng.uniform(0.92, 1.08)
    noise = rng.uniform(0.5, 2.0)
    conc = cv2.GaussianBlur(conc, (0, 0), rng.uniform(0.5, 0.8))  # scanner optics
    rgb = beer_lambert(conc, vectors, np.clip(white, 0, 255))
    rgb = 255.0 * (rgb / 255.0) ** np.float32(gamma)
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(noise)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    """Encode RGB uint8 as JPEG (OpenCV, baseline, 4:2:0); return the bytes and the decoded RGB."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    data = buf.tobytes()
    return data, cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------- geometry
# (rotation_matrix: the aligner's, atst_prep.align.score, so synthetic misalignment and its estimate share it)
def elastic_knots(size: int) -> tuple[np.ndarray, float]:
    """Knot positions (g,) px along each axis of the IHC frame, and the RBF width (px)."""
    knots = np.linspace(-0.25 * size, 1.25 * size, ELASTIC_KNOTS)
    return knots, float(knots[1] - knots[0])


def _rbf(u: np.ndarray, knots: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((np.asarray(u, float)[:, None] - knots[None, :]) / sigma) ** 2)


def elastic_dense(coeffs: np.ndarray, knots: np.ndarray, lo: float, n: int) -> np.ndarray:
    """Displacement field (2, n, n) float32 (dx, dy in px) on the grid ``lo + arange(n)`` per axis."""
    sigma = float(knots[1] - knots[0])
    phi = _rbf(lo + np.arange(n), knots, sigma)
    return np.stack([phi @ c @ phi.T for c in coeffs]).astype(np.float32)


def elastic_coefficients(rng: np.random.Generator, size: int, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """Random smooth field scaled so that its largest displacement on the tile is ``amplitude`` px.

    Returns coefficients (2, g, g) and knots (g,), see :func:`elastic_at`.
    """
    knots, _ = elastic_knots(size)
    coeffs = rng.standard_normal((2, ELASTIC_KNOTS, ELASTIC_KNOTS))
    if amplitude <= 0:
        return np.zeros_like(coeffs), knots
    field = elastic_dense(coeffs, knots, 0.0, size)
    return coeffs * (amplitude / float(np.hypot(field[0], field[1]).max())), knots


def elastic_at(xy: np.ndarray, coeffs: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Elastic displacement (N, 2) px at points ``xy`` (N, 2) of the IHC frame."""
    sigma = float(knots[1] - knots[0])
    px, py = _rbf(xy[:, 0], knots, sigma), _rbf(xy[:, 1], knots, sigma)
    return np.einsum("ni,cij,nj->nc", py, coeffs, px)


def forward_points(xy: np.ndarray, size: int, shift, rotation: float, coeffs, knots) -> np.ndarray:
    """Map H&E-frame points (N, 2) to the IHC frame: rotate about the centre, shift, then elastic."""
    c = (size - 1) / 2.0
    q = (np.asarray(xy, float) - c) @ rotation_matrix(rotation).T + c + np.asarray(shift, float)
    return q + elastic_at(q, coeffs, knots)


def inverse_points(xy: np.ndarray, size: int, shift, rotation: float, coeffs, knots, iterations: int = 12) -> np.ndarray:
    """Inverse of :func:`forward_points` (fixed-point iteration on the elastic part)."""
    y = np.asarray(xy, float)
    q = y.copy()
    for _ in range(iterations):  # contraction: the field's gradient is << 1
        q = y - elastic_at(q, coeffs, knots)
    c = (size - 1) / 2.0
    return (q - c - np.asarray(shift, float)) @ rotation_matrix(rotation) + c


def inverse_maps(size: int, shift, rotation: float, coeffs, knots) -> tuple[np.ndarray, np.ndarray]:
    """For every IHC-frame pixel, its source point in the H&E frame; two (size, size) float32 maps (x, y)."""
    margin = int(np.ceil(np.abs(coeffs).sum(axis=(1, 2)).max())) + 2  # bounds |e| everywhere
    n = size + 2 * margin
    field = elastic_dense(coeffs, knots, -margin, n)
    ex, ey = field[0], field[1]
    gx, gy = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    qx, qy = gx.copy(), gy.copy()
    if np.any(coeffs):
        for _ in range(4):
            mx, my = qx + margin, qy + margin
            dx = cv2.remap(ex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            dy = cv2.remap(ey, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            qx, qy = gx - dx, gy - dy
    c = (size - 1) / 2.0
    r = rotation_matrix(rotation)
    ux, uy = qx - np.float32(c + shift[0]), qy - np.float32(c + shift[1])
    # p = R^T u + c
    map_x = np.float32(r[0, 0]) * ux + np.float32(r[1, 0]) * uy + np.float32(c)
    map_y = np.float32(r[0, 1]) * ux + np.float32(r[1, 1]) * uy + np.float32(c)
    return map_x, map_y
