"""Batches assembled by threads of the training process: a DataLoader without worker processes.

Why threads: a worker process hands each batch to the trainer through a new
shared-memory segment, and on a virtual machine the page faults of those
fresh pages cost about as much as reading the crops themselves (20 MB per
batch of eight 512 crops; see ``benchmarks/loader.py``). Threads share the
trainer's memory, so a batch is one ``torch.stack`` into reused heap memory
(see :func:`atst_model.data.keep_freed_memory`). Most of an item's time is
spent in OpenCV and HDF5 chunk reads; OpenCV releases the GIL, and h5py
serialises its calls behind its own lock, which makes sharing the open
files between threads safe.

Batches come out in sampler order, whatever order the threads finish in;
an item depends only on ``(seed, epoch, index)``, so the batches equal a
``DataLoader``'s with the same sampler (tested).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator, Sequence

import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

__all__ = ["ThreadedLoader"]


class ThreadedLoader:
    """Iterate collated batches of ``dataset`` in the order of ``sampler``, built by ``threads`` threads.

    Parameters
    ----------
    dataset : map-style dataset
        Safe to call from several threads (``ShardPairs`` is).
    batch_size : int
    sampler : iterable of int
        Indices, read once per ``iter()`` (``EpochOrder`` resumes mid-epoch).
    threads : int
        Threads building batches; 0 builds each batch in the caller's thread.
    drop_last : bool
        Drop a last, incomplete batch.
    pin_memory : bool
        Copy batch tensors into page-locked memory, so host-to-GPU copies can
        run asynchronously (``non_blocking=True``).
    prefetch : int
        Batches built ahead, per thread.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, sampler: Iterable[int], threads: int = 2,
                 drop_last: bool = True, pin_memory: bool = False, prefetch: int = 2) -> None:
        if batch_size < 1 or threads < 0 or prefetch < 1:
            raise ValueError(f"need batch_size >= 1, threads >= 0, prefetch >= 1; got {batch_size}, {threads}, "
                             f"{prefetch}")
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.threads, self.drop_last, self.pin_memory, self.prefetch = threads, drop_last, pin_memory, prefetch

    def _batches(self) -> list[list[int]]:
        indices, b = list(self.sampler), self.batch_size
        batches = [indices[i:i + b] for i in range(0, len(indices), b)]
        if batches and self.drop_last and len(batches[-1]) < b:
            batches.pop()
        return batches

    def __len__(self) -> int:
        return len(self._batches())

    def _build(self, indices: Sequence[int]) -> dict:
        batch = default_collate([self.dataset[i] for i in indices])
        if self.pin_memory:
            batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return batch

    def __iter__(self) -> Iterator[dict]:
        batches = iter(self._batches())
        if self.threads == 0:
            yield from map(self._build, batches)
            return
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="atst-loader")
        pending: deque[Future] = deque()
        try:
            for indices in batches:
                pending.append(pool.submit(self._build, indices))
                if len(pending) >= self.threads * self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # also when the consumer stops early: drop what was not started, wait for the rest
            pool.shutdown(wait=True, cancel_futures=True)
