"""The eval report (report.html, histograms.png) and the paper's published numbers (``--compare``)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from atst_model.eval import published as pub
from atst_model.eval.pairs import match_pairs
from atst_model.eval.report import HIST_PANEL, histograms, write_reports
from cli.main import app

runner = CliRunner()

#: A file name that needs escaping in HTML.
ODD = "a<b&c"


def _write(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture
def folders(tmp_path, real_ihc):
    """Five 64 px real IHC crops as reals, noisy copies as fakes, flipped ones as H&E; one odd name."""
    fake, real, he = tmp_path / "fake", tmp_path / "real", tmp_path / "he"
    for d in (fake, real, he):
        d.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(["t0", "t1", "t2", "t3", ODD]):
        img = np.ascontiguousarray(real_ihc[48 * i:48 * i + 64, 40 * i:40 * i + 64])
        noisy = np.clip(img + rng.normal(0, 4 + 6 * i, img.shape), 0, 255).astype(np.uint8)
        _write(real / f"{name}.png", img)
        _write(fake / f"{name}.png", noisy)
        _write(he / f"{name}.png", np.ascontiguousarray(img[:, ::-1]))
    return fake, real, he


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def _summary(phv=True) -> dict:
    return {"pairs": 5, "rejected": 1, "inputs": {"fake": "f<1>", "real": "r", "he": None},
            "psnr_mean": 21.5, "ssim_mean": 0.61, "css_mean": 0.55, "fid": 12.25,
            "kid_x1000_mean": 3.5, "kid_x1000_std": 0.25,
            "phv": {"layer1": 0.1, "layer2": 0.2, "layer3": 0.3, "layer4": 0.4, "mean": 0.25} if phv else None,
            "conventions": {"psnr_ssim": "skimage", "css": "sewar", "fid": "fid", "kid": "kid",
                            "inception_features": {"extractor": "bundled <Inception>", "input": "299"},
                            "phv": {"network": "resnet", "threshold": 0.01, "normalisation": "asp",
                                    "normalisation_note": "n"}},
            "rejected_inputs": ["x.png: bad <file>"]}


def test_histogram_shape_and_inf():
    rows = [{"psnr": float("inf"), "ssim": 1.0, "css": 1.0}] * 3 + [{"psnr": 20.0, "ssim": 0.5, "css": 0.4}]
    img = histograms(rows)
    assert img.shape == (HIST_PANEL[0], 3 * HIST_PANEL[1], 3) and img.dtype == np.uint8
    assert (img != 255).any(axis=2).sum() > 1000  # something drawn in every panel
    for k in range(3):
        panel = img[:, k * HIST_PANEL[1]:(k + 1) * HIST_PANEL[1]]
        assert (panel == (70, 130, 180)).all(axis=2).any()  # a bar
    histograms([{"psnr": float("inf"), "ssim": 1.0, "css": 1.0}])  # nothing finite to draw: no error


def test_write_reports_html(folders, tmp_path):
    fake, real, he = folders
    pairing = match_pairs(fake, real, he)
    rows = [{"name": p.name, "psnr": 20.0 + i, "ssim": 0.5 + i / 10, "css": 0.4} for i, p in enumerate(pairing.pairs)]
    summary = _summary()
    summary["published"] = pub.compare("her2")
    out = tmp_path / "out"
    out.mkdir()
    paths = write_reports(out, summary, rows, pairing.pairs)
    text = paths["report.html"].read_text(encoding="utf-8")
    assert "<script" not in text and "http" not in text.replace("http-equiv", "")  # no external assets
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 1 + 3 * 3  # histograms + 3 triplets of H&E | fake | real
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(images[0]), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (HIST_PANEL[0], 3 * HIST_PANEL[1], 3)
    assert cv2.imread(str(paths["histograms.png"])).shape == decoded.shape
    # escaped: the odd file name (best by SSIM here), the folder, the extractor, the rejected line
    assert "a&lt;b&amp;c" in text and ODD not in text
    assert "f&lt;1&gt;" in text and "bundled &lt;Inception&gt;" in text and "bad &lt;file&gt;" in text
    # ours and the published column
    for value in ("21.5000", "0.6100", "0.5500", "12.2500", "3.5000 ± 0.2500", "0.2500"):
        assert value in text
    assert "published (ATST-Net, IJCAI 2025)" in text
    kid_row = re.search(r"<tr id='row-kid_x1000'>(.*?)</tr>", text).group(1)
    assert "<td>8.6</td>" in kid_row and "13.2 (PSPStain)" in kid_row
    assert "paper&#x27;s conventions" in text


def test_published_table_file():
    """The TOML holds every metric for seven methods per table; PHV avg equals the layers' mean (rounding)."""
    data = tomllib.loads(pub.TABLE_FILE.read_text(encoding="utf-8"))
    assert pub.names()[:3] == ["her2", "er", "bci"]
    for name, table in data["tables"].items():
        assert len(table["methods"]) == 7 and "ATST-Net" in table["methods"]
        for row in table["methods"].values():
            assert list(row) == [k for k, _ in pub.METRICS]
            assert sum(row[f"phv_layer{i}"] for i in range(1, 5)) / 4 == pytest.approx(row["phv_mean"], abs=6e-4)
    her2 = pub.compare("HER2")
    # Sec. 5.1: on MIST HER2, ATST-Net improves CSS, PHV(avg), FID, KID by 0.019, 0.027, 11.2, 4.6 over the best
    gains = [her2["values"]["css"] - her2["best_other"]["css"]["value"],
             her2["best_other"]["phv_mean"]["value"] - her2["values"]["phv_mean"],
             her2["best_other"]["fid"]["value"] - her2["values"]["fid"],
             her2["best_other"]["kid_x1000"]["value"] - her2["values"]["kid_x1000"]]
    assert gains == pytest.approx([0.019, 0.027, 11.2, 4.6], abs=1e-9)
    assert pub.compare("er")["values"]["fid"] == 46.3 and pub.compare("bci")["values"]["ssim"] == 0.491


