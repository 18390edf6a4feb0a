"""Recognise paired H&E/IHC dataset layouts (MIST, BCI, plain folders) and list their pairs.

Only directory listings are read: nothing here opens an image. Descriptors of
the public datasets (expected pair counts, tile size, citation) live as TOML
files in ``data_manifests/datasets``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from .errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "KNOWN_IDS", "MIST_MARKERS", "DatasetDescriptor", "DatasetSource", "Pair",
           "SourceError", "SplitListing", "count_mismatch", "descriptor_dir", "detect", "load_descriptor"]

#: File extensions (lower-case) treated as images; anything else is reported as ignored.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
#: MIST marker folders, in their canonical spelling (matched case-insensitively).
MIST_MARKERS = ("HER2", "ER", "PR", "Ki67")
#: Markers whose DAB stains nuclei (positive nuclei are brown, not blue).
NUCLEAR_MARKERS = frozenset({"ER", "PR", "Ki67"})
#: Ids that have a descriptor; a plain folder never takes one of them.
KNOWN_IDS = ("bci", "mist-er", "mist-her2", "mist-ki67", "mist-pr")

_MARKER_BY_LOWER = {m.lower(): m for m in MIST_MARKERS}
_SPLIT_ORDER = ("train", "val", "test")
_HE_NAMES = frozenset({"he", "h&e", "hne", "a"})
_IHC_NAMES = frozenset({"ihc", "b"})
_BCI_STEM = re.compile(r"\d+_(?:train|test)_(?:0|1\+|2\+|3\+)")
_HER2_LEVEL = re.compile(r"_(0|1\+|2\+|3\+)$")
_ID = re.compile(r"[a-z0-9][a-z0-9-]*")
_EXPECTED = (
    "expected MIST (<root>/<HER2|ER|PR|Ki67>/TrainValAB/{trainA,trainB,valA,valB}), "
    "BCI (<root>/{HE,IHC}/{train,test}) or a folder with one H&E (he, h&e, hne, a) and one "
    "IHC (ihc, b) sub-folder, or <split>A/<split>B sub-folders"
)


class SourceError(UserError):
    """A folder holds no recognised dataset, or a request does not fit the dataset."""


@dataclass(frozen=True)
class Pair:
    """One H&E tile and its IHC partner.

    Attributes
    ----------
    name : str
        File stem, unique within a split.
    he, ihc : Path
        The two image files.
    meta : Mapping[str, str]
        Read-only facts parsed from the name: for BCI ``{"her2_level": "2+"}``, the
        score of the slide the tile came from (not of the tile itself); else empty.
    """

    name: str
    he: Path
    ihc: Path
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))


@dataclass(frozen=True)
class SplitListing:
    """What one split of a dataset holds.

    Attributes
    ----------
    split : str
    pairs : tuple of Pair
        Matched pairs, sorted by name.
    unmatched_he, unmatched_ihc : tuple of Path
        Images with no partner (including the partner of a dropped duplicate).
    duplicates : tuple of Path
        Images sharing a stem with another in the same folder (``x.png``, ``x.jpg``);
        that stem is left out of pairing.
    ignored : tuple of Path
        Hidden files and files without an image extension, both sides.

    All path tuples are sorted.
    """

    split: str
    pairs: tuple[Pair, ...]
    unmatched_he: tuple[Path, ...]
    unmatched_ihc: tuple[Path, ...]
    duplicates: tuple[Path, ...]
    ignored: tuple[Path, ...]


@dataclass(frozen=True)
class DatasetSource:
    """A dataset found on disk.

    Attributes
    ----------
    id : str
        ``"mist-her2"`` ... ``"mist-ki67"``, ``"bci"``, or the slug of a plain folder's name.
    kind : str
        ``"mist"``, ``"bci"`` or ``"folder"``.
    root : Path
        The folder the split folders sit in (for MIST, ``<marker>/TrainValAB``).
    marker : str or None
        ``"HER2"``, ``"ER"``, ``"PR"``, ``"Ki67"`` for MIST, else None.
    splits : tuple of str
        Split names; ``"all"`` for a plain folder without split sub-folders.
    folders : tuple of (Path, Path)
        ``(he_dir, ihc_dir)`` per split, parallel to ``splits``; a side may not exist.
    """

    id: str
    kind: str
    root: Path
    marker: str | None
    splits: tuple[str, ...]
    folders: tuple[tuple[Path, Path], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if len(self.folders) != len(self.splits):
            raise ValueError(f"{self.id}: {len(self.splits)} splits but {len(self.folders)} folder pairs")

    def list_split(self, split: str) -> SplitListing:
        """List the pairs of one split; SourceError if ``split`` is not in ``self.splits``.

        MIST and BCI pair files by exact file name; plain folders pair by stem,
        so ``x.png`` pairs with ``x.jpg``.
        """
        if split not in self.splits:
            raise SourceError(f"{self.id} ({self.root}): unknown split {split!r}; "
                              f"valid splits: {', '.join(self.splits)}")
        he_dir, ihc_dir = self.folders[self.splits.index(split)]
        he_imgs, he_dup, he_ign = _scan(he_dir)
        ihc_imgs, ihc_dup, ihc_ign = _scan(ihc_dir)
        key = (lambda p: p.stem) if self.kind == "folder" else (lambda p: p.name)
        he, ihc = {key(p): p for p in he_imgs}, {key(p): p for p in ihc_imgs}
        pairs = [Pair(he[k].stem, he[k], ihc[k], _bci_meta(he[k].stem) if self.kind == "bci" else {})
                 for k in he.keys() & ihc.keys()]
        return SplitListing(
            split=split,
            pairs=tuple(sorted(pairs, key=lambda p: p.name)),
            unmatched_he=tuple(sorted(he[k] for k in he.keys() - ihc.keys())),
            unmatched_ihc=tuple(sorted(ihc[k] for k in ihc.keys() - he.keys())),
            duplicates=tuple(sorted(he_dup + ihc_dup)),
            ignored=tuple(sorted(he_ign + ihc_ign)),
        )


def _scan(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Split a folder's files into (images with a unique stem, duplicates, ignored)."""
    if not folder.is_dir():
        return [], [], []
    by_stem: dict[str, list[Path]] = {}
    ignored = []
    for p in folder.iterdir():
        if p.is_dir():
            continue
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
            ignored.append(p)
        else:
            by_stem.setdefault(p.stem, []).append(p)
    unique = [ps[0] for ps in by_stem.values() if len(ps) == 1]
    duplicates = [p for ps in by_stem.values() if len(ps) > 1 for p in ps]
    return unique, duplicates, ignored


