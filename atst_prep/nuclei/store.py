"""Nuclei into shards: counters by name, their identity, and ``atst prep count-nuclei``.

A counter's *identity* ``{"counter", "version", "params"[, "weights_sha256"]}``
is what a shard records about the counter that filled its ``nuclei/`` groups
(root ``params["nuclei"]``, and per sample), so resuming can tell counts made
by another counter or another weights file from its own.

``count_nuclei`` counts the samples of shards that already exist, one task per
shard (joblib or Dask, as ``build-masks``). A task copies its shard to
``.shard-XXXXX.h5.<pid>.partial`` in the same folder, checking the copy's
SHA-256 against the manifest on the way, writes the nuclei of every sample
into the copy, fsyncs it and renames it over the original: a shard is always
either wholly old or wholly new, and a killed run leaves only ``.partial``
files, removed by the next run. Shards already counted with the same counter
are skipped; counts of another counter are replaced only with ``overwrite``.
The manifest's size and checksum of each rewritten shard are updated as it
finishes, under the folder's lock. A rewritten shard records the checksum of
the shard it replaced (root attribute ``nuclei_source_sha256``): a run killed
between a rename and the manifest update leaves a manifest still listing that
old checksum, which the next run recognises and corrects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..engine import ManifestFolder, locked, run_pass
from ..errors import UserError
from ..manifest import MANIFEST, find_manifests, param_diff
from ..rewrite import rewrite_shard
from ..runner import BuildError
from ..shard_writer import write_nuclei
from ..shards import read_header, sample_channels, sha256_of
from . import make_counter

#: The value of ``--counter`` that turns counting off.
NO_COUNTER = "none"


class CounterError(UserError):
    """A counter that cannot be made (unknown name, missing or unusable weights); one line."""


def load_counter(name: str, weights: str | Path | None = None, options: tuple = ()):
    """``make_counter(name, weights, **options)``, failures turned into one-line :class:`CounterError`."""
    weights = Path(weights) if weights is not None else None
    try:
        return make_counter(name, weights=weights, **dict(options))
    except FileNotFoundError as exc:
        if exc.filename and exc.strerror:
            raise CounterError(f"{exc.filename}: {exc.strerror} (--nuclei-weights)") from None
        raise CounterError(str(exc)) from None
    except ImportError as exc:
        raise CounterError(f"nucleus counter {name!r} is not available here ({exc})") from None
    except TypeError:
        if weights is None:
            raise
        raise CounterError(f"nucleus counter {name!r} takes no weights file (--nuclei-weights)") from None
    except ValueError as exc:
        raise CounterError(str(exc).splitlines()[0] if str(exc) else repr(exc)) from None


def counter_identity(counter, weights: str | Path | None = None) -> dict:
    """What identifies ``counter``'s results: name, version, params, and the weights file's SHA-256."""
    params = counter.params()
    identity = {"counter": counter.name, "version": str(counter.version), "params": params}
    if weights is not None:
        identity["weights_sha256"] = params.get("weights_sha256") or sha256_of(Path(weights))
    return json.loads(json.dumps(identity, sort_keys=True))  # as it reads back from JSON


def describe(identity: dict | None) -> str:
    """``"classical v1"``, ``"cppnet v1 (weights 1a2b3c4d5e6f)"`` or ``"no counter"``."""
    if not identity:
        return "no counter"
    text = f"{identity.get('counter')} v{identity.get('version')}"
    if identity.get("weights_sha256"):
        text += f" (weights {identity['weights_sha256'][:12]})"
    return text


def nuclei_diff(old: dict | None, new: dict | None) -> str:
    """How two counter identities differ, for error messages."""
    if describe(old) != describe(new):
        return f"nuclei from {describe(old)} vs {describe(new)}"
    return param_diff({"nuclei": old}, {"nuclei": new})


def open_counter(name: str, weights: str | Path | None, expected: dict, options: tuple = ()):
    """Make the counter in a worker and check it is the one the run was planned with."""
    counter = load_counter(name, weights, options)
    found = counter_identity(counter, weights)
    if found != expected:
        raise BuildError(f"nucleus counter {name!r} in this worker is {describe(found)} with params "
                         f"{found['params']}, the run was planned with {describe(expected)} {expected['params']} "
                         "(weights file or package changed mid-run?)")
    return counter


#: Tiles handed together to a counter that batches (``detect_many``: CPP-Net on a GPU).
BATCH = 8


def detect_all(counter, channels: list[tuple]) -> list:
    """``counter.detect(hema, dab)`` of each ``(dab, hema)`` pair (densities as stored), through
    ``counter.detect_many`` where the counter has it (one network batch of tiles on a GPU)."""
    many = getattr(counter, "detect_many", None)
    if many is not None:
        return many([(hema, dab) for dab, hema in channels])
    return [counter.detect(hema, dab) for dab, hema in channels]


# --------------------------------------------------------------------------- one shard (a worker)


@dataclass(frozen=True)
class CountTask:
    """One shard to (re)count."""

    folder: str      # the dataset folder holding the manifest
    file: str        # the shard, relative to ``folder`` (as in the manifest)
    sha256: str      # the manifest's checksum of the shard as it is now
    n_samples: int


def count_shard(task: CountTask, name: str, weights: str | None, identity: dict) -> dict:
    """Count the nuclei of every sample of one shard and replace it atomically; return its new entry."""
    import cv2

    cv2.setNumThreads(1)  # one task per core
    counter = open_counter(name, weights, identity)
    path = Path(task.folder) / task.file
    n_nuclei = 0
    with rewrite_shard(path, task.sha256) as f:
        samples = f["samples"]
        keys = sorted(samples)
        for i in range(0, len(keys), BATCH):
            chunk = keys[i:i + BATCH]
            # densities stored, or unmixed from the compact layout's IHC: the same values
            for key, nuclei in zip(chunk, detect_all(counter, [sample_channels(samples[k]) for k in chunk])):
                write_nuclei(samples[key], nuclei, identity)
                n_nuclei += len(nuclei.areas)
        params = json.loads(f.attrs["params"])
        params["nuclei"] = identity
        f.attrs["params"] = json.dumps(params, sort_keys=True)
        f.attrs["nuclei_source_sha256"] = task.sha256  # lets a rerun finish the manifest after a kill
    return {"folder": task.folder, "file": task.file, "n_samples": task.n_samples, "n_nuclei": n_nuclei,
            "bytes": path.stat().st_size, "sha256": sha256_of(path)}


# --------------------------------------------------------------------------- a dataset folder


FLAG, SOURCE_ATTR = "nuclei_complete", "nuclei_source_sha256"


def _plan_folder(manifest_path: Path, identity: dict, overwrite: bool) -> tuple[ManifestFolder, list, list]:
    """The folder (its manifest naming ``identity``), the shards to count, and those already counted."""
    folder = ManifestFolder.open(manifest_path, FLAG, SOURCE_ATTR)
    folder.manifest.setdefault("params", {})["nuclei"] = identity
    tasks, skipped, conflicts = [], [], []
    for _, entry in folder.entries():
        current = read_header(folder.path / entry["file"]).get("params", {}).get("nuclei")
        if current == identity:
            skipped.append(entry)
            continue
        if current and not overwrite:
            conflicts.append((entry["file"], current))
        tasks.append(CountTask(str(folder.path), entry["file"], entry["sha256"], int(entry["n_samples"])))
    if conflicts:
        file, current = conflicts[0]
        more = f" (and {len(conflicts) - 1} more shards)" if len(conflicts) > 1 else ""
        raise BuildError(f"{folder.path / file}{more} holds nuclei from {describe(current)}; use --overwrite to "
                         f"recount with {describe(identity)}")
    return folder, tasks, skipped


@dataclass
class CountSummary:
    """What a count did, for the CLI's closing lines."""

    manifests: list[Path] = field(default_factory=list)
    shards_counted: int = 0
    shards_skipped: int = 0
    samples: int = 0
    nuclei: int = 0


