"""The parameters of the synthetic pair generator (:mod:`atst_prep.synth`), validated on construction."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

PATTERNS = ("membranous", "nuclear")
_MARKER_PATTERN = {"HER2": "membranous", "ER": "nuclear", "PR": "nuclear", "KI67": "nuclear"}


def _range(name, value, lo, hi, *, integer=False, pair=False):
    """Validate a number (or an ordered pair of numbers) in [lo, hi]; return it normalised."""
    values = tuple(value) if pair and isinstance(value, (tuple, list, np.ndarray)) else (value,)
    if pair and len(values) != 2:
        raise ValueError(f"SynthConfig.{name} must be a (low, high) pair, got {value!r}")
    out = []
    for v in values:
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v):
            raise ValueError(f"SynthConfig.{name} must be {'an integer' if integer else 'a finite number'}, got {v!r}")
        if not lo <= v <= hi:
            raise ValueError(f"SynthConfig.{name} must lie in [{lo}, {hi}], got {v!r}")
        out.append(int(v) if integer else float(v))
    if pair and out[0] > out[1]:
        raise ValueError(f"SynthConfig.{name} must be (low, high) with low <= high, got {value!r}")
    return tuple(out) if pair else out[0]


@dataclass(frozen=True)
class SynthConfig:
    """Validated parameters of the synthetic pair generator.

    Attributes
    ----------
    size : tile side, px (64-8192).
    pattern : DAB pattern, "membranous" (HER2: membranes of positive cells)
        or "nuclear" (ER/PR/Ki67: positive nuclei).
    max_shift : largest |dx| and |dy| of the H&E->IHC translation, px.
    max_rotation : largest |rotation|, degrees (<= 30).
    elastic_amplitude : largest elastic displacement on the tile, px (<= size/16).
    nucleus_radius : (low, high) equivalent-area radius of nuclei, px at scale 1.
    positive_fraction : (low, high) fraction of the tissue area that is
        biomarker-positive in a non-negative pair.
    negative_pair_rate : probability that a pair has no DAB at all.
    he_cue : relative enlargement and darkening of positive nuclei in the H&E
        (0 disables the morphological cue of positivity).
    jpeg_quality : (low, high) JPEG quality, drawn per image.
    stain_jitter : std of the per-component noise on the stain vectors
        (before renormalising), per slide.
    scale : multiplies all tissue lengths (use size/1024 to show a 1024
        tile's field of view at lower resolution).
    tissue_fraction : (low, high) fraction of the canvas covered by tissue.
    nucleus_drop_rate, nucleus_add_rate : fractions of nuclei missing from /
        new in the IHC section.
    nucleus_jitter_rate, nucleus_jitter_px : fraction of IHC nuclei moved (and
        resized by up to 15%) and the std of that move, px.
    """

    size: int = 1024
    pattern: str = "membranous"
    max_shift: float = 16.0
    max_rotation: float = 2.0
    elastic_amplitude: float = 2.0
    nucleus_radius: tuple[float, float] = (4.0, 8.0)
    positive_fraction: tuple[float, float] = (0.0, 0.6)
    negative_pair_rate: float = 0.15
    he_cue: float = 0.15
    jpeg_quality: tuple[int, int] = (80, 95)
    stain_jitter: float = 0.05
    scale: float = 1.0
    tissue_fraction: tuple[float, float] = (0.6, 1.0)
    nucleus_drop_rate: float = 0.05
    nucleus_add_rate: float = 0.05
    nucleus_jitter_rate: float = 0.1
    nucleus_jitter_px: float = 2.0

    def __post_init__(self) -> None:
        size = _range("size", self.size, 64, 8192, integer=True)
        if self.pattern not in PATTERNS:
            raise ValueError(f"SynthConfig.pattern must be one of {PATTERNS}, got {self.pattern!r}")
        checks = {
            "size": size,
            "max_shift": _range("max_shift", self.max_shift, 0.0, size / 4),
            "max_rotation": _range("max_rotation", self.max_rotation, 0.0, 30.0),
            "elastic_amplitude": _range("elastic_amplitude", self.elastic_amplitude, 0.0, size / 16),
            "nucleus_radius": _range("nucleus_radius", self.nucleus_radius, 0.5, 64.0, pair=True),
            "positive_fraction": _range("positive_fraction", self.positive_fraction, 0.0, 1.0, pair=True),
            "negative_pair_rate": _range("negative_pair_rate", self.negative_pair_rate, 0.0, 1.0),
            "he_cue": _range("he_cue", self.he_cue, 0.0, 1.0),
            "jpeg_quality": _range("jpeg_quality", self.jpeg_quality, 1, 100, integer=True, pair=True),
            "stain_jitter": _range("stain_jitter", self.stain_jitter, 0.0, 0.3),
            "scale": _range("scale", self.scale, 0.05, 8.0),
            "tissue_fraction": _range("tissue_fraction", self.tissue_fraction, 0.05, 1.0, pair=True),
            "nucleus_drop_rate": _range("nucleus_drop_rate", self.nucleus_drop_rate, 0.0, 1.0),
            "nucleus_add_rate": _range("nucleus_add_rate", self.nucleus_add_rate, 0.0, 1.0),
            "nucleus_jitter_rate": _range("nucleus_jitter_rate", self.nucleus_jitter_rate, 0.0, 1.0),
            "nucleus_jitter_px": _range("nucleus_jitter_px", self.nucleus_jitter_px, 0.0, 32.0),
        }
        for name, value in checks.items():  # store normalised values (tuples, floats)
            object.__setattr__(self, name, value)


__all__ = ["PATTERNS", "SynthConfig"]
