"""Files that ship with the package: dataset descriptors and the published table (``atst_manifests``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["manifests_dir", "in_checkout"]

_REPO = Path(__file__).resolve().parents[1]


def in_checkout() -> bool:
    """Running from a source checkout (its ``setup.cfg`` beside the packages), not from an installed wheel."""
    return (_REPO / "setup.cfg").is_file() and (_REPO / "data_manifests").is_dir()


def manifests_dir() -> Path:
    """The ``data_manifests`` folder: the installed ``atst_manifests`` package, else the checkout's."""
    if in_checkout():
        return _REPO / "data_manifests"
    from importlib.resources import files

    return Path(str(files("atst_manifests")))
