"""Training pairs from prep's shards: random crops with their auxiliary-loss targets cropped to match.

Training never repeats prep's work: the target mask M of every fixed
training window (Eq. 1 of that window on its own, the same function on the
same extent as the fake's M'), the DAB channel and the nucleus centroids were
computed once by ``atst prep build-masks`` (and ``count-nuclei``); an item
reads one window (at most 9 of the 256x256 chunks for a 512 crop), flips or
rotates it at random (Eq. 1 commutes with the eight symmetries of the square)
and derives the crop's scalar targets from it.

Worker safety: HDF5 handles are opened on first use in the process that
reads (never in ``__init__``, never pickled), and reopened when the process
id changes, so ``DataLoader(num_workers=N)`` with fork or spawn is safe.
"""

from __future__ import annotations

import csv
import ctypes
import os
import sys
import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from atst_prep.errors import UserError
from atst_prep.images import decode_rgb
from atst_prep.nuclei import count_in_mask
from atst_prep.shards import FILE_KEYS, SCHEMA, ShardError
from atst_prep.stain import dab_channel, dab_gray

__all__ = ["ShardPairs", "keep_freed_memory", "read_keep_list", "to_unit", "dihedral", "TRUE_VALUES"]

#: Values of a keep-list's ``kept`` column that mean "kept".
TRUE_VALUES = frozenset({"1", "true", "True"})
#: Decoded images of compact shards each loader process keeps: an item's H&E, IHC and unpaired IHC, for
#: the items its threads have in hand.
DECODED_KEPT = 12

# byte b -> b / 127.5 - 1: images in the generators' tanh range
_TO_UNIT = (np.arange(256, dtype=np.float64) / 127.5 - 1.0).astype(np.float32)


