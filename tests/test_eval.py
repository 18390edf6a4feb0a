"""``atst eval``: pairing, outputs, exit codes, FID on identical folders, PHV through the network."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from atst_model.eval import features as feat
from atst_model.eval.run import evaluate, fid
from atst_model.metrics import phv_per_layer
from atst_prep.synth import SynthConfig, render_pair
from cli.main import app

runner = CliRunner()


def _write(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def images(real_ihc) -> dict[str, np.ndarray]:
    """Six small real IHC crops (64-128 px, one non-square) and two synthetic 128 px IHC tiles."""
    out = {f"ihc{i}": np.ascontiguousarray(real_ihc[64 * i:64 * i + 96, 32 * i:32 * i + 96]) for i in range(5)}
    out["ihc_wide"] = np.ascontiguousarray(real_ihc[300:364, 100:228])
    for seed in (0, 1):
        out[f"synth{seed}"] = render_pair(SynthConfig(size=128), seed).ihc
    return out


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """An empty torch hub cache: no ResNet-50 weights to find."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture
def folders(tmp_path, images):
    fake, real, he = tmp_path / "fake", tmp_path / "real", tmp_path / "he"
    for d in (fake, real, he):
        d.mkdir()
    for name, img in images.items():
        _write(real / f"{name}.png", img)
        _write(he / f"{name}.png", img[:, ::-1])
    return fake, real, he


def test_identical_folders(folders, tmp_path, no_hub):
    fake, real, he = folders
    shutil.rmtree(fake)
    shutil.copytree(real, fake)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="PHV skipped.*resnet50-0676ba61.pth"):  # one warning line
        result = runner.invoke(app, ["eval", "--fake", str(fake), "--real", str(real), "--he", str(he),
                                     "--out", str(out), "--kid-subsets", "10"])
    assert result.exit_code == 0, result.output
    with open(out / "per_image.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    assert all(float(r["psnr"]) == float("inf") for r in rows)
    assert all(float(r["ssim"]) == 1.0 and float(r["css"]) == pytest.approx(1.0) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["psnr_mean"] == "inf" and summary["ssim_mean"] == 1.0
    # Same features on both sides: the only residual is float64 rounding (sums of ~2048 squares, one SVD).
    assert abs(summary["fid"]) < 1e-3
    # KID draws the subsets of each side independently: unbiased but noisy with 8 images, so no ~0 check.
    assert np.isfinite(summary["kid_x1000_mean"]) and summary["kid_x1000_std"] >= 0
    assert summary["phv"] is None
    assert summary["conventions"]["inception_features"]["extractor"] == feat.INCEPTION_LABEL
    report = cv2.imread(str(out / "report.png"))
    assert report is not None and report.shape[1] >= 3 * 160
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<td>inf</td>" in html and "<td>1.0000</td>" in html and html.count("data:image/png;base64,") == 10
    assert cv2.imread(str(out / "histograms.png")) is not None


def test_unmatched_and_bad_files_exit_3(folders, tmp_path, images, no_hub):
    fake, real, _ = folders
    for name, img in images.items():
        if name != "ihc0":  # ihc0: real only
            _write(fake / f"{name}.png", np.ascontiguousarray(img[::-1]))
    _write(fake / "only_fake.png", images["ihc1"])
    (fake / "ihc2.png").write_bytes(b"not an image")  # bad file, replaces a good fake
    _write(fake / "ihc3.png", images["ihc3"][:80])  # size mismatch
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="PHV skipped"):
        result = runner.invoke(app, ["eval", "--fake", str(fake), "--real", str(real), "--out", str(out),
                                     "--kid-subsets", "5"])
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("rejected:")]
    assert len(lines) == 4, result.output
    text = result.output
    assert "'ihc0'" in text and "'only_fake'" in text and "ihc2.png" in text and "differs" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 5 and summary["rejected"] == 4
    assert summary["fid"] > 0


def test_missing_inception_weights_exit_1(folders, tmp_path, no_hub):
    fake, real, _ = folders
    missing = tmp_path / "nope.pt"
    result = runner.invoke(app, ["eval", "--fake", str(real), "--real", str(real), "--out", str(tmp_path / "o"),
                                 "--inception-weights", str(missing)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())  # rich wraps at the test console's width
    assert text.startswith("error:") and text.count("error:") == 1 and "nope.pt" in text
    assert "Traceback" not in result.output


def test_phv_through_random_resnet(folders, tmp_path, images):
    """A random-weight ResNet-50 saved to a tmp file stands in for the ImageNet weights (test-only path)."""
    fake, real, _ = folders
    names = ["ihc0", "ihc1", "synth0"]
    for name in images:
        if name not in names:
            (real / f"{name}.png").unlink()
    for name in names:
        _write(fake / f"{name}.png", np.ascontiguousarray(images[name][:, ::-1]))
    torch.manual_seed(0)
    from torchvision.models import resnet50

    weights = tmp_path / "resnet50-random.pth"
    torch.save(resnet50(weights=None).state_dict(), weights)
    result = evaluate(fake, real, None, tmp_path / "out", "cpu", resnet_weights=weights, kid_subsets=3)
    model = feat.load_resnet(weights)
    def read(d):
        return [cv2.cvtColor(cv2.imread(str(d / f"{n}.png")), cv2.COLOR_BGR2RGB) for n in names]
    ff = feat.resnet_features(read(fake), model=model)
    fr = feat.resnet_features(read(real), model=model)
    assert ff["layer4"].shape == (3, 2048) and ff["layer1"].shape == (3, 256)
    per_layer, mean = phv_per_layer({k: (ff[k], fr[k]) for k in feat.LAYERS})
    assert result.summary["phv"] == {**per_layer, "mean": mean}
    assert result.summary["conventions"]["phv"]["normalisation"] == "asp"
    # the documented switch changes the network input
    other = feat.resnet_features(read(fake)[:1], model=model, normalisation="imagenet")
    assert not np.allclose(other["layer1"], ff["layer1"][:1])


def test_fid_equals_sqrtm_formula():
    """The nuclear-norm FID equals metrics.frechet_distance (scipy sqrtm), D small so sqrtm is fast."""
    from atst_model.metrics import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 64)), rng.normal(0.3, 1.2, size=(30, 64))
    assert fid(a, b) == pytest.approx(frechet_distance(a, b), rel=1e-6)
    assert abs(fid(a, a)) < 1e-9
    big = rng.normal(size=(80, 8)), rng.normal(size=(90, 8))  # N > D: the sqrtm path itself
    assert fid(*big) == frechet_distance(*big)
