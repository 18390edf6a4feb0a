"""Resumable training state: checkpoints, random-number states, the data order.

A checkpoint holds everything that decides what happens next — the four
networks, their optimisers and schedulers, both image pools, every random
generator and the position in the data — so a resumed run computes the same
losses as one that never stopped. Files are written under a temporary name
and renamed, and are read with ``weights_only=True``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from atst_prep.errors import UserError

FORMAT = "atst-trainer"
VERSION = 1


def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) generator states as plain tensors and ints."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, torch.from_numpy(np.asarray(keys, np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    tmp.replace(path)


def load(path: Path) -> dict:
    """Read a trainer checkpoint; FileNotFoundError / UserError with one clear line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not an ATST trainer checkpoint")
    return payload


def latest(folder: Path) -> Path | None:
    """The newest ``step-*.pt`` in ``folder`` (by step number), or None."""
    found = sorted(Path(folder).glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    return found[-1] if found else None


class EpochOrder(torch.utils.data.Sampler):
    """Sample indices in a seeded random order per epoch, split across processes, resumable mid-epoch.

    Every process sees ``ceil(n / world)`` indices per epoch (the order is
    padded by wrapping, as DistributedSampler does), so all take the same
    number of steps. ``start`` skips indices already consumed before a restart.

    With ``partners=True`` it yields ``(index, partner)``: the partner is the
    index before it in this process's order of the epoch (the first one's is
    the last's), i.e. a random other pair, each pair once per epoch.
    :class:`atst_model.data.ShardPairs` takes its unpaired IHC from it, so the
    IHC decoded for one item serves the next (compact shards decode each image
    once per epoch instead of twice). The previous, not the next: a loader's
    threads start items in order, so the partner's IHC has been asked for
    before, and a thread does not wait for another to decode it. Restarts
    resume with the same pairs.
    """

    def __init__(self, n: int, *, seed: int, rank: int = 0, world: int = 1, partners: bool = False) -> None:
        self.n, self.seed, self.rank, self.world, self.partners = n, seed, rank, world, partners
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def per_process(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        total = self.per_process() * self.world
        order = (order * (total // max(self.n, 1) + 1))[:total]
        mine = order[self.rank::self.world]
        if self.partners:
            mine = list(zip(mine, mine[-1:] + mine[:-1]))
        yield from mine[self.start:]

    def __len__(self) -> int:
        return self.per_process() - self.start
