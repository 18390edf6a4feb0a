"""Synthetic paired H&E / consecutive-section IHC tiles with exact ground truth.

Each pair is one random tissue (white background, holes, stroma, nuclei) on
a canvas a little larger than the tile. The H&E is the central crop; the
IHC is the same tissue (with a few nuclei dropped, added or moved, as in a
section 3-5 um away) seen through a known transform ``T`` and stained with
hematoxylin counterstain plus DAB on a random positive region.

Units and conventions
---------------------
- Pixel ``(row r, column c)`` is the point ``(x, y) = (c, r)``; points are
  stored as (N, 2) float32 ``(x, y)`` in px.
- Transform: a point ``p`` of the H&E frame appears at ``T(p)`` in the IHC
  frame, ``q = R (p - c) + c + (dx, dy)``, ``T(p) = q + e(q)``, with ``R`` a
  rotation by ``rotation`` degrees about the tile centre
  ``c = ((size-1)/2, (size-1)/2)`` in OpenCV's sense (positive =
  counter-clockwise on screen) and ``e`` a smooth elastic field whose largest
  magnitude on the tile is ``elastic_amplitude`` px (Gaussian RBF on a 6x6
  knot grid, stored in the truth so :func:`transform_points` is exact).
- Rendering is Beer-Lambert with decadic optical density:
  ``I = white * 10**(-sum_s c_s v_s)``, ``v_s`` unit-norm rows of
  :data:`atst_prep.stain.RGB_FROM_HED` (hematoxylin, eosin, DAB) jittered per
  slide, ``c_s`` in OD units, ``white`` ~236-252 of 255; then gamma, noise,
  uint8 and a JPEG round trip (OpenCV codec).
- Lengths of tissue features (nucleus radius, blob sizes) are px at the
  MIST 1024-px tile resolution times ``SynthConfig.scale``; ``size`` only
  sets how much is shown. Shifts and elastic amplitudes are output px.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from . import _synth_render as R
from .errors import UserError
from .synth_config import _MARKER_PATTERN, SynthConfig

__all__ = ["SynthConfig", "SynthPair", "render_pair", "write_dataset", "load_truth", "pair_seed", "transform_points",
           "is_synthetic"]

log = logging.getLogger(__name__)

_SPLITS = {"train": 0, "val": 1}
_MASK_KEYS = ("positive_mask_ihc", "positive_mask_he")


@dataclass
class SynthPair:
    """One rendered pair.

    Attributes
    ----------
    he : (H, W, 3) uint8 RGB, H&E frame (after the JPEG round trip).
    ihc : (H, W, 3) uint8 RGB, IHC frame (after the JPEG round trip).
    truth : ground truth, keys documented in :func:`render_pair`.
    he_jpeg, ihc_jpeg : the JPEG files whose OpenCV decoding gives ``he``/``ihc``.
    """

    he: np.ndarray
    ihc: np.ndarray
    truth: dict
    he_jpeg: bytes = field(default=b"", repr=False)
    ihc_jpeg: bytes = field(default=b"", repr=False)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def pair_seed(seed: int, split: str, index: int) -> int:
    """Seed of pair ``index`` of ``split`` ("train" or "val") in :func:`write_dataset`."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
    state = np.random.SeedSequence([_check_seed(seed), _SPLITS[split], _check_seed(index)])
    return int(state.generate_state(1, np.uint64)[0])


def transform_points(truth: dict, xy: np.ndarray, *, inverse: bool = False) -> np.ndarray:
    """Apply the pair's true transform ``T`` (H&E -> IHC frame) or its inverse.

    ``xy`` (N, 2) points (x, y) in px; returns (N, 2) float64. The inverse is a
    fixed-point iteration, accurate to ~1e-6 px.
    """
    args = (truth["size"], truth["shift"], truth["rotation"], truth["elastic_coeffs"], truth["elastic_knots"])
    pts = np.asarray(xy, float).reshape(-1, 2)
    return R.inverse_points(pts, *args) if inverse else R.forward_points(pts, *args)


