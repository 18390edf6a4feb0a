"""Match fake / real (and optional H&E) images by file stem, read and check them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atst_prep.images import InputError, read_rgb

__all__ = ["IMAGE_SUFFIXES", "Pair", "Pairing", "match_pairs", "load_pair"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass(frozen=True)
class Pair:
    """Paths of one matched name; ``he`` is None when no H&E folder was given."""

    name: str
    fake: Path
    real: Path
    he: Path | None = None


@dataclass
class Pairing:
    """Matched pairs (sorted by name) and one line per file that found no partner."""

    pairs: list[Pair]
    unmatched: list[str] = field(default_factory=list)


def _by_stem(folder: Path, role: str) -> tuple[dict[str, Path], list[str]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, f"{role} folder not found")
    found: dict[str, Path] = {}
    problems: list[str] = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            problems.append(f"{path}: {role} name {path.stem!r} also used by {found[path.stem].name}; ignored")
            continue
        found[path.stem] = path
    return found, problems


def match_pairs(fake_dir: Path, real_dir: Path, he_dir: Path | None = None) -> Pairing:
    """Pair images by file stem (``x.png`` in fake with ``x.jpg`` in real is a pair).

    A name missing from any given folder is reported (one line) and left out.
    Raises :class:`InputError` if a folder does not exist.
    """
    fakes, problems = _by_stem(fake_dir, "fake")
    reals, more = _by_stem(real_dir, "real")
    problems += more
    hes: dict[str, Path] | None = None
    if he_dir is not None:
        hes, more = _by_stem(he_dir, "H&E")
        problems += more
    roles = [("fake", fakes), ("real", reals)] + ([("H&E", hes)] if hes is not None else [])
    names = sorted(set().union(*(d.keys() for _, d in roles)))
    pairs: list[Pair] = []
    for name in names:
        missing = [role for role, d in roles if name not in d]
        if missing:
            have = next(d[name] for _, d in roles if name in d)
            problems.append(f"{have}: no {' / '.join(missing)} image named {name!r}; skipped")
            continue
        pairs.append(Pair(name, fakes[name], reals[name], hes[name] if hes is not None else None))
    return Pairing(pairs, problems)


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read ``(fake, real, he)`` as uint8 RGB; :class:`InputError` if a file is bad or sizes differ."""
    fake, real = read_rgb(pair.fake), read_rgb(pair.real)
    if fake.shape != real.shape:
        raise InputError(pair.fake, f"size {fake.shape[1]}x{fake.shape[0]} differs from the real image's "
                                    f"{real.shape[1]}x{real.shape[0]} ({pair.real.name})")
    he = None
    if pair.he is not None:
        he = read_rgb(pair.he)
        if he.shape != fake.shape:
            raise InputError(pair.he, f"size {he.shape[1]}x{he.shape[0]} differs from the fake image's "
                                      f"{fake.shape[1]}x{fake.shape[0]}")
    return fake, real, he