def _bci_meta(stem: str) -> dict[str, str]:
    m = _HER2_LEVEL.search(stem)
    return {"her2_level": m.group(1)} if m else {}


def _subdirs(folder: Path) -> dict[str, Path]:
    """Non-hidden sub-folders keyed by lower-cased name."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return {}
    return {p.name.lower(): p for p in entries if not p.name.startswith(".") and p.is_dir()}


def _ab_layout(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``<split>A``/``<split>B`` sub-folders (CycleGAN/MIST style); empty unless one split has both."""
    subs = _subdirs(folder)
    layout = {}
    for s in _SPLIT_ORDER:
        a, b = subs.get(f"{s}a"), subs.get(f"{s}b")
        if a or b:
            layout[s] = (a or folder / f"{s}A", b or folder / f"{s}B")
    return layout if any(f"{s}a" in subs and f"{s}b" in subs for s in _SPLIT_ORDER) else {}


def _split_layout(he: Path, ihc: Path, names: tuple[str, ...]) -> dict[str, tuple[Path, Path]]:
    he_s, ihc_s = _subdirs(he), _subdirs(ihc)
    return {s: (he_s.get(s, he / s), ihc_s.get(s, ihc / s)) for s in names if s in he_s or s in ihc_s}


def _source(id_: str, kind: str, root: Path, marker: str | None, layout: dict) -> DatasetSource:
    return DatasetSource(id_, kind, root, marker, tuple(layout), tuple(layout.values()))