def test_cli_compare_and_html(folders, tmp_path, no_hub):
    fake, real, he = folders
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="PHV skipped"):
        result = runner.invoke(app, ["eval", "--fake", str(fake), "--real", str(real), "--he", str(he),
                                     "--out", str(out), "--kid-subsets", "3", "--compare", "er"])
    assert result.exit_code == 0, result.output
    assert f"report: {out}/report.html" in result.output and "paper's conventions" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["published"]["name"] == "er" and summary["published"]["values"]["kid_x1000"] == 5.0
    assert summary["published"]["label"] == "published (ATST-Net, IJCAI 2025)"
    text = (out / "report.html").read_text(encoding="utf-8")
    for key in ("ssim_mean", "css_mean", "fid"):
        assert f"{summary[key]:.4f}" in text
    assert f"{summary['kid_x1000_mean']:.4f} ± {summary['kid_x1000_std']:.4f}" in text
    assert "PHV" in text and "skipped: no ResNet-50" in text
    assert "a&lt;b&amp;c" in text and ODD not in text  # the worst pair (most noise)
    assert (out / "histograms.png").is_file() and (out / "report.png").is_file()


def test_cli_unknown_compare_name(folders, tmp_path):
    fake, real, _ = folders
    result = runner.invoke(app, ["eval", "--fake", str(fake), "--real", str(real), "--out", str(tmp_path / "o"),
                                 "--compare", "pr"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:") and text.count("error:") == 1 and "Traceback" not in result.output
    assert "'pr'" in text and "her2, er, bci" in text
    assert not (tmp_path / "o").exists()


REPO = Path(__file__).resolve().parents[1]
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


@needs_make
@pytest.mark.parametrize("biomarker, var", [("her2", "MIST"), ("bci", "BCI")])
def test_make_reproduce_without_data_stops_with_one_line(tmp_path, biomarker, var):
    missing = tmp_path / "nope"
    result = subprocess.run(["make", "--no-print-directory", "reproduce", f"BIOMARKER={biomarker}",
                             f"{var}={missing}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and f"get {var}" in lines[0], lines


@needs_make
@pytest.mark.parametrize("biomarker", ["her2", "bci"])
def test_make_reproduce_commands_use_real_options(tmp_path, biomarker):
    """Every atst command line of the recipe (make -n) uses only options its --help lists."""
    for d in ("HER2/TrainValAB/valA", "HER2/TrainValAB/valB", "HE/test", "IHC/test"):
        (tmp_path / d).mkdir(parents=True)
    result = subprocess.run(["make", "--no-print-directory", "-n", "reproduce", f"BIOMARKER={biomarker}",
                             f"MIST={tmp_path}", f"BCI={tmp_path}", "BIN=bin", "STAMP=", "ENCODER=enc.pth"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = re.findall(r"bin/atst ((?:prep )?[a-z-]+)([^;\n&|]*)", result.stdout)
    assert [c for c, _ in calls] == ["prep build-masks"] + (["prep filter-misaligned"] if biomarker != "bci" else []) \
        + ["train", "translate", "eval"]
    for cmd, rest in calls:
        helptext = runner.invoke(app, cmd.split() + ["--help"], env={"COLUMNS": "300"}).output
        for option in re.findall(r"(--[a-z][a-z0-9-]*)", rest):
            assert option in helptext, (cmd, option)
    assert f"--compare {biomarker}" in result.stdout