def read_keep_list(path: Path) -> tuple[set[str], set[tuple[str, str]] | None]:
    """Names kept by a keep-list CSV (``data_manifests/keep-<dataset>.csv``).

    Reads the ``name`` and ``kept`` columns (kept in :data:`TRUE_VALUES`);
    other columns are ignored, except ``split``: when present, kept pairs are
    also returned as ``(split, name)`` so equal names in two splits stay apart.

    Returns
    -------
    names : set of str
    split_names : set of (split, name), or None without a ``split`` column.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            missing = [c for c in ("name", "kept") if c not in fields]
            if missing:
                raise UserError(f"{path}: keep-list lacks column(s) {', '.join(missing)} (has {', '.join(fields)})")
            rows = [r for r in reader if (r["kept"] or "").strip() in TRUE_VALUES]
    except OSError as exc:
        raise UserError(f"{path}: cannot read keep-list ({exc.strerror})") from None
    names = {r["name"] for r in rows}
    split_names = {(r["split"], r["name"]) for r in rows} if "split" in fields else None
    return names, split_names


def to_unit(batch: dict, device: str | torch.device | None = None) -> dict:
    """A batch of :class:`ShardPairs` on ``device`` with images in [-1, 1] and the mask float32.

    Converts ``raw=True`` batches (uint8) on the device, where it is cheap:
    images arrive as read, (..., c, c, 3), and leave as (..., 3, c, c) float
    views of the same memory order, i.e. ``channels_last`` for a batch, the
    layout the generators run in. Float batches are only moved. Non-tensor
    entries (``name``) are kept.
    """
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True) if device is not None else value
            if value.dtype == torch.uint8:
                value = value.float() if key == "mask" else value.movedim(-1, -3).float().mul_(1 / 127.5).sub_(1.0)
        out[key] = value
    return out


def keep_freed_memory() -> bool:
    """Let this process reuse freed memory instead of handing it back to the OS (glibc only).

    An item allocates a few MB of short-lived arrays (windows, unmixed DAB).
    By default glibc serves blocks over 128 KB with fresh ``mmap`` pages and
    returns them on ``free``, so every item pays a page fault per 4 KB page:
    measured, 4.8 ms per 512 crop instead of 1.6 ms (``benchmarks/loader.py``).
    Raising the mmap and trim thresholds (the ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` switches, set from inside the process) keeps
    those pages mapped for the next item. Returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 512 << 20))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def _dab_means(ihc: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean DAB density (rgb2hed units) and mean darkness ``1 - dab_gray`` of an IHC crop inside ``mask``.

    The darkness of the DAB-only rendering, in [0, 1), is L4's target: the
    quantity Eq. 1 thresholds (the public code's gray units). Both come from one
    unmixing of the IHC bytes, exactly as prep unmixes them before storing
    (:func:`atst_prep.stain.dab_and_hematoxylin`); the shard's ``dab`` channel
    holds the same densities rounded to 1e-4. Unmixing the bytes already read
    (~1 ms for a 512 crop) is 4x cheaper than decompressing the stored window.
    """
    dab = dab_channel(ihc)
    return cv2.mean(dab, mask=mask)[0], 1.0 - cv2.mean(dab_gray(dab), mask=mask)[0]


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th (0-7) symmetry of the square on the first two axes: ``k & 4`` transposes, then ``k % 4``
    quarter turns; 0 is the identity. Returns a view where numpy can."""
    if k & 4:
        a = a.swapaxes(0, 1)
    return np.rot90(a, k % 4)


class _Decoded:
    """The last ``size`` images decoded from compact shards, each decoded once even when threads ask at once.

    The first caller of a key decodes it; a caller that comes while it
    decodes waits for that result rather than decoding again. A failed
    decode is forgotten, so the next caller tries again (and fails alike).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[int, str], Future] = OrderedDict()

    def get(self, key: tuple[int, str], decode: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            slot = self._items.get(key)
            mine = slot is None
            if mine:
                slot = self._items[key] = Future()
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            else:
                self._items.move_to_end(key)
        if mine:
            try:
                slot.set_result(decode())
            except BaseException as exc:
                slot.set_exception(exc)
                with self._lock:
                    if self._items.get(key) is slot:
                        del self._items[key]
        return slot.result()


def _index_shard(path: str, crop: int) -> tuple[str, list[tuple[str, str, int, int, np.ndarray]]]:
    """(split, [(sample key, name, height, width, window origins), ...]) of one shard; checks what training needs."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ShardError(f"{path}: not a readable shard ({exc})") from None
    with f:
        if f.attrs.get("schema") != SCHEMA:
            raise ShardError(f"{path}: not an ATST shard (schema attribute {f.attrs.get('schema')!r})")
        if not bool(f.attrs.get("stores_images", True)):
            raise ShardError(f"{path}: built without images (--no-images); training needs them in the shard")
        split = str(f.attrs.get("split", ""))
        entries = []
        for key in sorted(f["samples"]):
            g = f["samples"][key]
            name, h, w = str(g.attrs["name"]), int(g.attrs["height"]), int(g.attrs["width"])
            if g["nuclei"].attrs.get("status") != "done":
                raise ShardError(f"{path}: sample {name} has no nuclei yet; run 'atst prep count-nuclei' "
                                 "(or build with --counter) before training")
            if crop > min(h, w):
                raise ShardError(f"{path}: sample {name} is {h}x{w} px, smaller than the {crop} px crop")
            if "windows" not in g:
                raise ShardError(f"{path}: built by an older atst (shard schema {f.attrs.get('schema_version')}) "
                                 "without per-window targets; rebuild it with 'atst prep build-masks --overwrite'")
            window = int(g["windows"].attrs["window"])
            if window != crop:
                raise ShardError(f"{path}: holds Eq. 1 targets per {window} px window, not for {crop} px crops; "
                                 f"train with --crop {window} or rebuild with 'atst prep build-masks --window {crop}'")
            entries.append((key, name, h, w, g["windows/origins"][()]))
    return split, entries


class ShardPairs(Dataset):
    """Random crops of the pairs in prep shards, with the auxiliary-loss targets of each crop.

    Parameters
    ----------
    shard_paths : iterable of paths
        HDF5 shards of ``atst prep build-masks`` with images and counted nuclei.
    crop : int
        Side of the square crop, px (512 for MIST/BCI's 1024 tiles, as the paper).
    keep_list : path, optional
        Keep-list CSV of ``atst prep filter-misaligned``; pairs not kept (or not
        listed) are dropped.
    seed : int
        Crops are a function of ``(seed, epoch, index)`` only (see :meth:`set_epoch`).
    unpaired : bool
        Also return ``ihc_unpaired``, an IHC crop of another pair: the
        discriminator sees unpaired real IHC, as in the paper. The other pair
        is drawn at random, or given with the index (see Items).
    flips : bool
        Apply one of the eight symmetries of the square (flips, quarter turns),
        drawn per item, to the H&E, the IHC and the mask together.
    windows : {"all", "tiled"}
        Crops are the shards' fixed training windows; "tiled" uses only those
        on the non-overlapping grid (origins multiples of the window: the public
        code's four fixed 512 crops of a 1024 tile).
    raw : bool
        Return images and mask as uint8, as stored (``he`` etc. (c, c, 3)
        bytes, ``mask`` (1, c, c) in {0, 1}), and convert on the GPU with
        :func:`to_unit`: a quarter of the bytes through the workers' shared
        memory and the collate, and no transpose on the CPU (see
        ``benchmarks/loader.py``). Same crops and targets.

    Items
    -----
    ``data[i]``, or ``data[(i, j)]`` to take the unpaired IHC from pair ``j``
    (:class:`atst_model.train.state.EpochOrder` with ``partners=True`` pairs
    each index with the one before it in its epoch's order, so a compact
    shard's IHC decoded for one item serves the next). A dict of (``c`` = crop side):

    - ``he``, ``ihc``: (3, c, c) float32 RGB in [-1, 1] (``byte / 127.5 - 1``), the paired crops;
    - ``mask``: (1, c, c) float32 in {0, 1}, M of the window (Eq. 1 of the window, from the shard);
    - ``dab_mean_in_mask``: () float32, mean DAB density (rgb2hed units) inside the mask, 0 if
      empty; unmixed from the IHC crop's bytes as prep unmixes them, so it equals the mean of the
      shard's ``dab`` channel (stored in 1e-4 steps) to 5e-5;
    - ``dab_darkness_in_mask``: () float32, mean of ``1 - dab_gray`` inside the mask (L4's target), 0 if empty;
    - ``transform``: () int64, the symmetry applied (:func:`dihedral`; 0 without ``flips``);
    - ``count_in_mask``, ``count_in_crop``: () float32, nuclei (centroids) inside crop and mask / crop;
    - ``name``: str; ``origin``: (2,) int64, the crop's (y0, x0) px in the tile;
    - with ``unpaired=True``: ``ihc_unpaired`` (3, c, c) float32 in [-1, 1], the IHC crop
      of another pair (``j`` if given and not ``i``; else a random one, or ``i`` itself if
      there is only one pair), its ``name_unpaired`` and ``origin_unpaired``.

    Notes
    -----
    Each nucleus is assigned to the pixel of its rounded centroid in the tile
    (as :func:`atst_prep.nuclei.count_in_mask` does for a whole tile), then
    shifted into the crop, so crops of one tile never count a nucleus twice.

    Compact shards (the source JPEGs' bytes) are decoded per item, the last
    :data:`DECODED_KEPT` images kept per process (each decoded once, also
    when threads ask for it together), so an item's H&E and IHC are decoded
    once each, and its unpaired IHC not at all when the previous item's
    pair gives it; items are the same as from raw shards of the same pairs.

    Workers copy the dataset when a DataLoader iterator starts, so call
    :meth:`set_epoch` before each epoch's ``iter(loader)``; persistent
    workers (``persistent_workers=True``) keep the epoch of their first copy.
    """

    def __init__(self, shard_paths: Iterable[str | Path], crop: int = 512, keep_list: str | Path | None = None,
                 seed: int = 0, unpaired: bool = True, raw: bool = False, flips: bool = False,
                 windows: str = "all") -> None:
        self.shard_paths = [str(p) for p in shard_paths]
        if not self.shard_paths:
            raise UserError("no shards given")
        if isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < 1:
            raise UserError(f"crop must be a positive integer (px), got {crop!r}")
        if windows not in ("all", "tiled"):
            raise UserError(f"windows must be 'all' or 'tiled', got {windows!r}")
        self.crop, self.seed, self.unpaired, self.raw, self.epoch = int(crop), int(seed), bool(unpaired), bool(raw), 0
        self.flips, self.windows = bool(flips), windows
        kept = read_keep_list(Path(keep_list)) if keep_list is not None else None
        samples: list[tuple[int, str, str, int, int]] = []
        self._windows: list[np.ndarray] = []  # per sample: indices and origins (K, 3) of its usable windows
        for i, path in enumerate(self.shard_paths):
            split, entries = _index_shard(path, self.crop)
            for key, name, h, w, origins in entries:
                if kept is None or (name in kept[0] if kept[1] is None else (split, name) in kept[1]):
                    index = np.arange(len(origins))
                    if windows == "tiled":
                        index = index[(origins % self.crop == 0).all(axis=1)]
                    if len(index) == 0:
                        continue
                    samples.append((i, key, name, h, w))
                    self._windows.append(np.column_stack([index, origins[index]]))
        if not samples:
            where = f" by keep-list {keep_list}" if kept is not None else ""
            raise UserError(f"no sample kept{where} in {len(self.shard_paths)} shard(s)")
        self.samples = samples  # (shard index, sample key, name, height, width)
        self._files: dict[int, h5py.File] = {}
        self._datasets: dict[tuple[int, str], tuple[h5py.Dataset, ...]] = {}
        self._decoded = _Decoded(DECODED_KEPT)
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops of ``epoch`` from now on (call before each epoch's DataLoader iterator)."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"], state["_datasets"], state["_pid"] = {}, {}, None  # handles never travel
        state["_decoded"] = None  # made again in the process that reads
        return state

    def _open(self, shard: int, key: str) -> tuple[h5py.Dataset, ...]:
        """(he, ihc, window masks, centroids) datasets of a sample, opened once per process.

        Opening a dataset object costs several times reading a 512 window
        through one that is open (h5py caches its fast reader per object).
        """
        if self._pid != os.getpid():  # a new process (or a forked worker): drop, do not close, the parent's handles
            self._files, self._datasets, self._decoded, self._pid = {}, {}, _Decoded(DECODED_KEPT), os.getpid()
            keep_freed_memory()
        found = self._datasets.get((shard, key))
        if found is None:
            f = self._files.get(shard)
            if f is None:
                f = self._files[shard] = h5py.File(self.shard_paths[shard], "r")
            g = f["samples"][key]
            he, ihc = (g[k] if k in g else g[FILE_KEYS[k]] for k in ("he", "ihc"))  # raw pixels or file bytes
            found = self._datasets[(shard, key)] = (he, ihc, g["windows/mask"], g["nuclei/centroids"])
        return found

    def _pixels(self, shard: int, source: h5py.Dataset) -> h5py.Dataset | np.ndarray:
        """A raw layout's image dataset as it is; a compact one's file decoded (the last few are kept, so
        the paired H&E and IHC of an item are decoded once each)."""
        if source.ndim == 3:
            return source
        return self._decoded.get((shard, source.name),
                                 lambda: decode_rgb(source[()], f"{self.shard_paths[shard]}:{source.name}"))

    def _origin(self, rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
        return int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))

    def _window(self, dataset: h5py.Dataset, y0: int, x0: int) -> np.ndarray:
        c = self.crop
        return dataset[y0:y0 + c, x0:x0 + c]  # reads only the chunks under the window

    def _image(self, window: np.ndarray) -> torch.Tensor:
        """(c, c, 3) uint8 -> (3, c, c) float32 in [-1, 1]; with ``raw``, the bytes as they are."""
        if self.raw:
            return torch.from_numpy(window)
        c = self.crop
        planes = np.ascontiguousarray(window.transpose(2, 0, 1))
        return torch.from_numpy(cv2.LUT(planes.reshape(3 * c, c), _TO_UNIT).reshape(3, c, c))

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        index, partner = index if isinstance(index, tuple) else (index, None)
        for i in (index,) if partner is None else (index, partner):
            if not 0 <= i < len(self.samples):
                raise IndexError(f"index {i} out of range for {len(self.samples)} samples")
        rng = np.random.default_rng((self.seed, self.epoch, index))
        shard, key, name, h, w = self.samples[index]
        windows = self._windows[index]
        k, y0, x0 = (int(v) for v in windows[int(rng.integers(0, len(windows)))])
        t = int(rng.integers(0, 8)) if self.flips else 0
        c = self.crop
        he_data, ihc_data, mask_data, centroids = self._open(shard, key)
        he_data, ihc_data = self._pixels(shard, he_data), self._pixels(shard, ihc_data)
        ihc = self._window(ihc_data, y0, x0)
        mask = mask_data[k]
        positive = cv2.countNonZero(mask)
        xy = np.rint(centroids[()].astype(np.float64)).astype(np.int64) - np.array([x0, y0])
        in_crop = xy[((xy >= 0) & (xy < c)).all(axis=1)]
        # scalar targets are invariant under the symmetries: taken before applying one
        dab_mean, darkness = _dab_means(ihc, mask) if positive else (0.0, 0.0)
        n_in_mask = count_in_mask(in_crop, mask) if positive else 0
        he, ihc, mask = (np.ascontiguousarray(dihedral(a, t)) for a in (self._window(he_data, y0, x0), ihc, mask))
        item = {
            "he": self._image(he),
            "ihc": self._image(ihc),
            "mask": torch.from_numpy(mask.reshape(1, c, c) if self.raw else mask.astype(np.float32).reshape(1, c, c)),
            "dab_mean_in_mask": torch.tensor(dab_mean, dtype=torch.float32),
            "dab_darkness_in_mask": torch.tensor(darkness, dtype=torch.float32),
            "count_in_mask": torch.tensor(float(n_in_mask), dtype=torch.float32),
            "count_in_crop": torch.tensor(float(len(in_crop)), dtype=torch.float32),
            "name": name,
            "origin": torch.tensor([y0, x0], dtype=torch.int64),
            "transform": torch.tensor(t, dtype=torch.int64),
        }
        if self.unpaired:
            other = partner if partner is not None and partner != index else self._other(rng, index)
            s2, key2, _, h2, w2 = self.samples[other]
            uy, ux = self._origin(rng, h2, w2)
            item["ihc_unpaired"] = self._image(self._window(self._pixels(s2, self._open(s2, key2)[1]), uy, ux))
            item["name_unpaired"] = self.samples[other][2]
            item["origin_unpaired"] = torch.tensor([uy, ux], dtype=torch.int64)
        return item

    def _other(self, rng: np.random.Generator, index: int) -> int:
        """A random sample other than ``index`` (``index`` itself when there is only one)."""
        n = len(self.samples)
        if n == 1:
            return index
        j = int(rng.integers(0, n - 1))
        return j + (j >= index)

    def names(self) -> Sequence[str]:
        """Pair names, in item order."""
        return [s[2] for s in self.samples]
