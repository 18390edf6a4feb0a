"""The shard format: one HDF5 file holding many prepared pairs of one split.

Layout (schema version 3; version 2 had no ``layout`` and was always "raw", and
is still read; version 1 had no ``windows/``)::

    /                       attrs: schema, schema_version, package_version,
                                   dataset_id, split, shard_index, n_samples,
                                   source_root, params (JSON), stores_images,
                                   layout ("compact" or "raw");
                                   nuclei_source_sha256 once count-nuclei has
                                   rewritten it (the checksum of the shard before);
                                   alignment (JSON) and alignment_source_sha256 likewise
                                   once filter-misaligned has
    /names                  (N,) str       pair names, in sample order
    /rejected               (R,) str       one JSON object per rejected input
    /samples/<i:05d>/       attrs: name, he_path, ihc_path (relative to
                                   source_root), meta (JSON), height, width,
                                   tissue_fraction_he, tissue_fraction_ihc,
                                   mask_fraction, dab_mean_in_mask
        he_file, ihc_file   (B,) uint8      compact layout: the source image files' bytes,
                                            as they are, read back with :func:`sample_image`
                                            (with --no-images: dab and hema instead)
        he, ihc             (H, W, 3) uint8 RGB         raw layout (unless opted out)
        dab, hema           (H, W) uint16   raw layout: IHC optical density in rgb2hed
                                            units times 10^4 (attrs scale = 1e-4); in
                                            the compact layout :func:`sample_channels`
                                            unmixes the stored IHC into the same values
        mask                (H, W) uint8    1 = DAB-positive (Eq. 1 on the whole tile)
        windows/            attrs: window (side, px), stride (px)
            origins         (K, 2) int32    (y, x) of each fixed training window
            mask            (K, w, w) uint8 Eq. 1 of each window on its own: the
                                            auxiliary losses' targets (see
                                            atst_prep.mask.window_masks)
        nuclei/             attrs: status = "pending" until a counter fills it, then
                                   status = "done", counter (name), counter_version,
                                   counter_params (JSON), count (N) and, for counters
                                   with a weights file, weights_sha256
            centroids       (N, 2) float32  (x, y) px of each nucleus in the tile
            areas           (N,) int32      px
        alignment/          attrs: status = "pending" until filter-misaligned fills it, then
                                   "done" (or "unscorable"), shift_x, shift_y (px: where
                                   the IHC content sits relative to the H&E), rotation
                                   (deg), similarity, overlap, score, kept, rule, reason,
                                   method, version, params (JSON); see atst_prep.align
        mask_registered     (H, W) uint8    after filter-misaligned --register: mask and
        dab_registered      (H, W) uint16   DAB moved by -shift into the H&E frame (attrs
                                            shift); nuclei/centroids_registered (N, 2)
                                            float32 likewise, once nuclei are counted

Layouts (measured in benchmarks/RESULTS.md, "Prep at scale"). The default,
**compact**, keeps the source files' bytes bit-exact (no second lossy encode)
and does not store the stain densities: they are a deterministic function of
the IHC's pixels, and :func:`sample_channels` recomputes exactly the values the
raw layout stores (tested), so masks, nuclei and every reader's arrays are the
same in both layouts. A 1024x1024 MIST pair costs about the source JPEGs' bytes
plus ~0.1 MB of masks; readers pay one JPEG decode per image (and one unmixing
for the densities). **raw** stores decoded pixels and densities, every array
chunked 256x256 so a 512x512 crop touches at most 9 chunks: ~9 MB per pair,
for the fastest loader. Raw images are uncompressed by default (LZF saves only
~10 % on tissue pixels and costs ~40 ms per image to write and ~6x the read
time; "lzf" and "gzip" are options); densities are fixed-point uint16 (1e-4
steps, finer than one byte step of the input at any intensity; range 0-6.5)
with byte shuffle and LZF: ~1.3 MB per channel on real tissue. Masks are
uint8 with LZF in both layouts.

Nuclei are detected on the stored (fixed-point) densities (:func:`sample_channels`), whether at build
time (``build-masks --counter``) or later (``count-nuclei``), so both give the
same nuclei; the counter's identity is also in the root ``params`` (key
``nuclei``), which is what resuming compares.

Writing: :mod:`atst_prep.shard_writer`. Validation against this layout: :mod:`atst_prep.shard_check`.

Files are written under a temporary name and renamed when complete, so a
shard that exists is whole. Times are not tracked, so the same inputs and
parameters give the same contents (:func:`atst_prep.verify.content_digest`), and in practice
byte-identical files (always in-process and with joblib workers in our tests;
inside Dask workers HDF5 occasionally lays the same contents out differently).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import h5py
import numpy as np

from .errors import UserError

SCHEMA = "atst-shard"
SCHEMA_VERSION = 3
#: Versions this package reads (2: raw layout, before ``layout`` existed).
READABLE_VERSIONS = (2, 3)
LAYOUTS = ("compact", "raw")
#: Where the compact layout keeps each image's source file bytes.
FILE_KEYS = {"he": "he_file", "ihc": "ihc_file"}
CHUNK = 256
IMAGE_KEYS = ("he", "ihc")
CHANNEL_KEYS = ("dab", "hema")
#: Stain densities are stored as round(density / CHANNEL_SCALE) in uint16.
CHANNEL_SCALE = 1e-4
IMAGE_COMPRESSIONS = ("none", "lzf", "gzip")
SAMPLE_ATTRS = ("name", "he_path", "ihc_path", "meta", "height", "width")
NUCLEI_STATUSES = ("pending", "done")
ALIGNMENT_STATUSES = ("pending", "done", "unscorable")
ALIGNMENT_ATTRS = ("shift_x", "shift_y", "rotation", "similarity", "overlap", "score", "kept", "rule", "reason",
                   "method", "version", "params")
#: Datasets filter-misaligned --register adds to a sample, registered from these.
REGISTERED_KEYS = {"mask_registered": "mask", "dab_registered": "dab"}


class ShardError(UserError):
    """A shard that does not follow the schema; ``str()`` names the file."""


@dataclass(frozen=True)
class PreparedPair:
    """Everything prep computes for one pair, ready to be written.

    Arrays are (H, W, 3) uint8 for images, (H, W) float32 for the IHC DAB and
    hematoxylin densities, (H, W) bool for the mask; (K, 2) int32 window
    origins and (K, w, w) bool window masks (Eq. 1 per training window).
    """

    name: str
    he_path: str
    ihc_path: str
    meta: Mapping[str, str]
    he: np.ndarray
    ihc: np.ndarray
    dab: np.ndarray
    hema: np.ndarray
    mask: np.ndarray
    tissue_fraction_he: float
    tissue_fraction_ihc: float
    window: int = 0
    window_stride: int = 0
    window_origins: np.ndarray = None
    window_masks: np.ndarray = None
    he_file: bytes = b""   # the source files' bytes (the compact layout stores them)
    ihc_file: bytes = b""


def encode_density(density: np.ndarray) -> np.ndarray:
    """Optical density (float, >= 0) -> the stored uint16 fixed point."""
    scaled = np.asarray(density, np.float32) * np.float32(1 / CHANNEL_SCALE) + np.float32(0.5)
    return np.clip(scaled, 0, 65535).astype(np.uint16)


def decode_density(stored: np.ndarray) -> np.ndarray:
    """The stored uint16 fixed point -> optical density, float32."""
    return np.asarray(stored, np.float32) * np.float32(CHANNEL_SCALE)


def as_stored(density: np.ndarray) -> np.ndarray:
    """``density`` as a reader of the shard will get it back (rounded to the fixed point)."""
    return decode_density(encode_density(density))


def sha256_of(path: Path, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def read_header(path: Path) -> dict:
    """The root attributes of a shard, with ``params`` decoded; raises ShardError."""
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            rejected = [json.loads(r) for r in f["rejected"].asstr()[()]] if "rejected" in f else []
    except (OSError, KeyError) as exc:
        raise ShardError(f"{path}: not a readable shard ({exc})") from None
    if attrs.get("schema") != SCHEMA:
        raise ShardError(f"{path}: not an ATST shard (schema attribute {attrs.get('schema')!r})")
    if "params" in attrs:
        attrs["params"] = json.loads(attrs["params"])
    attrs.setdefault("layout", "raw")  # schema 2
    attrs["rejected"] = rejected
    return attrs


def check_readable(path: Path | str, version) -> None:
    """Raise a one-line :class:`ShardError` unless this package reads shard schema ``version``."""
    if version not in READABLE_VERSIONS:
        raise ShardError(f"{path}: shard schema version {version}, this atst reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}; rebuild with 'atst prep build-masks --overwrite'")


def sample_image(g: h5py.Group, key: str) -> np.ndarray | None:
    """The sample's ``"he"`` or ``"ihc"`` as (H, W, 3) uint8 RGB, from either layout; None if not stored."""
    if key in g:
        return g[key][()]
    if FILE_KEYS[key] in g:
        from .images import decode_rgb

        return decode_rgb(g[FILE_KEYS[key]][()], f"{g.file.filename}:{g.name}/{FILE_KEYS[key]}")
    return None