def render_pair(config: SynthConfig, seed: int, *, shift=None, rotation=None) -> SynthPair:
    """Render one H&E / IHC pair, deterministic for a given ``(config, seed)``.

    Parameters
    ----------
    config : SynthConfig
    seed : non-negative int.
    shift : optional (dx, dy) px overriding the random translation.
    rotation : optional degrees overriding the random rotation. Overrides
        within the configured maxima leave everything else unchanged.

    Returns
    -------
    SynthPair
        ``truth`` keys: "positive_mask_he", "positive_mask_ihc" (H, W) bool;
        "centroids_he", "centroids_ihc", "positive_centroids_he",
        "positive_centroids_ihc" (N, 2) float32 (x, y) px of the nuclei
        (centres of the drawn ellipses) in the tile; "nucleus_labels_ihc"
        (H, W) uint16 instance labels in the IHC frame (label k = row k-1 of
        "centroids_ihc"; cut nuclei centred outside the tile follow);
        "nucleus_positive_ihc" (N_ihc,) bool; "nucleus_match" (N_ihc,)
        int32, row of "centroids_he" each IHC nucleus comes from (-1: new in
        the IHC section or outside the H&E tile); "shift" (dx, dy), "rotation"
        (deg), "elastic_amplitude" (px), "elastic_coeffs" (2, 6, 6),
        "elastic_knots" (6,): the transform (module docstring); "pattern";
        "stain_vectors_he", "stain_vectors_ihc" (3, 3) unit rows H, E, DAB;
        "jpeg_quality" (he, ihc); "positive_fraction" (of the H&E tissue);
        "size"; "seed".
    """
    cfg, seed = config, _check_seed(seed)
    r_geo, r_tis, r_nuc, r_ihc, r_scan_he, r_scan_ihc = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6))
    s, sc = cfg.size, cfg.scale
    dxdy = r_geo.uniform(-cfg.max_shift, cfg.max_shift, 2)
    rot = float(r_geo.uniform(-cfg.max_rotation, cfg.max_rotation))
    coeffs, knots = R.elastic_coefficients(r_geo, s, cfg.elastic_amplitude)
    if shift is not None:
        dxdy = np.asarray(shift, float)
        if dxdy.shape != (2,) or not np.all(np.abs(dxdy) <= s / 2):
            raise ValueError(f"shift must be a (dx, dy) pair of px within +-size/2, got {shift!r}")
    if rotation is not None:
        if isinstance(rotation, bool) or not isinstance(rotation, numbers.Real) or not abs(rotation) <= 45:
            raise ValueError(f"rotation must be a number of degrees in [-45, 45], got {rotation!r}")
        rot = float(rotation)
    # Canvas margin: everything the IHC frame can see of the source tissue.
    reach = max(cfg.max_shift, *np.abs(dxdy)) * math.sqrt(2) + s * math.radians(max(cfg.max_rotation, abs(rot)))
    pad = int(math.ceil(reach + cfg.elastic_amplitude + 3 * cfg.nucleus_radius[1] * sc + 8))
    n = s + 2 * pad
    crop = (slice(pad, pad + s), slice(pad, pad + s))

    negative = r_tis.random() < cfg.negative_pair_rate
    fraction = 0.0 if negative else r_tis.uniform(*cfg.positive_fraction)
    tissue, cellular, region, fine = R.tissue_maps(r_tis, n, sc, r_tis.uniform(*cfg.tissue_fraction), fraction)
    dens = cv2.GaussianBlur(tissue.astype(np.float32), (0, 0), 1.0)  # soft tissue edge
    chromatin = np.clip(0.85 + 0.12 * fine, 0.5, 1.2)

    # H&E section.
    nuc = R.place_nuclei(r_nuc, cfg, tissue, cellular, region)
    lab = R.draw_ellipses((n, n), nuc["xy"], nuc["axes"], nuc["angle"])
    in_nuc = lab > 0
    fibres = R.fibre_noise(r_nuc, (n, n), 10 * sc)
    e_level, e_cyto = r_nuc.uniform(0.22, 0.4), r_nuc.uniform(0.15, 0.28)
    eosin = dens * (e_level * (1 - cellular) * np.clip(0.75 + 0.25 * fibres, 0.3, 1.3) + e_cyto * cellular * (0.9 + 0.1 * fine))
    eosin = np.where(in_nuc, 0.25 * eosin, eosin)
    hema = 0.06 * dens * (1 + 0.3 * fibres) + np.concatenate([[0.0], nuc["density"]]).astype(np.float32)[lab] * chromatin
    he_conc = np.stack([hema[crop], eosin[crop], np.zeros((s, s), np.float32)], -1).astype(np.float32)

    # IHC section: counterstain + DAB, built in the H&E frame then warped.
    ihn = R.consecutive_nuclei(r_ihc, cfg, nuc, tissue, region)
    lab_i = R.draw_ellipses((n, n), ihn["xy"], ihn["axes"], ihn["angle"])
    level = r_ihc.uniform(0.7, 1.4) if cfg.pattern == "membranous" else r_ihc.uniform(0.3, 0.65)
    counter = np.concatenate([[0.0], r_ihc.uniform(0.35, 0.6, len(ihn["xy"]))]).astype(np.float32)
    dab_lut = np.zeros(len(ihn["xy"]) + 1, np.float32)
    if cfg.pattern == "nuclear":
        dab_lut[1:] = np.where(ihn["positive"], level * r_ihc.uniform(0.7, 1.3, len(ihn["xy"])), 0.0)
        counter[1:] *= np.where(ihn["positive"], 0.4, 1.0)  # DAB masks the counterstain
        dab = dab_lut[lab_i] * chromatin
    else:
        membrane, cyto = R.cell_membranes(lab_i, ihn["xy"], ihn["positive"], tissue, 3.2 * np.mean(cfg.nucleus_radius) * sc)
        dab = level * (membrane * (0.85 + 0.15 * fine) + 0.1 * cyto)
    if negative:  # belt and braces: a negative pair carries no DAB at all
        dab = np.zeros_like(dab)
    hema_i = 0.05 * dens * (1 + 0.2 * fibres) + counter[lab_i] * chromatin
    map_x, map_y = R.inverse_maps(s, dxdy, rot, coeffs, knots)
    map_x += pad
    map_y += pad
    ihc_conc = np.stack([cv2.remap(np.ascontiguousarray(a, np.float32), map_x, map_y, cv2.INTER_LINEAR)
                         for a in (hema_i, np.zeros_like(dens), dab)], -1)
    mask_ihc = cv2.remap(region.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST) > 0

    # Scanning.
    v_he, v_ihc = R.perturb_stains(r_scan_he, cfg.stain_jitter), R.perturb_stains(r_scan_ihc, cfg.stain_jitter)
    q_he, q_ihc = (int(r.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)) for r in (r_scan_he, r_scan_ihc))
    he_bytes, he = R.jpeg_roundtrip(R.scan(r_scan_he, he_conc, v_he), q_he)
    ihc_bytes, ihc = R.jpeg_roundtrip(R.scan(r_scan_ihc, ihc_conc, v_ihc), q_ihc)

    # Truth: H&E-visible nuclei, and IHC nuclei mapped through T.
    he_xy = nuc["xy"] - pad
    he_vis = R.in_tile(he_xy, s)
    he_row = np.full(len(he_xy), -1, np.int32)
    he_row[he_vis] = np.arange(int(he_vis.sum()))
    ihc_xy = R.forward_points(ihn["xy"] - pad, s, dxdy, rot, coeffs, knots)
    ihc_vis = R.in_tile(ihc_xy, s)
    src = ihn["source"][ihc_vis]
    match = np.where(src >= 0, he_row[np.maximum(src, 0)], -1).astype(np.int32)
    labels_ihc = _tile_labels(lab_i, ihc_vis, map_x, map_y)
    truth = {
        "positive_mask_ihc": mask_ihc,
        "positive_mask_he": region[crop].copy(),
        "positive_centroids_ihc": ihc_xy[ihc_vis & ihn["positive"]].astype(np.float32),
        "positive_centroids_he": he_xy[he_vis & nuc["positive"]].astype(np.float32),
        "centroids_ihc": ihc_xy[ihc_vis].astype(np.float32),
        "centroids_he": he_xy[he_vis].astype(np.float32),
        "nucleus_match": match,
        "nucleus_labels_ihc": labels_ihc,
        "nucleus_positive_ihc": ihn["positive"][ihc_vis].copy(),
        "shift": (float(dxdy[0]), float(dxdy[1])),
        "rotation": rot,
        "elastic_amplitude": float(cfg.elastic_amplitude),
        "elastic_coeffs": coeffs,
        "elastic_knots": knots,
        "pattern": cfg.pattern,
        "stain_vectors_he": v_he,
        "stain_vectors_ihc": v_ihc,
        "jpeg_quality": (q_he, q_ihc),
        "positive_fraction": float(region[crop].sum() / max(int(tissue[crop].sum()), 1)),
        "size": s,
        "seed": seed,
    }
    return SynthPair(he=he, ihc=ihc, truth=truth, he_jpeg=he_bytes, ihc_jpeg=ihc_bytes)