def _mist_at(marker_dir: Path, marker: str) -> DatasetSource | None:
    # The download nests the split folders in TrainValAB; accept them directly in the marker too.
    for ab in (_subdirs(marker_dir).get("trainvalab"), marker_dir):
        if ab is not None and (layout := _ab_layout(ab)):
            return _source(f"mist-{marker.lower()}", "mist", ab, marker, layout)
    return None


def _bci_at(folder: Path, subs: dict[str, Path]) -> DatasetSource | None:
    he, ihc = subs.get("he"), subs.get("ihc")
    if he is None or ihc is None:
        return None
    layout = _split_layout(he, ihc, ("train", "test"))
    # BCI has exactly train/test inside HE and IHC; anything else is a plain folder.
    if not layout or (set(_subdirs(he)) | set(_subdirs(ihc))) - {"train", "test"}:
        return None
    # Same shape as a plain he/ihc folder with splits: tell them apart by name.
    named = "bci" in folder.name.lower() or any(
        _BCI_STEM.fullmatch(p.stem) for d, _ in layout.values() if d.is_dir() for p in d.iterdir()
    )
    return _source("bci", "bci", folder, None, layout) if named else None


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "dataset"
    return f"{slug}-folder" if slug in KNOWN_IDS else slug


def _folder_at(folder: Path, subs: dict[str, Path]) -> DatasetSource | None:
    he = [d for n, d in subs.items() if n in _HE_NAMES]
    ihc = [d for n, d in subs.items() if n in _IHC_NAMES]
    if len(he) == 1 and len(ihc) == 1:
        layout = _split_layout(he[0], ihc[0], _SPLIT_ORDER) or {"all": (he[0], ihc[0])}
    elif not (layout := _ab_layout(folder)):
        return None
    return _source(_slug(folder.name), "folder", folder, None, layout)


def _detect_here(p: Path) -> list[DatasetSource]:
    """Datasets that ``p`` itself is (or, for a MIST root, holds as marker folders)."""
    if (marker := _MARKER_BY_LOWER.get(p.name.lower())) and (src := _mist_at(p, marker)):
        return [src]
    if (marker := _MARKER_BY_LOWER.get(p.parent.name.lower())) and (layout := _ab_layout(p)):
        return [_source(f"mist-{marker.lower()}", "mist", p, marker, layout)]
    subs = _subdirs(p)
    found = [src for name, d in subs.items()
             if (marker := _MARKER_BY_LOWER.get(name)) and (src := _mist_at(d, marker))]
    if found:
        return found
    src = _bci_at(p, subs) or _folder_at(p, subs)
    return [src] if src else []


