"""Running independent tasks on this machine (joblib) or a Dask cluster, and folder locks."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .errors import UserError

BACKENDS = ("joblib", "dask")


class BuildError(UserError, RuntimeError):
    """A build that cannot proceed (locked folder, conflicting shards, no cluster); one line."""


def run_tasks(fn: Callable, tasks: Sequence, *args, jobs: int = 1, backend: str = "joblib",
              scheduler: str | None = None) -> Iterator:
    """Yield ``fn(task, *args)`` for every task as each finishes, in any order.

    ``jobs == 1`` with joblib runs in this process (no start-up cost, easy to
    debug); otherwise loky worker processes, or Dask workers at ``scheduler``
    (a local cluster of ``jobs`` processes when no address is given).
    """
    if backend not in BACKENDS:
        raise BuildError(f"unknown backend {backend!r}; choose {' or '.join(BACKENDS)}")
    if not tasks:
        return
    if backend == "dask":
        yield from _run_dask(fn, tasks, args, jobs, scheduler)
    elif jobs == 1:
        for task in tasks:
            yield fn(task, *args)
    else:
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=jobs, return_as="generator_unordered", backend="loky")
        yield from parallel(delayed(fn)(t, *args) for t in tasks)


def _run_dask(fn, tasks, args, jobs, scheduler) -> Iterator:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise BuildError("--backend dask needs 'dask[distributed]' (pip install 'dask[distributed]')") from None
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise BuildError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
    else:
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = [client.submit(fn, task, *args, pure=False) for task in tasks]
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class FolderLock:
    """An exclusive lock on an output folder, so two builds never interleave."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ".lock"
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise BuildError(f"{folder} is being written by another build (lock {self.path})") from None

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
