"""The paper's published numbers (Table 1 of ATST-Net, IJCAI 2025) beside ours: ``atst eval --compare NAME``.

The numbers live in ``data_manifests/published/atst-net-table1.toml`` (copied from the
paper, with the table's column meanings and the doubts met while copying).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from atst_prep.images import InputError

__all__ = ["METRICS", "TABLE_FILE", "compare", "names", "ours_by_metric"]

def _table_file() -> Path:
    from atst_prep.resources import manifests_dir

    return manifests_dir() / "published" / "atst-net-table1.toml"


TABLE_FILE = _table_file()

#: The table's columns, in its order: key, label shown in the report.
METRICS = (("psnr", "PSNR"), ("ssim", "SSIM"), ("css", "CSS"), ("phv_layer1", "PHV layer1"),
           ("phv_layer2", "PHV layer2"), ("phv_layer3", "PHV layer3"), ("phv_layer4", "PHV layer4"),
           ("phv_mean", "PHV mean"), ("fid", "FID"), ("kid_x1000", "KID x1000"))


def _load(path: Path | None = None) -> dict:
    file = TABLE_FILE if path is None else Path(path)
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(file, "published table not found (it ships in the package as atst_manifests)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(file, f"not a valid TOML file: {exc}") from None


def names(path: Path | None = None) -> list[str]:
    """The valid ``--compare`` names (her2, er, bci, ...), in the file's order."""
    return list(_load(path)["tables"])


def ours_by_metric(summary: dict) -> dict[str, float | str | None]:
    """Our summary's values under the table's metric keys (None where we have none, e.g. PHV skipped)."""
    phv = summary.get("phv") or {}
    out = {"psnr": summary.get("psnr_mean"), "ssim": summary.get("ssim_mean"), "css": summary.get("css_mean"),
           "fid": summary.get("fid"), "kid_x1000": summary.get("kid_x1000_mean")}
    for i in range(1, 5):
        out[f"phv_layer{i}"] = phv.get(f"layer{i}")
    out["phv_mean"] = phv.get("mean")
    return out


def compare(name: str, path: Path | None = None) -> dict:
    """The published block ``name`` as it goes into ``summary.json["published"]``.

    Keys: ``name``, ``label``, ``note``, ``source``, ``title``, ``trained_on``, ``tested_on``,
    ``where``, ``method`` (ATST-Net), ``values`` (ATST-Net's numbers by metric) and ``best_other``
    (per metric, the best competing method's value and name, recomputed from the rows).
    Raises :class:`InputError` naming the valid names when ``name`` is unknown.
    """
    data = _load(path)
    tables = data["tables"]
    key = str(name).strip().lower()
    if key not in tables:
        raise InputError("--compare", f"unknown published table {name!r}; choose one of {', '.join(tables)}")
    src, table = data["source"], tables[key]
    method = src["method"]
    methods = table["methods"]
    higher = set(src["higher_is_better"])
    best_other = {}
    for metric, _ in METRICS:
        others = [(row[metric], m) for m, row in methods.items() if m != method and metric in row]
        if others:
            value, who = (max if metric in higher else min)(others, key=lambda t: t[0])
            best_other[metric] = {"value": value, "method": who}
    return {"name": key, "label": src["label"], "note": src["note"], "source": f"{src['paper']}, {src['table']}",
            "title": table["title"], "trained_on": table["trained_on"], "tested_on": table["tested_on"],
            "where": table["where"], "method": method,
            "values": {metric: methods[method].get(metric) for metric, _ in METRICS},
            "best_other": best_other,
            "higher_is_better": sorted(higher)}
