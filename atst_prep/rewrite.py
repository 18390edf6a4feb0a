"""Changing a finished shard without ever exposing a half-written one.

``count-nuclei`` and ``filter-misaligned`` add data to shards that already
exist. Both copy the shard to ``.shard-XXXXX.h5.<pid>.partial`` in the same
folder (checking the copy's SHA-256 against the manifest, so a corrupt or
foreign file is refused rather than given a fresh checksum), modify the copy,
fsync it and rename it over the original: a reader, or a run killed at any
moment, sees the shard wholly old or wholly new. Stale ``.partial`` files are
removed by the next run.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py

from .runner import BuildError
from .shard_writer import fsync_dir


def copy_hashing(src: Path, dst: Path, block: int = 1 << 22) -> str:
    """Copy ``src`` to ``dst`` and return the SHA-256 of the bytes copied."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(block):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


@contextmanager
def rewrite_shard(path: Path, expected_sha256: str) -> Iterator[h5py.File]:
    """Yield a checked, writable copy of the shard at ``path``; replace the original on a clean exit.

    Raises
    ------
    BuildError
        The shard's bytes differ from what the manifest recorded.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        if copy_hashing(path, tmp) != expected_sha256:
            raise BuildError(f"{path}: checksum differs from the manifest (changed or corrupt; see "
                             "'atst prep verify', rebuild with 'atst prep build-masks --overwrite')")
        with h5py.File(tmp, "r+", libver=("v110", "v110")) as f:
            yield f
            f.flush()
            os.fsync(f.id.get_vfd_handle())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
