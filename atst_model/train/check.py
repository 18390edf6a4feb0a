"""``atst check-targets``: the trainer's own data path and auxiliary losses with the real IHC as the fake.

Every auxiliary target is the same function of the real IHC crop that its
prediction is of the fake, on the same extent; so a perfect fake (the real
IHC crop itself) must score ~0 on every term, at every crop the loader can
yield (every window, flip and keep-list). If it does not, training pushes
the generator away from the truth. Run it on your shards before spending
GPU-days; it needs no network but the frozen L5 counter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from atst_prep.errors import UserError

from ..losses import TERMS, AuxLossConfig, AuxLosses

__all__ = ["TOLERANCES", "TargetCheck", "check_targets"]

#: Largest value a perfect fake may score: L1-L4 absolute, L5 as ``rel_max``
#: (|count difference| / max(count in mask, 1)).
TOLERANCES = {"l1": 1e-3, "l2": 1e-3, "l3": 1e-3, "l4": 1e-3, "l5": 0.02}


@dataclass(frozen=True)
class TargetCheck:
    """What :func:`check_targets` found; :meth:`to_dict` is the JSON report."""

    n: int
    crop: int
    terms: dict
    failures: list

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"n": self.n, "crop": self.crop, "terms": self.terms, "tolerances": TOLERANCES, "ok": self.ok,
                "failures": self.failures}


def _shard_window(paths: list[Path]) -> int | None:
    from atst_prep.shards import read_header

    windows = read_header(paths[0])["params"].get("windows")
    return int(windows["window"]) if windows else None


def check_targets(shards: str | Path, *, n: int = 64, crop: int | None = None, keep_list: str | Path | None = None,
                  nuclei_weights: str | None = None, count_form: str = "poisson", dab_units: str = "gray",
                  device: str = "cpu", seed: int = 0,
                  on_item: Callable[[int], None] | None = None) -> TargetCheck:
    """Score ``n`` loader crops of ``shards`` with fake = the real IHC crop; per term mean and max.

    Parameters
    ----------
    shards : a folder of prep shards (the training split is read, as ``atst train`` reads it).
    n : crops to check; they run through the epochs (other windows and flips) when ``n`` exceeds the pairs.
    crop : crop side (default: the shards' training window).
    keep_list, nuclei_weights, count_form, dab_units : as ``atst train``'s.

    Returns
    -------
    TargetCheck; ``failures`` names every term over its tolerance (:data:`TOLERANCES`).
    """
    from atst_prep.mask import MaskConfig

    from ..data import ShardPairs, to_unit
    from .trainer import _shard_mask_params, shard_paths

    if n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    paths = shard_paths(shards)
    crop = crop or _shard_window(paths) or 512
    aux = AuxLosses(AuxLossConfig(mask=MaskConfig(**_shard_mask_params(paths)), counter_weights=nuclei_weights,
                                  count_form=count_form, dab_units=dab_units)).to(device)
    data = ShardPairs(paths, crop=crop, keep_list=keep_list, seed=seed, unpaired=False, raw=True, flips=True)
    values: dict[str, list[float]] = {k: [] for k in TERMS}
    rel = []
    for i in range(n):
        data.set_epoch(i // len(data))
        item = data[i % len(data)]
        batch = to_unit({k: v[None] if isinstance(v, torch.Tensor) else [v] for k, v in item.items()}, device)
        target = batch["dab_darkness_in_mask"] if dab_units == "gray" else batch["dab_mean_in_mask"]
        with torch.no_grad():
            out = aux(batch["ihc"].clone(), batch["ihc"], batch["mask"], target)
        for k in TERMS:
            values[k].append(float(out[k]))
        diff = (out["count_fake"] - out["count_target"]).abs() / out["count_target"].clamp_min(1.0)
        rel.append(float(diff.max()))
        if on_item:
            on_item(i + 1)
    terms = {k: {"mean": float(np.mean(v)), "max": float(np.max(v))} for k, v in values.items()}
    terms["l5"]["rel_max"] = float(np.max(rel))
    failures = []
    for k in TERMS:
        got = terms[k]["rel_max"] if k == "l5" else terms[k]["max"]
        if not got <= TOLERANCES[k]:
            what = "relative count difference" if k == "l5" else "max"
            failures.append(f"{k} {what} {got:.3g} > {TOLERANCES[k]:g}")
    return TargetCheck(n=n, crop=crop, terms=terms, failures=failures)


def write_report(check: TargetCheck, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(check.to_dict(), indent=1) + "\n")
