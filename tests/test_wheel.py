"""The wheel works outside the checkout: descriptors and the published table ship inside it, no top-level ``cli``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The toolkit's wheel, built from this checkout and unpacked into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(REPO)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp / "dist").glob("atst_toolkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith("cli/") for n in names), "the wheel must not install a top-level 'cli'"
    for needed in ("atst_manifests/datasets/mist-her2.toml", "atst_manifests/published/atst-net-table1.toml",
                   "atst_model/train/trainer.py", "atst_cli/main.py", "atst_model/weights/g1-tiny-synthetic.pt",
                   "atst_model/cppnet/weights/cppnet-tiny-synthetic.pt"):
        assert needed in names, needed
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return site


def _atst(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    code = ("import sys; sys.argv[0] = 'atst'; import atst_prep, atst_cli.main as m; "
            "assert atst_prep.__file__.startswith(sys.argv.pop(1)), atst_prep.__file__; m.app()")
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code, str(site), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_the_installed_wheel_recognises_mist_and_compares_with_table_1(installed, tmp_path, synth_data, real_ihc):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    build = _atst(installed, elsewhere, "prep", "build-masks", "--data", str(synth_data), "--out", "shards",
                  "-r", "5", "--window", "128", "--jobs", "1")
    assert build.returncode == 0, build.stderr
    assert "mist-her2" in build.stderr and (elsewhere / "shards" / "mist-her2" / "manifest.json").is_file()
    for d in ("fake", "real"):
        (elsewhere / d).mkdir()
    for i in range(3):
        crop = real_ihc[i * 64:i * 64 + 64, :64]
        cv2.imwrite(str(elsewhere / "real" / f"p{i}.png"), crop)
        cv2.imwrite(str(elsewhere / "fake" / f"p{i}.png"), crop[::-1])
    ev = _atst(installed, elsewhere, "eval", "--fake", "fake", "--real", "real", "--out", "ev", "--compare", "her2")
    assert ev.returncode == 0, ev.stderr
    assert "published" in json.loads((elsewhere / "ev" / "summary.json").read_text())
