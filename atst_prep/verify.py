"""``atst prep verify``: every shard listed, present, intact and on schema."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .manifest import find_manifests, read_manifest
from .shard_check import validate
from .shards import _plain, sha256_of

__all__ = ["VerifyReport", "find_manifests", "verify"]


@dataclass
class VerifyReport:
    manifests: list[Path] = field(default_factory=list)
    shards_ok: int = 0
    problems: list[str] = field(default_factory=list)


def verify(root: Path, on_shard=None) -> VerifyReport:
    """Check checksums, schema and completeness of every shard under ``root``."""
    report = VerifyReport()
    for manifest_path in find_manifests(root):
        report.manifests.append(manifest_path)
        manifest = read_manifest(manifest_path)
        folder = manifest_path.parent
        listed = set()
        if manifest.get("nuclei_complete") is False:
            report.problems.append(f"{folder}: nuclei are counted in only some shards "
                                   "(count-nuclei interrupted? run it again)")
        if manifest.get("alignment_complete") is False:
            report.problems.append(f"{folder}: alignment results are written to only some shards "
                                   "(filter-misaligned interrupted? run it again)")
        for split, info in manifest.get("splits", {}).items():
            if not info.get("complete", False):
                report.problems.append(f"{folder}: split {split!r} is incomplete (build interrupted?)")
            for shard in info.get("shards", []):
                path = folder / shard["file"]
                listed.add(path.resolve())
                problems = _check_shard(path, shard)
                report.problems.extend(f"{path}: {p}" for p in problems)
                report.shards_ok += not problems
                if on_shard:
                    on_shard(path)
        for extra in sorted(folder.glob("*/shard-*.h5")):
            if extra.resolve() not in listed:
                report.problems.append(f"{extra}: shard file not listed in {manifest_path.name}")
    return report


def _check_shard(path: Path, entry: dict) -> list[str]:
    if not path.is_file():
        return ["missing"]
    digest = sha256_of(path)
    if digest != entry.get("sha256"):
        return [f"checksum mismatch (file {digest[:12]}..., manifest {str(entry.get('sha256'))[:12]}...)"]
    return validate(path)


def content_digest(path: Path, exclude: frozenset[str] = frozenset()) -> str:
    """SHA-256 of a shard's contents: every dataset's name, dtype, shape and values and every attribute
    (but those named in ``exclude``).

    Independent of how HDF5 laid the bytes out, so two shards with equal
    digests hold the same data even where their file checksums differ.
    """
    digest = hashlib.sha256()

    def add(name: str, obj) -> None:
        digest.update(name.encode())
        for key in sorted(k for k in obj.attrs if k not in exclude):
            digest.update(key.encode() + repr(_plain(obj.attrs[key])).encode())
        if isinstance(obj, h5py.Dataset):
            value = obj[()]
            digest.update(f"{obj.dtype}{obj.shape}".encode())
            digest.update(repr(value.tolist()).encode() if value.dtype == object else np.ascontiguousarray(value).tobytes())

    with h5py.File(path, "r") as f:
        add("/", f)
        names = []
        f.visit(names.append)
        for name in sorted(names):
            add(name, f[name])
    return digest.hexdigest()
