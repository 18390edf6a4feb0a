"""``atst prep build-masks``: pairs -> validated, unmixed, masked -> HDF5 shards.

Work is cut into shards of ``shard_size`` consecutive pairs (sorted by name),
one task per shard, so the shard a pair lands in never depends on how many
workers run. A task reads and checks its pairs, computes the stain channels
and Eq. 1 (and, with ``BuildConfig.counter``, detects the nuclei), and writes
the shard under a temporary name that is renamed only when it is complete. A re-run skips every shard that already exists
with the same parameters and inputs, so an interrupted build resumes where it
stopped and ends with the same files as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .engine import Folder, locked, remove_partials, run_pass, save_if_changed, stop_if_interrupted
from .images import InputError
from .manifest import MANIFEST, dataset_manifest, param_diff, read_manifest
from .mask import MaskConfig
from .nuclei.store import BATCH, counter_identity, detect_all, load_counter, nuclei_diff, open_counter
from .pair import prepare_pair, rel_path, size_of
from .runner import BuildError
from .shard_writer import ShardWriter
from .shards import IMAGE_COMPRESSIONS, LAYOUTS, ShardError, as_stored, read_header, sha256_of
from .sources import DatasetSource, Pair, SplitListing

__all__ = ["MANIFEST", "BuildConfig", "BuildError", "BuildSummary", "build", "read_manifest"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class BuildConfig:
    """What defines the contents of the shards (besides the inputs).

    Attributes
    ----------
    mask : MaskConfig
        Parameters of Eq. 1.
    shard_size : int
        Pairs per shard (before rejections).
    store_images : bool
        Keep the H&E and IHC pixels in the shard (training needs them; without
        them the shard refers to the source files by path).
    min_tissue : float
        A tile whose tissue fraction is below this is rejected as blank.
    image_compression : {"none", "lzf", "gzip"}
        HDF5 filter for the stored images (see :mod:`atst_prep.shards`).
    counter : str or None
        Nucleus counter (:func:`atst_prep.nuclei.make_counter` name) run on
        every pair at build time; None leaves ``nuclei/`` pending. It is made
        once here (a missing weights file fails now) to learn its identity.
    counter_options : tuple of (name, value)
        Keyword arguments of the counter (e.g. ``(("channel", "hema+dab"),)``).
    counter_weights : str or None
        Its weights file (``"cppnet"``).
    layout : {"compact", "raw"}
        How images are stored (see :mod:`atst_prep.shards`): the source files'
        bytes (compact, the default: about the size of the source) or decoded
        pixels and densities (raw: ~9 MB per 1024 px pair, the fastest loader).
    window, window_stride : int
        The fixed training windows (px) whose own Eq. 1 masks are stored as the
        auxiliary losses' targets (:func:`atst_prep.mask.window_masks`); training
        crops are these windows, so ``window`` is the training crop (the paper:
        512 px crops of 1024 px tiles). The default stride, half a window, gives
        nine windows per MIST tile; a stride equal to the window gives the public
        code's four fixed crops.
    """

    mask: MaskConfig = MaskConfig()
    shard_size: int = 32
    store_images: bool = True
    min_tissue: float = 0.01
    image_compression: str = "none"
    counter: str | None = None
    counter_weights: str | None = None
    counter_options: tuple[tuple[str, object], ...] = ()
    window: int = 512
    window_stride: int | None = None  # None: half a window
    layout: str = "compact"

    def __post_init__(self) -> None:
        if self.window_stride is None:
            object.__setattr__(self, "window_stride", max(self.window // 2, 1))
        if not (16 <= self.window <= 8192) or not (1 <= self.window_stride <= self.window):
            raise ValueError(f"window must be in [16, 8192] px and window_stride in [1, window], got "
                             f"{self.window} and {self.window_stride}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.image_compression not in IMAGE_COMPRESSIONS:
            raise ValueError(f"image_compression must be one of {', '.join(IMAGE_COMPRESSIONS)}, "
                             f"got {self.image_compression!r}")
        if not (1 <= self.shard_size <= 100_000):
            raise ValueError(f"shard_size must be in [1, 100000], got {self.shard_size}")
        if not (0.0 <= self.min_tissue <= 1.0):
            raise ValueError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.counter_weights is not None and self.counter is None:
            raise ValueError("a nucleus-counter weights file needs a counter (--counter)")
        identity = None
        if self.counter is not None:  # CounterError (a ValueError) for a bad name or weights file
            counter = load_counter(self.counter, self.counter_weights, self.counter_options)
            identity = counter_identity(counter, self.counter_weights)
        object.__setattr__(self, "_nuclei", identity)

    @property
    def nuclei(self) -> dict | None:
        """The counter's identity (see :mod:`atst_prep.nuclei.store`), or None without one."""
        return self._nuclei

    def params(self) -> dict:
        """The parameters as stored in every shard and manifest (``nuclei`` only with a counter)."""
        params = {"mask": asdict(self.mask), "shard_size": self.shard_size,
                  "store_images": self.store_images, "min_tissue": self.min_tissue,
                  "image_compression": self.image_compression,
                  "windows": {"window": self.window, "stride": self.window_stride}, "layout": self.layout}
        if self.nuclei is not None:
            params["nuclei"] = self.nuclei
        return params


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: a shard's pairs and where it goes."""

    dataset_id: str
    split: str
    index: int
    source_root: str
    pairs: tuple[Pair, ...]
    path: str

    @property
    def folder(self) -> str:
        """The dataset folder (``<out>/<id>``) the shard goes to."""
        return str(Path(self.path).parent.parent)

    def fingerprint(self) -> str:
        """Hash of the inputs (names, relative paths, file sizes): detects changed inputs."""
        items = []
        for p in self.pairs:
            items.append([p.name, rel_path(p.he, self.source_root), rel_path(p.ihc, self.source_root),
                          size_of(p.he), size_of(p.ihc), sorted(dict(p.meta).items())])
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()