def count_nuclei(root: Path, counter: str, weights: str | Path | None = None, *, jobs: int = 1,
                 backend: str = "joblib", scheduler: str | None = None, overwrite: bool = False,
                 on_start: Callable[[int, int], None] | None = None,
                 on_shard: Callable[[dict], None] | None = None) -> CountSummary:
    """Count nuclei in every shard listed by the manifests under ``root``; see the module docstring.

    ``on_start(total_samples, samples_already_counted)`` is called once before
    any work and ``on_shard(entry)`` after each rewritten shard.
    """
    if counter == NO_COUNTER:
        raise CounterError(f"--counter {NO_COUNTER}: nothing to count (choose a nucleus counter)")
    weights = str(weights) if weights is not None else None
    identity = counter_identity(load_counter(counter, weights), weights)
    manifest_paths = find_manifests(root)
    summary = CountSummary()

    def counted(result: dict) -> None:
        summary.shards_counted += 1
        summary.samples += result["n_samples"]
        summary.nuclei += result["n_nuclei"]
        if on_shard:
            on_shard(result)

    with locked(p.parent for p in manifest_paths):
        plans = [_plan_folder(path, identity, overwrite) for path in manifest_paths]
        skipped = [e for _, _, done in plans for e in done]
        tasks = [t for _, todo, _ in plans for t in todo]
        summary.shards_skipped = len(skipped)
        if on_start:
            on_start(sum(t.n_samples for t in tasks) + sum(e["n_samples"] for e in skipped),
                     sum(e["n_samples"] for e in skipped))
        run_pass(count_shard, tasks, counter, weights, identity, folders={str(f.path): f for f, _, _ in plans},
                 jobs=jobs, backend=backend, scheduler=scheduler, on_result=counted)
        summary.manifests = [f.path / MANIFEST for f, _, _ in plans]
    return summary