def detect(path: Path | str) -> list[DatasetSource]:
    """Find every dataset at ``path`` or directly below it.

    ``path`` (resolved to an absolute path) may be a MIST root, marker or
    ``TrainValAB`` folder, a BCI root, a plain folder with H&E and IHC
    sub-folders, or a folder holding such folders. Returns the sources sorted
    by id. Raises SourceError if the path is missing or not a folder, nothing
    is recognised, or two datasets would share an id.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise SourceError(f"{path}: no such folder; {_EXPECTED}")
    if not path.is_dir():
        raise SourceError(f"{path}: not a folder; {_EXPECTED}")
    found = _detect_here(path)
    if not found:
        found = [src for child in _subdirs(path).values() for src in _detect_here(child)]
    if not found:
        raise SourceError(f"{path}: no dataset found at or directly below it; {_EXPECTED}")
    found.sort(key=lambda s: (s.id, str(s.root)))
    for a, b in zip(found, found[1:]):
        if a.id == b.id:
            raise SourceError(f"{path}: two datasets share the id {a.id!r} ({a.root} and {b.root}); point at one")
    return found


@dataclass(frozen=True)
class DatasetDescriptor:
    """What a public dataset should hold, read from ``data_manifests/datasets/<id>.toml``.

    Attributes
    ----------
    id, kind, marker : as in DatasetSource.
    layout : str
        Human-readable folder pattern.
    expected_pairs : Mapping[str, int]
        Split -> number of pairs in the full download (read-only).
    closing_radius : int
        Suggested mask closing radius in pixels at ``tile_size`` (the CLI's
        ``--closing-radius`` overrides it).
    image_format : str
        ``"JPEG"`` or ``"PNG"``.
    tile_size : int
        Tile side in pixels.
    description, citation : str
    """

    id: str
    kind: str
    marker: str | None
    layout: str
    expected_pairs: Mapping[str, int] = field(hash=False)
    closing_radius: int
    image_format: str
    tile_size: int
    description: str
    citation: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "expected_pairs", MappingProxyType(dict(self.expected_pairs)))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def descriptor_dir() -> Path:
    """The ``data_manifests/datasets`` folder (shipped in the package as ``atst_manifests``)."""
    from .resources import manifests_dir

    return manifests_dir() / "datasets"


def load_descriptor(dataset_id: str, directory: Path | None = None) -> DatasetDescriptor | None:
    """Read ``<directory>/<dataset_id>.toml``; None when there is none (plain folders).

    Raises SourceError if the id is not a slug or the file is not valid TOML,
    lacks a field or has an unknown one.
    """
    if not _ID.fullmatch(dataset_id):
        raise SourceError(f"{dataset_id!r}: not a dataset id (lower-case letters, digits, '-')")
    file = (descriptor_dir() if directory is None else Path(directory)) / f"{dataset_id}.toml"
    if not file.is_file():
        return None
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{file}: not valid TOML ({exc})") from exc
    strings = ("id", "kind", "layout", "image_format", "description", "citation")
    ints = ("closing_radius", "tile_size")
    if unknown := sorted(set(data) - set(strings) - set(ints) - {"marker", "expected_pairs"}):
        raise SourceError(f"{file}: unknown field(s) {', '.join(unknown)}")
    for key in strings:
        if not isinstance(data.get(key), str):
            raise SourceError(f"{file}: field {key!r} must be a string")
    for key in ints:
        if not _count(data.get(key)):
            raise SourceError(f"{file}: field {key!r} must be a non-negative integer")
    if data["id"] != dataset_id:
        raise SourceError(f"{file}: id {data['id']!r} does not match the file name")
    marker = data.get("marker")
    if marker is not None and marker not in MIST_MARKERS:
        raise SourceError(f"{file}: marker {marker!r} is not one of {', '.join(MIST_MARKERS)}")
    pairs = data.get("expected_pairs")
    if not isinstance(pairs, dict) or not pairs or not all(_count(v) for v in pairs.values()):
        raise SourceError(f"{file}: [expected_pairs] must map split names to non-negative integers")
    return DatasetDescriptor(**{**data, "marker": marker})


def count_mismatch(source: DatasetSource, listing: SplitListing, descriptor: DatasetDescriptor | None) -> str | None:
    """A one-line warning when a split's pair count differs from the descriptor's, else None.

    None also when there is no descriptor or it gives no count for the split.
    """
    if descriptor is None:
        return None
    expected = descriptor.expected_pairs.get(listing.split)
    found = len(listing.pairs)
    if expected is None or expected == found:
        return None
    why = "partial download?" if found < expected else "extra files?"
    unmatched = len(listing.unmatched_he) + len(listing.unmatched_ihc)
    extra = f", {unmatched} unmatched files" if unmatched else ""
    return f"{source.id} {listing.split}: found {found} pairs in {source.root}, expected {expected} ({why}{extra})"