# --------------------------------------------------------------------------- per shard


def _rejection(split: str, name: str, error: InputError) -> dict:
    return {"split": split, "name": name, "file": error.path, "reason": error.reason}


def build_shard(task: ShardTask, config: BuildConfig) -> dict:
    """Build one shard (runs in a worker); return its manifest entry.

    Bad inputs are recorded in the shard's ``/rejected`` and returned; any
    other exception propagates and leaves no shard behind.
    """
    import cv2

    cv2.setNumThreads(1)  # one task per core; OpenCV's own threads would oversubscribe
    header = {"dataset_id": task.dataset_id, "split": task.split, "shard_index": task.index,
              "source_root": task.source_root, "params": config.params(),
              "inputs_fingerprint": task.fingerprint()}
    rejected = []
    counter = open_counter(config.counter, config.counter_weights, config.nuclei,
                           config.counter_options) if config.counter else None
    Path(task.path).parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(Path(task.path), header, store_images=config.store_images,
                     image_compression=config.image_compression, counter=config.nuclei,
                     layout=config.layout) as writer:
        for start in range(0, len(task.pairs), BATCH):  # a batch of tiles at a time for counters that batch
            prepared = []
            for pair in task.pairs[start:start + BATCH]:
                stop_if_interrupted()  # a big shard answers Ctrl-C between pairs
                try:
                    prepared.append(prepare_pair(pair, task.source_root, config))
                except InputError as exc:
                    record = _rejection(task.split, pair.name, exc)
                    writer.reject(record)
                    rejected.append(record)
            stored = [(as_stored(p.dab), as_stored(p.hema)) for p in prepared] if counter else []
            for p, nuclei in zip(prepared, detect_all(counter, stored) if counter else [None] * len(prepared)):
                writer.add(p, nuclei)
        n_samples = writer.n_samples
        path = writer.commit()
    return _entry(task, path, n_samples, rejected)