def _tile_labels(canvas_labels: np.ndarray, visible: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Instance labels of the IHC nuclei in the IHC frame, (H, W) uint16.

    Label ``k`` (1-based) is row ``k - 1`` of ``centroids_ihc`` for nuclei whose
    centre lies in the tile; nuclei cut by the tile edge whose centre lies
    outside get the labels after those; 0 is background.
    """
    order = np.concatenate([np.flatnonzero(visible), np.flatnonzero(~visible)])
    relabel = np.zeros(len(visible) + 1, np.float32)
    relabel[order + 1] = np.arange(1, len(order) + 1)
    warped = cv2.remap(relabel[canvas_labels], map_x, map_y, cv2.INTER_NEAREST)
    return warped.astype(np.uint16)


class _NpzWriter:
    """Streams arrays into an ``.npz`` with fixed zip timestamps (byte-reproducible)."""

    def __init__(self, path: Path):
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)

    def add(self, key: str, array: np.ndarray) -> None:
        info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
        with self._zip.open(info, "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)

    def close(self) -> None:
        self._zip.close()


def _truth_arrays(truth: dict) -> dict[str, np.ndarray]:
    out = {}
    for key, value in truth.items():
        if key in _MASK_KEYS:
            out[key] = np.packbits(value.ravel())
        elif isinstance(value, str):
            out[key] = np.array(value)
        else:
            out[key] = np.asarray(value)
    return out


def write_dataset(out: Path, *, n_train: int, n_val: int, config: SynthConfig = SynthConfig(),
                  marker: str = "HER2", seed: int = 0, progress: Callable[[int], None] | None = None) -> Path:
    """Write a MIST-like tree of synthetic pairs and their ground truth.

    Layout: ``out/MIST/<marker>/TrainValAB/{trainA,trainB,valA,valB}/<name>.jpg``
    (A = H&E, B = IHC, same name per pair; names ``synth_00000`` ... numbered
    across train then val) and ``out/MIST/<marker>/truth_{train,val}.npz``.
    Pair ``i`` of a split uses ``render_pair(config, pair_seed(seed, split, i))``;
    the same arguments give byte-identical files.

    The truth files are plain ``.npz`` (no pickle): for each pair, entries
    ``"<name>/<key>"`` for every key of the truth dict, masks bit-packed
    (``np.packbits`` of the raveled (size, size) mask), strings as 0-d
    unicode arrays, tuples as 1-d arrays. Read them with :func:`load_truth`.

    ``progress(n)`` is called with the number of pairs written so far.
    Returns the MIST root folder ``out/MIST/<marker>``.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise UserError(f"{name} must be a non-negative integer, got {value!r}")
    if not isinstance(marker, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", marker):
        raise ValueError(f"marker must be a folder name of letters, digits, '_' or '-', got {marker!r}")
    if not isinstance(config, SynthConfig):
        raise ValueError(f"config must be a SynthConfig, got {type(config).__name__}")
    expected = _MARKER_PATTERN.get(marker.upper())
    if expected and expected != config.pattern:
        log.warning("marker %s usually stains %s, but config.pattern is %s", marker, expected, config.pattern)
    root = Path(out) / "MIST" / marker
    done = 0
    for split, count in (("train", n_train), ("val", n_val)):
        folder_a, folder_b = root / "TrainValAB" / f"{split}A", root / "TrainValAB" / f"{split}B"
        folder_a.mkdir(parents=True, exist_ok=True)
        folder_b.mkdir(parents=True, exist_ok=True)
        writer = _NpzWriter(root / f"truth_{split}.npz")
        try:
            for i in range(count):
                name = f"synth_{done:05d}"
                pair = render_pair(config, pair_seed(seed, split, i))
                (folder_a / f"{name}.jpg").write_bytes(pair.he_jpeg)
                (folder_b / f"{name}.jpg").write_bytes(pair.ihc_jpeg)
                for key, array in _truth_arrays(pair.truth).items():
                    writer.add(f"{name}/{key}", array)
                done += 1
                if progress is not None:
                    progress(done)
        finally:
            writer.close()
    return root


def is_synthetic(marker_root: Path) -> bool:
    """True for a MIST-like marker folder written by :func:`write_dataset` (it holds truth files)."""
    return any(Path(marker_root).glob("truth_*.npz"))


def load_truth(path: Path) -> dict[str, dict]:
    """Read a ``truth_<split>.npz`` written by :func:`write_dataset`; returns name -> truth dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such truth file")
    raw: dict[str, dict] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            name, _, item = key.rpartition("/")
            if not name:
                raise ValueError(f"{path}: entry {key!r} is not '<name>/<key>'; not a synth truth file")
            raw.setdefault(name, {})[item] = data[key]
    out = {}
    for name, t in raw.items():
        try:
            size = int(t["size"])
            truth = dict(t)
            for key in _MASK_KEYS:
                truth[key] = np.unpackbits(t[key], count=size * size).astype(bool).reshape(size, size)
            truth["shift"] = tuple(float(v) for v in t["shift"])
            truth["jpeg_quality"] = tuple(int(v) for v in t["jpeg_quality"])
            for key in ("rotation", "elastic_amplitude", "positive_fraction"):
                truth[key] = float(t[key])
            truth["size"], truth["seed"], truth["pattern"] = size, int(t["seed"]), str(t["pattern"])
        except KeyError as err:
            raise ValueError(f"{path}: pair {name!r} lacks truth entry {err}") from None
        out[name] = truth
    return out