def pair_images(g: h5py.Group, root: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """``(he, ihc)`` of a sample: from the shard (either layout), else (``--no-images``) from the source files
    under ``root``; raises :class:`~atst_prep.images.InputError` naming a file that cannot be read."""
    from .images import read_rgb

    he, ihc = sample_image(g, "he"), sample_image(g, "ihc")
    if he is None:
        he = read_rgb(Path(root) / _plain(g.attrs["he_path"]))
    if ihc is None:
        ihc = read_rgb(Path(root) / _plain(g.attrs["ihc_path"]))
    return he, ihc


def sample_channels(g: h5py.Group, ihc: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The IHC's (DAB, hematoxylin) densities, float32, as the raw layout stores them (1e-4 steps); in the
    compact layout unmixed from the stored IHC (or ``ihc``, its pixels if already decoded). None if
    neither densities nor the IHC are stored."""
    if "dab" in g:
        return decode_density(g["dab"][()]), decode_density(g["hema"][()])
    if ihc is None:
        ihc = sample_image(g, "ihc")
    if ihc is None:
        return None
    from .stain import dab_and_hematoxylin

    dab, hema = dab_and_hematoxylin(ihc)
    return as_stored(dab), as_stored(hema)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def iter_samples(path: Path, *, arrays: tuple[str, ...] = ("he", "ihc", "dab", "mask")) -> Iterator[dict]:
    """Yield each sample of a shard as a dict of its attributes and the named arrays.

    Once nuclei are counted, ``centroids`` (N, 2) float32 (x, y) px and
    ``areas`` (N,) int32 are included whatever ``arrays`` says, and so is
    ``centroids_registered`` once registered. ``alignment`` is the dict of the
    sample's alignment attributes. ``arrays`` may name ``mask_registered`` and
    ``dab_registered`` (decoded like ``dab``).
    """
    with h5py.File(path, "r") as f:
        for key in sorted(f["samples"]):
            g = f["samples"][key]
            sample = {k: _plain(v) for k, v in g.attrs.items()}
            sample["meta"] = json.loads(sample.get("meta", "{}"))
            for a in arrays:
                if a in IMAGE_KEYS:
                    image = sample_image(g, a)
                    if image is not None:
                        sample[a] = image
                elif a in CHANNEL_KEYS:
                    channels = sample_channels(g, sample.get("ihc"))
                    if channels is not None:
                        sample[a] = channels[CHANNEL_KEYS.index(a)]
                elif a in g:
                    sample[a] = decode_density(g[a][()]) if a == "dab_registered" else g[a][()]
            if "nuclei" in g and "centroids" in g["nuclei"]:
                sample["centroids"] = g["nuclei/centroids"][()]
                sample["areas"] = g["nuclei/areas"][()]
                if "centroids_registered" in g["nuclei"]:
                    sample["centroids_registered"] = g["nuclei/centroids_registered"][()]
            if "alignment" in g:
                sample["alignment"] = {k: _plain(v) for k, v in g["alignment"].attrs.items()}
            yield sample