def _entry(task: ShardTask, path: Path, n_samples: int, rejected: list[dict]) -> dict:
    return {"folder": task.folder, "dataset_id": task.dataset_id, "file": f"{task.split}/{path.name}", "split": task.split, "index": task.index,
            "n_pairs": len(task.pairs), "n_samples": n_samples, "bytes": path.stat().st_size,
            "sha256": sha256_of(path), "rejected": rejected}


# --------------------------------------------------------------------------- planning


@dataclass
class DatasetPlan(Folder):
    """The shards of one dataset, those already done and those to build; the engine's folder."""

    source: DatasetSource
    out_dir: Path
    tasks: list[ShardTask]
    listings: dict[str, SplitListing]
    done: dict[str, dict] = field(default_factory=dict)      # task.path -> manifest entry
    unpaired: list[dict] = field(default_factory=list)       # rejections found while listing

    params: dict = field(default_factory=dict)                # the build's parameters, for the manifest

    @property
    def path(self) -> Path:
        return self.out_dir

    @property
    def pending(self) -> list[ShardTask]:
        return [t for t in self.tasks if t.path not in self.done]

    def record(self, entry: dict) -> None:
        self.done[str(self.out_dir / entry["file"])] = entry

    def save(self, complete: bool = True) -> Path:
        """The manifest of what is done so far (each split says whether it is complete)."""
        return save_if_changed(self.out_dir, dataset_manifest(self, self.params))


def plan_dataset(source: DatasetSource, out: Path, config: BuildConfig,
                 splits: Sequence[str] | None = None, *, overwrite: bool = False) -> DatasetPlan:
    """List the pairs of ``source`` and cut them into shard tasks under ``out/<id>/``."""
    out_dir = Path(out) / source.id
    listings, tasks, unpaired = {}, [], []
    for split in source.splits:
        if splits and split not in splits:
            continue
        listing = source.list_split(split)
        listings[split] = listing
        for path in listing.unmatched_he:
            unpaired.append({"split": split, "name": Path(path).stem, "file": str(path),
                             "reason": "H&E tile has no IHC partner"})
        for path in listing.unmatched_ihc:
            unpaired.append({"split": split, "name": Path(path).stem, "file": str(path),
                             "reason": "IHC tile has no H&E partner"})
        for path in listing.duplicates:
            unpaired.append({"split": split, "name": Path(path).stem, "file": str(path),
                             "reason": "duplicate name (another file in the folder has the same stem)"})
        pairs = listing.pairs
        for index, start in enumerate(range(0, len(pairs), config.shard_size)):
            path = out_dir / split / f"shard-{index:05d}.h5"
            tasks.append(ShardTask(source.id, split, index, str(source.root),
                                   tuple(pairs[start:start + config.shard_size]), str(path)))
    plan = DatasetPlan(source, out_dir, tasks, listings, unpaired=unpaired, params=config.params())
    _reuse_finished(plan, config, overwrite)
    return plan


def _reuse_finished(plan: DatasetPlan, config: BuildConfig, overwrite: bool) -> None:
    """Keep shards that exist with the same parameters and inputs; clear the rest."""
    wanted = {t.path: t for t in plan.tasks}
    remove_partials(plan.out_dir)  # left by a killed build
    for split in plan.listings:
        folder = plan.out_dir / split
        if not folder.is_dir():
            continue
        for existing in sorted(folder.glob("shard-*.h5")):
            task = wanted.get(str(existing))
            try:
                header = read_header(existing)
            except ShardError:
                header = None
            if header is not None and header.get("params") != config.params():
                if not overwrite:
                    raise BuildError(_conflict(existing, header.get("params"), config))
            if task is None or header is None or header.get("params") != config.params() \
                    or header.get("inputs_fingerprint") != task.fingerprint():
                log.info("removing outdated shard %s", existing)
                existing.unlink()
                continue
            plan.done[task.path] = _entry(task, existing, int(header["n_samples"]), header["rejected"])


