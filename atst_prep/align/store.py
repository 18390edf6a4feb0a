"""``atst prep filter-misaligned``: score every pair of existing shards, select, write back.

Three passes per run, over every dataset folder (manifest) under the root:

1. **Score** (one task per shard, joblib or Dask, read-only): each sample's
   H&E and IHC (from the shard, or the source files for ``--no-images``
   shards) and stored IHC hematoxylin -> :func:`.score.align_pair`. Samples
   already scored with the same method, version and parameters are read
   back, not recomputed.
2. **Select** (here, per dataset): :func:`.select.select` over all scored pairs.
3. **Write** (one task per shard whose stored results differ from what
   was decided): like ``count-nuclei``, the shard is copied to
   ``.shard-XXXXX.h5.<pid>.partial`` (its SHA-256 checked against the
   manifest on the way), each sample's ``alignment/`` attributes (and with
   ``register``, ``mask_registered``, ``dab_registered`` and
   ``nuclei/centroids_registered``) are written into the copy, which is
   fsynced and renamed over the original; the manifest's checksum follows
   under the folder lock. The root attribute ``alignment_source_sha256``
   lets a rerun repair a manifest left behind by a kill between the two.

Then the keep-list CSV (one per dataset), the manifest's ``alignment``
summary and, with ``pictures``, the dataset's pictures
(:func:`.pictures.dataset_pictures`: ``alignment-scores.png`` and
``alignment-worst.png`` beside the manifest) are written, each only when
its content changes, so a second run with the same options rewrites
nothing (byte-identical files). The root ``params`` are left alone:
``build-masks`` compares them to resume.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np

from ..engine import ManifestFolder, locked, run_pass
from ..images import InputError
from ..manifest import MANIFEST, find_manifests, write_if_changed
from ..rewrite import rewrite_shard
from ..runner import BuildError, run_tasks
from ..shard_writer import create_like, write_channel
from ..shards import REGISTERED_KEYS, _plain, encode_density, pair_images, read_header, sample_channels, sha256_of
from .pictures import dataset_pictures, encode_png
from .register import register_image, register_points
from .score import METHOD, VERSION, AlignConfig, Alignment, align_pair, unscorable
from .select import RULES, Selection, select

KEEP_COLUMNS = ("name", "split", "shard", "shift_x", "shift_y", "rotation", "similarity", "overlap", "score",
                "kept", "reason")
_NUMBERS = ("shift_x", "shift_y", "rotation", "similarity", "overlap", "score")
_UNREADABLE = "source image unreadable"


def identity(config: AlignConfig) -> dict:
    """What identifies a scoring: method, version, parameters (as it reads back from JSON)."""
    return json.loads(json.dumps({"method": METHOD, "version": VERSION, "params": config.params()}, sort_keys=True))


def keep_list_dir() -> Path:
    """Where keep-lists go by default: the checkout's ``data_manifests/``, or ``./data_manifests`` when installed."""
    from ..resources import in_checkout, manifests_dir

    return manifests_dir() if in_checkout() else Path("data_manifests")


# --------------------------------------------------------------------------- pass 1: score (a worker)


@dataclass(frozen=True)
class ShardRef:
    folder: str      # the dataset folder holding the manifest
    file: str        # relative to folder, as in the manifest
    split: str
    n_samples: int


def _stored(g: h5py.Group, ident: dict) -> Alignment | None:
    a = g.attrs
    if _plain(a.get("status")) not in ("done", "unscorable") or _plain(a.get("method")) != ident["method"] \
            or _plain(a.get("version")) != ident["version"] or json.loads(a.get("params", "null")) != ident["params"]:
        return None
    reason = _plain(a.get("unscorable_reason", ""))
    if reason.startswith(_UNREADABLE):
        return None  # the source files may be back: try again
    return Alignment(status=_plain(a["status"]), **{k: float(a[k]) for k in _NUMBERS}, reason=reason)


