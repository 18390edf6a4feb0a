"""Nucleus detection and counting on IHC tiles.

Every counter turns an IHC tile's stain densities into :class:`Nuclei`
(centroids, areas and optionally instance labels) and says who it is
(``name``, ``version``, ``params()``), so counts stored in a shard can be
traced to the counter that made them. Counters are looked up by name:

>>> counter = make_counter("classical")              # doctest: +SKIP
>>> nuclei = counter.detect(hema, dab)               # doctest: +SKIP

``"classical"`` needs nothing else; ``"cppnet"`` needs a checkpoint made by
``atst prep train-nuclei`` (``weights=PATH``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np


@dataclass(frozen=True)
class Nuclei:
    """Detected nuclei of one tile.

    Attributes
    ----------
    centroids : (N, 2) float32, (x, y) in px of the tile.
    areas : (N,) int32, px.
    labels : (H, W) int32 instance labels (0 = background, k = row k-1), or None.
    """

    centroids: np.ndarray
    areas: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.centroids)

    def count_in(self, mask: np.ndarray) -> int:
        """Number of centroids that fall on True pixels of ``mask`` (H, W)."""
        return count_in_mask(self.centroids, mask)


def count_in_mask(centroids: np.ndarray, mask: np.ndarray) -> int:
    """Count (x, y) centroids lying on True pixels of ``mask``; each centroid is rounded to its pixel."""
    if len(centroids) == 0:
        return 0
    xy = np.rint(np.asarray(centroids, np.float64)).astype(np.int64)
    h, w = mask.shape
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    xy = xy[inside]
    return int(np.count_nonzero(mask[xy[:, 1], xy[:, 0]]))


class NucleusCounter(Protocol):
    """What every counter provides."""

    name: str
    version: str

    def params(self) -> dict: ...

    def detect(self, hema: np.ndarray, dab: np.ndarray) -> Nuclei:
        """Nuclei of one tile from its hematoxylin and DAB densities ((H, W) float32, rgb2hed units)."""
        ...


_FACTORIES: dict[str, Callable[..., NucleusCounter]] = {}
#: Built-in counters by the module that registers them, imported only when asked
#: for: the classical counter must never pull in PyTorch (~0.8 GB per worker).
_BUILTIN = {"classical": "atst_prep.nuclei.classical", "cppnet": "atst_model.cppnet.counter"}


def register_counter(name: str):
    """Decorator: make a counter factory available to :func:`make_counter` under ``name``."""

    def wrap(factory):
        _FACTORIES[name] = factory
        return factory

    return wrap


def counter_names() -> list[str]:
    return sorted(set(_FACTORIES) | set(_BUILTIN))


def make_counter(name: str, weights: Path | None = None, **kwargs) -> NucleusCounter:
    """Build the counter ``name``; an unknown name lists the valid ones."""
    if name not in _FACTORIES and name in _BUILTIN:
        try:
            importlib.import_module(_BUILTIN[name])
        except ImportError as exc:
            raise ValueError(f"nucleus counter {name!r} needs a package that is not installed ({exc.name})") from None
    if name not in _FACTORIES:
        raise ValueError(f"unknown nucleus counter {name!r}; choose one of {', '.join(counter_names())}")
    if weights is not None:
        kwargs["weights"] = weights
    return _FACTORIES[name](**kwargs)
