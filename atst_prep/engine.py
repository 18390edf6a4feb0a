"""The shard-pass engine: what every pass over dataset folders of shards shares.

A *pass* (``build-masks``, ``count-nuclei``, ``filter-misaligned``, the next one) is a list of tasks, one
per shard, each naming its dataset folder (``task.folder``), and a function a worker runs on one task,
returning a result dict with the same ``"folder"``. The pass describes each dataset folder with a
:class:`Folder`: how a result changes its manifest (:meth:`Folder.record`) and how the manifest is
written (:meth:`Folder.save`). The engine does the rest, the same way for every pass:

1. :func:`locked` holds an exclusive :class:`~atst_prep.runner.FolderLock` on every dataset folder for
   the whole run, so two runs never interleave.
2. :meth:`ManifestFolder.open` (passes over existing shards) removes the ``.partial`` files a killed
   run left, and repairs the manifest entry of each shard that was renamed into place but whose
   manifest update the kill prevented: such a shard records, in its root attribute
   ``<pass>_source_sha256``, the checksum of the shard it replaced, which is what the manifest still lists.
3. :func:`run_pass` saves each folder's manifest (marked incomplete where tasks remain), runs the
   tasks on this machine or a Dask cluster (:func:`~atst_prep.runner.run_tasks`), and after each one
   records its result and saves the manifest again, atomically, complete when its folder has no task
   left. Manifests are replaced only when their content changes. A Ctrl-C is never lost
   (:func:`catching_interrupts`): Python drops a ``KeyboardInterrupt`` raised while a finalizer runs
   (it prints "Exception ignored in ...") and the pass would run to its end.

A worker writes a shard under a temporary name and renames it when complete
(:class:`~atst_prep.shard_writer.ShardWriter`, :func:`~atst_prep.rewrite.rewrite_shard`), so at any
moment a shard is wholly old or wholly new and the manifest lists what is on disk, or is repaired by
the next run. To add a pass: a task dataclass with ``folder``, a module-level worker function (it is
pickled to worker processes), a :class:`Folder` (usually :class:`ManifestFolder`), then
``with locked(...): run_pass(...)``.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from .errors import UserError
from .manifest import find_manifests, read_manifest, write_manifest_file
from .runner import FolderLock, run_tasks
from .shards import read_header, sha256_of


class Folder:
    """A dataset folder as a pass sees it. Subclasses implement :meth:`record` and :meth:`save`."""

    path: Path

    def record(self, result: dict) -> None:
        """Fold one finished task's result into the manifest kept in memory."""
        raise NotImplementedError

    def save(self, complete: bool) -> Path:
        """Write the manifest atomically (``complete``: no task of this folder is left)."""
        raise NotImplementedError


def save_if_changed(folder: Path, manifest: dict) -> Path:
    """Replace ``folder/manifest.json`` with ``manifest`` unless it already holds exactly that."""
    path = Path(folder) / "manifest.json"
    try:
        if path.is_file() and read_manifest(path) == manifest:
            return path
    except UserError:  # not a readable manifest: replace it
        pass
    return write_manifest_file(folder, manifest)


def remove_partials(folder: Path) -> None:
    """Delete the temporary files of shards a killed run was writing (``<split>/.shard-*.partial``)."""
    for stale in Path(folder).glob("*/.shard-*.partial"):
        stale.unlink(missing_ok=True)


@dataclass
class ManifestFolder(Folder):
    """A dataset folder whose shards exist, for passes that rewrite them.

    ``flag`` is the manifest key set to False while the pass has tasks left (``atst prep verify``
    reports it); ``stale`` says :meth:`open` repaired entries.
    """

    path: Path
    manifest: dict
    flag: str
    stale: bool = False

    @classmethod
    def open(cls, manifest_path: Path, flag: str, source_attr: str, **extra) -> "ManifestFolder":
        """Read the manifest, remove partial files, repair entries left behind by a kill (see the module)."""
        folder = cls(Path(manifest_path).parent, read_manifest(manifest_path), flag, **extra)
        remove_partials(folder.path)
        for _, entry in folder.entries():
            path = folder.path / entry["file"]
            if read_header(path).get(source_attr) == entry["sha256"]:
                entry.update(bytes=path.stat().st_size, sha256=sha256_of(path))
                folder.stale = True
        return folder

    def entries(self, splits: Sequence[str] | None = None) -> Iterator[tuple[str, dict]]:
        """``(split, manifest entry)`` of every shard, in manifest order."""
        for split, info in self.manifest.get("splits", {}).items():
            if not splits or split in splits:
                for entry in info.get("shards", []):
                    yield split, entry

    def entry(self, file: str) -> dict:
        return next(e for _, e in self.entries() if e["file"] == file)

    def record(self, result: dict) -> None:
        self.entry(result["file"]).update(bytes=result["bytes"], sha256=result["sha256"])

    def save(self, complete: bool) -> Path:
        if complete:
            self.manifest.pop(self.flag, None)
        else:
            self.manifest[self.flag] = False
        return save_if_changed(self.path, self.manifest)


@contextmanager
def locked(folders: Iterable[Path]) -> Iterator[None]:
    """Hold a :class:`~atst_prep.runner.FolderLock` on each folder (created if missing) inside the block."""
    locks: list[FolderLock] = []
    try:
        for folder in folders:
            locks.append(FolderLock(Path(folder)))
        yield
    finally:
        for lock in locks:
            lock.release()


def manifest_folders(root: Path) -> list[Path]:
    """The dataset folders under ``root`` (each holds a manifest)."""
    return [p.parent for p in find_manifests(root)]


_INTERRUPTED = threading.Event()


def _on_sigint(signum, frame) -> None:
    _INTERRUPTED.set()
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return  # raised here it would be dropped: the pass stops at its next check instead
        frame = frame.f_back
    raise KeyboardInterrupt


@contextmanager
def catching_interrupts() -> Iterator[None]:
    """While inside, Ctrl-C (SIGINT) raises KeyboardInterrupt as usual and is also remembered, so that
    :func:`stop_if_interrupted` stops the pass even if the KeyboardInterrupt itself was dropped.

    Only in the main thread, and only where SIGINT has Python's default handler (a caller's own
    handler is left alone).
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _INTERRUPTED.clear()
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _INTERRUPTED.clear()


def stop_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came (see :func:`catching_interrupts`); a cheap check between units
    of work."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


def run_pass(fn: Callable, tasks: Sequence, *args, folders: Mapping[str, Folder], jobs: int = 1,
             backend: str = "joblib", scheduler: str | None = None,
             on_result: Callable[[dict], None] | None = None) -> None:
    """Run ``fn(task, *args)`` for every task and keep each folder's manifest up to date (see the module).

    ``folders`` maps ``str(folder path)`` (what tasks and results name) to each :class:`Folder`;
    folders without tasks are saved once, complete.
    """
    left = Counter(t.folder for t in tasks)
    for key, folder in folders.items():
        folder.save(complete=left[key] == 0)
    with catching_interrupts():
        for result in run_tasks(fn, tasks, *args, jobs=jobs, backend=backend, scheduler=scheduler):
            folder = folders[result["folder"]]
            folder.record(result)
            left[result["folder"]] -= 1
            folder.save(complete=left[result["folder"]] == 0)
            if on_result:
                on_result(result)
            stop_if_interrupted()


__all__ = ["Folder", "ManifestFolder", "catching_interrupts", "locked", "manifest_folders", "remove_partials",
           "run_pass", "save_if_changed", "stop_if_interrupted"]