def score_shard(ref: ShardRef, config: AlignConfig) -> dict:
    """Alignments of every sample of one shard; reuses results stored with the same identity."""
    import cv2

    cv2.setNumThreads(1)  # one task per core
    ident = identity(config)
    path = Path(ref.folder) / ref.file
    header = read_header(path)
    root = Path(header.get("source_root", "."))
    samples, computed = [], 0
    with h5py.File(path, "r") as f:
        for key in sorted(f["samples"]):
            g = f["samples"][key]
            group = g["alignment"] if "alignment" in g else None
            found = _stored(group, ident) if group is not None else None
            if found is None:
                found = _score_sample(g, root, config)
                computed += 1
            stored = {k: _plain(v) for k, v in group.attrs.items()} if group is not None else {}
            registered = {k: tuple(float(v) for v in g[k].attrs["shift"]) for k in REGISTERED_KEYS if k in g}
            samples.append({"key": key, "name": _plain(g.attrs["name"]), "side": int(max(g["mask"].shape)),
                            "alignment": found, "stored": stored, "registered": registered,
                            "nuclei_registered": "nuclei" in g and "centroids_registered" in g["nuclei"],
                            "nuclei_done": "nuclei" in g and "centroids" in g["nuclei"]})
    return {"folder": ref.folder, "file": ref.file, "split": ref.split, "samples": samples, "computed": computed,
            "alignment_root": _plain(header.get("alignment")) if "alignment" in header else None}


def _score_sample(g: h5py.Group, root: Path, config: AlignConfig) -> Alignment:
    try:
        he, ihc = pair_images(g, root)
    except InputError as exc:
        return unscorable(f"{_UNREADABLE} ({exc})")
    return align_pair(he, sample_channels(g, ihc)[1], ihc, config)


# --------------------------------------------------------------------------- pass 3: write (a worker)


@dataclass(frozen=True)
class WriteTask:
    folder: str
    file: str
    sha256: str                      # the manifest's checksum of the shard as it is now
    root_attr: str                   # JSON for the root attribute ``alignment``
    samples: tuple                   # (key, attrs dict, shift or None when not registering)
    n_samples: int


def _attrs(a: Alignment, decision, ident: dict) -> dict:
    return {"status": a.status, **{k: float(getattr(a, k)) for k in _NUMBERS}, "kept": bool(decision.kept),
            "rule": decision.rule, "reason": decision.reason, "unscorable_reason": a.reason,
            "method": ident["method"], "version": ident["version"],
            "params": json.dumps(ident["params"], sort_keys=True)}