def _conflict(existing: Path, old: dict | None, config: BuildConfig) -> str:
    """Why ``existing`` cannot be reused (a different counter is named, not listed parameter by parameter)."""
    new = config.params()
    if not isinstance(old, dict):
        return f"{existing} was built with unknown parameters; use --overwrite to replace it or choose another --out"
    rest_old, rest_new = ({k: v for k, v in p.items() if k != "nuclei"} for p in (old, new))
    diffs = [param_diff(rest_old, rest_new)] if rest_old != rest_new else []
    diffs += [nuclei_diff(old.get("nuclei"), new.get("nuclei"))] if old.get("nuclei") != new.get("nuclei") else []
    hint = ""
    if rest_old == rest_new and old.get("nuclei") is None:
        hint = f" (or count them in place: 'atst prep count-nuclei --counter {config.counter}')"
    elif rest_old == rest_new and config.counter is None:
        hint = f" (or keep their nuclei: --counter {old['nuclei'].get('counter')})"
    return (f"{existing} was built with other parameters ({', '.join(diffs)}); "
            f"use --overwrite to replace these shards or choose another --out{hint}")


@dataclass
class BuildSummary:
    """What a build did, for the CLI's closing lines and exit code."""

    datasets: list[str] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)
    pairs: int = 0
    samples: int = 0
    shards_built: int = 0
    shards_reused: int = 0
    rejected: list[dict] = field(default_factory=list)

    def merge(self, other: "BuildSummary") -> None:
        """Add another build's results (the CLI builds datasets of different markers one after another)."""
        for key in ("datasets", "manifests", "rejected"):
            getattr(self, key).extend(getattr(other, key))
        for key in ("pairs", "samples", "shards_built", "shards_reused"):
            setattr(self, key, getattr(self, key) + getattr(other, key))


def build(sources: Iterable[DatasetSource], out: Path, config: BuildConfig, *,
          splits: Sequence[str] | None = None, jobs: int = 1, backend: str = "joblib",
          scheduler: str | None = None, overwrite: bool = False,
          on_start: Callable[[int, int], None] | None = None,
          on_shard: Callable[[dict], None] | None = None,
          on_reject: Callable[[dict], None] | None = None) -> BuildSummary:
    """Build the shards of every source; see the module docstring.

    ``on_start(total_pairs, pairs_already_done)`` is called once before any
    work, ``on_shard(entry)`` after each finished shard and ``on_reject(record)``
    for each rejected input, in the order they are known.
    """
    sources = list(sources)
    summary = BuildSummary()

    def reject(records: Iterable[dict]) -> None:
        for record in records:
            summary.rejected.append(record)
            if on_reject:
                on_reject(record)

    def built(entry: dict) -> None:
        summary.shards_built += 1
        reject(entry["rejected"])
        if on_shard:
            on_shard(entry)

    with locked(Path(out) / s.id for s in sources):
        plans = [plan_dataset(s, out, config, splits, overwrite=overwrite) for s in sources]
        for plan in plans:
            reject(plan.unpaired)
            reject(r for entry in plan.done.values() for r in entry["rejected"])
        if on_start:
            on_start(sum(len(t.pairs) for p in plans for t in p.tasks),
                     sum(e["n_pairs"] for p in plans for e in p.done.values()))
        summary.shards_reused = sum(len(p.done) for p in plans)
        run_pass(build_shard, [t for p in plans for t in p.pending], config, folders={str(p.out_dir): p for p in plans},
                 jobs=jobs, backend=backend, scheduler=scheduler, on_result=built)
        for plan in plans:
            summary.datasets.append(plan.source.id)
            summary.manifests.append(plan.save())
            summary.pairs += sum(len(t.pairs) for t in plan.tasks)
            summary.samples += sum(e["n_samples"] for e in plan.done.values())
    return summary
