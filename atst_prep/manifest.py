"""``manifest.json``: reading, atomic writing and comparing the parameters it records.

Each dataset folder of shards holds one manifest (written by ``build-masks``,
updated by ``count-nuclei``): every shard with its sample count, size and
SHA-256, the parameters, and every rejected input. It is always replaced
whole (written under a temporary name, flushed, renamed), so a reader never
sees half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import __version__
from .runner import BuildError

MANIFEST = "manifest.json"


#: Version of the manifest layout this package writes and reads.
MANIFEST_VERSION = 1


def read_manifest(path: Path) -> dict:
    """Load a manifest (``path`` may be the file or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BuildError(f"{path}: no manifest (run 'atst prep build-masks' first)") from None
    except json.JSONDecodeError as exc:
        raise BuildError(f"{path}: manifest is not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise BuildError(f"{path}: not a manifest (not text)") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != "atst-manifest":
        raise BuildError(f"{path}: not an atst manifest (no schema 'atst-manifest')")
    if manifest.get("schema_version") != MANIFEST_VERSION or not isinstance(manifest.get("splits"), dict):
        raise BuildError(f"{path}: manifest schema version {manifest.get('schema_version')!r}, this atst reads "
                         f"{MANIFEST_VERSION}; rebuild with 'atst prep build-masks --overwrite'")
    return manifest


def find_manifests(root: Path) -> list[Path]:
    """Manifests at ``root`` or one level below (``shards/`` holds one folder per dataset)."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return [root / MANIFEST]
    found = sorted(root.glob(f"*/{MANIFEST}")) if root.is_dir() else []
    if not found:
        raise BuildError(f"{root}: no {MANIFEST} here or in its sub-folders (run 'atst prep build-masks' first)")
    return found


def shard_paths(folder: str | Path, splits: tuple[str, ...] | None = None) -> list[Path]:
    """The non-empty shards of ``splits`` (None: every split) listed by the manifests at or below ``folder``."""
    paths, seen = [], set()
    for manifest in find_manifests(Path(folder)):
        for split, info in read_manifest(manifest)["splits"].items():
            seen.add(split)
            if splits is None or split in splits:
                paths += [manifest.parent / s["file"] for s in info["shards"] if s["n_samples"] > 0]
    if not paths:
        which = "" if splits is None else f" in split(s) {', '.join(splits)}"
        found = f" (splits present: {', '.join(sorted(seen))})" if seen else ""
        raise FileNotFoundError(f"{folder}: the manifests list no samples{which}{found} "
                                "(run 'atst prep build-masks' first)")
    return paths


def write_manifest_file(folder: Path, manifest: dict) -> Path:
    """Replace ``folder/manifest.json`` atomically with ``manifest``."""
    path = Path(folder) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.partial")
    with open(tmp, "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_if_changed(path: Path, data: bytes) -> bool:
    """Replace ``path`` atomically with ``data`` unless it already holds exactly that; True if written."""
    path = Path(path)
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True


def dataset_manifest(plan, params: dict) -> dict:
    """The manifest of a build plan (:class:`atst_prep.build.DatasetPlan`) from what is done so far."""
    splits = {}
    for split, listing in plan.listings.items():
        entries = sorted((e for e in plan.done.values() if e["split"] == split), key=lambda e: e["index"])
        rejected = [r for r in plan.unpaired if r["split"] == split] + [r for e in entries for r in e["rejected"]]
        n_tasks = sum(1 for t in plan.tasks if t.split == split)
        splits[split] = {
            "pairs_found": len(listing.pairs),
            "samples": sum(e["n_samples"] for e in entries),
            "complete": len(entries) == n_tasks,
            "shards": [{k: e[k] for k in ("file", "n_pairs", "n_samples", "bytes", "sha256")} for e in entries],
            "rejected": rejected,
            "ignored_files": [str(p) for p in listing.ignored],
        }
    return {
        "schema": "atst-manifest", "schema_version": MANIFEST_VERSION, "package_version": __version__,
        "dataset_id": plan.source.id, "kind": plan.source.kind, "marker": plan.source.marker,
        "source_root": str(plan.source.root), "params": params, "splits": splits,
    }


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def param_diff(old: dict | None, new: dict) -> str:
    """The parameters that differ, as ``"mask.closing_radius 5 vs 9, ..."``."""
    if not isinstance(old, dict):
        return "unknown parameters"
    a, b = _flatten(old), _flatten(new)
    diffs = [f"{k} {a.get(k)} vs {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(diffs) or "same parameters"
