"""The shard loader alone: 512 crops per second from 1024x1024 shards.

Run: ``python benchmarks/loader.py [--shards DIR] [--pairs 8] [--epochs 40]``.

Without ``--shards`` it writes synthetic 1024 px MIST-like pairs and builds
shards from them (classical nucleus counter, images stored uncompressed as
``build-masks`` does by default) in a temporary folder. Then it times
``ShardPairs(crop=512)`` items (paired H&E and IHC, mask, DAB mean, counts,
unpaired IHC), float32 items and ``raw=True`` (uint8) items: ``__getitem__``
alone (ms per item), then batches of 8 (default collate): a ``DataLoader``
in the main process and with 2 worker processes, and the trainer's default,
:class:`atst_model.loader.ThreadedLoader` with 2 threads and the trainer's sampler
(``EpochOrder(partners=True)``: each item's unpaired IHC is the next pair's). Each run reads every pair for
``--epochs`` epochs (new crops each epoch), after one warm-up epoch so the OS
page cache holds the shards, as it does in training after the first epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atst_model.data import ShardPairs  # noqa: E402
from atst_model.loader import ThreadedLoader  # noqa: E402
from atst_model.train.state import EpochOrder  # noqa: E402
from atst_prep.build import BuildConfig, build  # noqa: E402
from atst_prep.mask import MaskConfig  # noqa: E402
from atst_prep.sources import detect  # noqa: E402
from atst_prep.synth import SynthConfig, write_dataset  # noqa: E402


def make_shards(root: Path, pairs: int, crop: int = 512) -> list[Path]:
    write_dataset(root / "data", n_train=pairs, n_val=0, config=SynthConfig(size=1024), marker="HER2", seed=5)
    config = BuildConfig(mask=MaskConfig(closing_radius=30), shard_size=4, counter="classical", window=crop)
    build(detect(root / "data"), root / "shards", config, jobs=2)
    return sorted((root / "shards").rglob("shard-*.h5"))


class Epochs(Dataset):
    """``k`` epochs of ``dataset`` as one long dataset, so a few pairs make a long run.

    Takes plain indices or the trainer's ``(index, partner)`` pairs (see :func:`trainer_order`).
    """

    def __init__(self, dataset: ShardPairs, k: int) -> None:
        self.dataset, self.k = dataset, k

    def __len__(self) -> int:
        return len(self.dataset) * self.k

    def __getitem__(self, i: int | tuple[int, int]) -> dict:
        n = len(self.dataset)
        i, partner = i if isinstance(i, tuple) else (i, None)
        self.dataset.set_epoch(1 + i // n)  # each worker has its own copy
        return self.dataset[i % n if partner is None else (i % n, partner % n)]


def trainer_order(n: int, k: int) -> list[tuple[int, int]]:
    """The trainer's sampler (``EpochOrder(partners=True)``) over ``k`` epochs, in :class:`Epochs` indices."""
    order = EpochOrder(n, seed=0, partners=True)
    out = []
    for epoch in range(1, k + 1):
        order.set_position(epoch, 0)
        out += [((epoch - 1) * n + i, (epoch - 1) * n + j) for i, j in order]
    return out


def crops_per_second(loader) -> float:
    start, done = time.perf_counter(), 0
    for batch in loader:
        done += len(batch["name"]) if isinstance(batch, dict) and isinstance(batch["name"], list) else 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, help="folder of shards (default: build synthetic ones)")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=150, help="crops = pairs x epochs (long enough that worker start-up fades)")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = sorted(args.shards.rglob("shard-*.h5")) if args.shards else make_shards(Path(tmp), args.pairs, args.crop)
        rows = []
        for raw in (False, True):
            ds = ShardPairs(paths, crop=args.crop, seed=0, raw=raw)
            for i in range(len(ds)):  # warm-up: page cache
                ds[i]
            data = Epochs(ds, args.epochs)
            row = {"raw": raw, "samples": len(ds), "crops": len(data), "crop": args.crop,
                   "MB_per_item": sum(v.numel() * v.element_size() for v in ds[0].values()
                                      if isinstance(v, torch.Tensor)) / 2**20}
            row["ms_per_item"] = 1e3 / crops_per_second(data[i] for i in range(len(data)))
            row["crops_per_s_1_process"] = crops_per_second(DataLoader(data, batch_size=args.batch))
            row["crops_per_s_2_workers"] = crops_per_second(DataLoader(data, batch_size=args.batch, num_workers=2))
            row["crops_per_s_2_threads"] = crops_per_second(
                ThreadedLoader(data, batch_size=args.batch, sampler=trainer_order(len(ds), args.epochs), threads=2))
            rows.append({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