def write_shard(task: WriteTask) -> dict:
    """Write the alignment (and registered targets) of every sample into a copy, then replace the shard."""
    path = Path(task.folder) / task.file
    with rewrite_shard(path, task.sha256) as f:
        for key, attrs, shift in task.samples:
            g = f["samples"][key]
            group = g.require_group("alignment")
            for name in list(group.attrs):
                del group.attrs[name]
            for name, value in attrs.items():
                group.attrs[name] = value
            if shift is not None:
                _register(g, shift)
        f.attrs["alignment"] = task.root_attr
        f.attrs["alignment_source_sha256"] = task.sha256
    return {"folder": task.folder, "file": task.file, "n_samples": task.n_samples,
            "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def _register(g: h5py.Group, shift: tuple[float, float]) -> None:
    for key, source in REGISTERED_KEYS.items():
        if source in g:
            d = create_like(g, key, register_image(g[source][()], shift), g[source])
            for name, value in g[source].attrs.items():  # units, scale of the DAB
                d.attrs[name] = value
        else:  # the compact layout's DAB, unmixed from its IHC, stored as the raw layout stores it
            d = write_channel(g, key, register_image(encode_density(sample_channels(g)[0]), shift))
        d.attrs["shift"] = np.array(shift, np.float64)
    nuclei = g.get("nuclei")
    if nuclei is not None and "centroids" in nuclei:
        if "centroids_registered" in nuclei:
            del nuclei["centroids_registered"]
        d = nuclei.create_dataset("centroids_registered", data=register_points(nuclei["centroids"][()], shift),
                                  track_times=False)
        d.attrs["shift"] = np.array(shift, np.float64)


# --------------------------------------------------------------------------- a dataset folder


FLAG, SOURCE_ATTR = "alignment_complete", "alignment_source_sha256"


@dataclass
class _Folder(ManifestFolder):
    refs: list[ShardRef] = field(default_factory=list)
    registered: bool = False                              # some samples hold registered targets
    scored: list[dict] = field(default_factory=list)      # score_shard results


def _plan_folder(manifest_path: Path, splits: Sequence[str] | None) -> _Folder:
    plan = _Folder.open(manifest_path, FLAG, SOURCE_ATTR)
    plan.refs = [ShardRef(str(plan.path), e["file"], split, int(e["n_samples"]))
                 for split, e in plan.entries(splits) if e["n_samples"]]
    return plan


@dataclass
class FilterSummary:
    """What a run did, for the CLI's closing lines; ``pictures`` are in the folders of ``manifests``, in order."""

    manifests: list[Path] = field(default_factory=list)
    keep_lists: list[Path] = field(default_factory=list)
    pictures: list[Path] = field(default_factory=list)
    pairs: int = 0
    computed: int = 0
    kept: int = 0
    dropped: dict = field(default_factory=lambda: {r: 0 for r in RULES})
    unscorable: list[dict] = field(default_factory=list)     # keep-list rows of unscorable pairs
    shards_written: int = 0
    rows: dict = field(default_factory=dict)                  # dataset folder -> keep-list rows
    cuts: dict = field(default_factory=dict)                  # dataset folder -> score cut for the histogram


def _fmt(value: float, digits: int) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def keep_list_csv(rows: list[dict]) -> str:
    """The keep-list text: :data:`KEEP_COLUMNS`, one row per pair, sorted by split and name."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(KEEP_COLUMNS)
    for r in sorted(rows, key=lambda r: (r["split"], r["name"])):
        a = r["alignment"]
        writer.writerow([r["name"], r["split"], r["shard"], _fmt(a.shift_x, 3), _fmt(a.shift_y, 3),
                         _fmt(a.rotation, 3), _fmt(a.similarity, 4), _fmt(a.overlap, 4), _fmt(a.score, 4),
                         "true" if r["kept"] else "false", r["reason"]])
    return out.getvalue()


def filter_misaligned(root: Path, config: AlignConfig = AlignConfig(), selection: Selection = Selection(), *,
                      register: bool = False, keep_list: Path | None = None, splits: Sequence[str] | None = None,
                      pictures: bool = True, worst: int = 8, jobs: int = 1, backend: str = "joblib",
                      scheduler: str | None = None,
                      on_start: Callable[[int, int], None] | None = None,
                      on_shard: Callable[[dict], None] | None = None,
                      on_write_start: Callable[[int], None] | None = None,
                      on_write: Callable[[dict], None] | None = None) -> FilterSummary:
    """Score, select and record every pair under ``root``; see the module docstring.

    ``keep_list`` is the CSV to write (only with one dataset); default
    ``data_manifests/keep-<dataset_id>.csv`` in the repository.
    ``pictures`` writes each dataset's pictures, the gallery showing its
    ``worst`` lowest-scoring pairs, and lists them in ``summary.pictures``;
    an encoding failure raises :class:`.pictures.PictureError`.
    ``on_start(total_pairs, 0)`` / ``on_shard(result)`` report scoring,
    ``on_write_start(n_pairs)`` / ``on_write(entry)`` the rewriting of shards.
    """
    ident = identity(config)
    manifest_paths = find_manifests(root)
    if keep_list is not None and len(manifest_paths) > 1:
        raise BuildError(f"--keep-list names one file but {root} holds {len(manifest_paths)} datasets; "
                         "point --shards at one dataset's folder")
    summary = FilterSummary()

    def written(entry: dict) -> None:
        summary.shards_written += 1
        if on_write:
            on_write(entry)

    with locked(p.parent for p in manifest_paths):
        plans = [_plan_folder(path, splits) for path in manifest_paths]
        by_folder = {str(p.path): p for p in plans}
        refs = [r for p in plans for r in p.refs]
        if on_start:
            on_start(sum(r.n_samples for r in refs), 0)
        for result in run_tasks(score_shard, refs, config, jobs=jobs, backend=backend, scheduler=scheduler):
            by_folder[result["folder"]].scored.append(result)
            summary.computed += result["computed"]
            if on_shard:
                on_shard(result)
        tasks = [t for plan in plans for t in _decide(plan, ident, selection, register, summary)]
        if on_write_start:
            on_write_start(sum(t.n_samples for t in tasks))
        run_pass(write_shard, tasks, folders=by_folder, jobs=jobs, backend=backend, scheduler=scheduler,
                 on_result=written)
        for plan in plans:
            target = keep_list or keep_list_dir() / f"keep-{plan.manifest['dataset_id']}.csv"
            write_if_changed(target, keep_list_csv(summary.rows[str(plan.path)]).encode())
            plan.manifest["alignment"] = {**ident, "selection": selection.params(), "registered": plan.registered,
                                          "keep_list": str(target), **_counts(summary.rows[str(plan.path)])}
            plan.save(complete=True)
            if pictures:
                for name, picture in dataset_pictures(plan.path, summary.rows[str(plan.path)],
                                                      summary.cuts[str(plan.path)], worst).items():
                    write_if_changed(plan.path / name, encode_png(picture, plan.path / name))
                    summary.pictures.append(plan.path / name)
            summary.keep_lists.append(target)
            summary.manifests.append(plan.path / MANIFEST)
    return summary


def _counts(rows: list[dict]) -> dict:
    dropped = {r: sum(1 for row in rows if not row["kept"] and row["rule"] == r) for r in RULES}
    return {"pairs": len(rows), "kept": sum(row["kept"] for row in rows),
            "dropped": {k: v for k, v in dropped.items() if v}}


def _decide(plan: _Folder, ident: dict, selection: Selection, register: bool, summary: FilterSummary) -> list:
    """Select over the folder's pairs; fill the summary; return the shards whose contents must change."""
    results = sorted(plan.scored, key=lambda r: r["file"])
    samples = [(r, s) for r in results for s in r["samples"]]
    decisions = select([s["alignment"] for _, s in samples], [s["side"] for _, s in samples],
                       [r["split"] for r, _ in samples], selection)
    root_attr = json.dumps({**ident, "selection": selection.params()}, sort_keys=True)
    rows, tasks, by_file = [], [], {}
    for (r, s), d in zip(samples, decisions):
        a = s["alignment"]
        rows.append({"name": s["name"], "split": r["split"], "shard": r["file"], "alignment": a, "kept": d.kept,
                     "rule": d.rule, "reason": d.reason})
        summary.pairs += 1
        summary.kept += d.kept
        if not d.kept:
            summary.dropped[d.rule] += 1
        if not a.scored:
            summary.unscorable.append(rows[-1])
        attrs = _attrs(a, d, ident)
        # register when asked, and keep registered targets that exist up to date
        wanted = register or bool(s["registered"])
        plan.registered |= wanted
        shift = (0.0, 0.0) if not a.scored else (a.shift_x, a.shift_y)
        up_to_date = all(s["registered"].get(k) == shift for k in REGISTERED_KEYS) and \
            (s["nuclei_registered"] or not s["nuclei_done"])
        changed = _differs(s["stored"], attrs) or r["alignment_root"] != root_attr or (wanted and not up_to_date)
        by_file.setdefault(r["file"], []).append((s["key"], attrs, shift if wanted else None, changed))
    summary.rows[str(plan.path)] = rows
    for file, items in by_file.items():
        if any(changed for *_, changed in items):
            tasks.append(WriteTask(str(plan.path), file, plan.entry(file)["sha256"], root_attr,
                                   tuple((k, a, sh) for k, a, sh, _ in items), len(items)))
    # the histogram's cut: the score floor, or the lowest score a rank cut kept
    kept = [row["alignment"].score for row in rows if row["kept"]]
    summary.cuts[str(plan.path)] = (min(kept) if kept else 1.0) if selection.ranked else selection.min_score
    return tasks


def _differs(stored: dict, attrs: dict) -> bool:
    if set(stored) != set(attrs):
        return True
    for key, value in attrs.items():
        old = stored[key]
        if isinstance(value, float) and math.isnan(value):
            if not (isinstance(old, float) and math.isnan(old)):
                return True
        elif old != value:
            return True
    return False


__all__ = ["KEEP_COLUMNS", "FilterSummary", "ShardRef", "WriteTask", "filter_misaligned", "identity",
           "keep_list_csv", "keep_list_dir", "score_shard", "write_shard"]
