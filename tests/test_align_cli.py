"""``atst prep filter-misaligned`` after ``build-masks``: keep-list, shard attributes, idempotence,
registration, resuming, errors.

The dataset is written pair by pair with known shifts (256 px tiles, where
the default limit is 32 px * 256 / 1024 = 8 px): aligned pairs, pairs
shifted far beyond the limit, one rotated 7 degrees and one nearly blank.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from atst_prep.align import pictures, store
from atst_prep.align.pictures import PICTURES
from atst_prep.align.register import register_image
from atst_prep.build import read_manifest
from atst_prep.images import tissue_fraction
from atst_prep.shard_check import validate
from atst_prep.shards import iter_samples
from atst_prep.synth import SynthConfig, render_pair
from atst_prep.verify import verify
from cli.main import app

from .test_cli import _run

runner = CliRunner()
SIZE = 256
CONFIG = SynthConfig(size=SIZE, max_shift=8, max_rotation=2, elastic_amplitude=0.5)
#: name -> (split, shift, rotation, kept); "blank" is mostly glass (unscorable).
PAIRS = {
    "pair_00": ("train", (1.0, -0.5), 0.3, True),
    "pair_01": ("train", (-1.5, 1.0), -0.5, True),
    "pair_02": ("train", (18.0, -12.0), 0.0, False),
    "pair_03": ("train", (0.5, 2.0), 0.8, True),
    "pair_04": ("train", "blank", 0.0, False),
    "pair_05": ("train", (-20.0, 6.0), 0.5, False),
    "pair_06": ("train", (2.0, 1.0), 7.0, False),
    "pair_07": ("val", (1.0, 1.0), 0.0, True),
    "pair_08": ("val", (-12.0, -10.0), 0.0, False),
}
EXPECTED_RULES = {"pair_02": "shift", "pair_04": "unscorable", "pair_05": "shift", "pair_06": "rotation",
                  "pair_08": "shift"}


def _write_pairs(root: Path) -> dict[str, dict]:
    """A MIST-like tree of PAIRS; returns each pair's truth."""
    truths = {}
    for i, (name, (split, shift, rotation, _)) in enumerate(PAIRS.items()):
        folder = root / "MIST" / "HER2" / "TrainValAB"
        pair = render_pair(CONFIG, 100 + i, shift=(0, 0) if shift == "blank" else shift, rotation=rotation)
        he, ihc = pair.he_jpeg, pair.ihc_jpeg
        if shift == "blank":  # keep 48x48 px of tissue (3.5 %): passes build-masks, too little to align
            he, ihc = (_glass_but(image, (slice(104, 152), slice(104, 152))) for image in (pair.he, pair.ihc))
        for side, data in (("A", he), ("B", ihc)):
            (folder / f"{split}{side}").mkdir(parents=True, exist_ok=True)
            (folder / f"{split}{side}" / f"{name}.jpg").write_bytes(data)
        truths[name] = pair.truth
    return truths


def _glass_but(rgb: np.ndarray, window) -> bytes:
    glass = np.full_like(rgb, 244)
    glass[window] = rgb[window]
    assert tissue_fraction(glass) > 0.015
    return cv2.imencode(".jpg", cv2.cvtColor(glass, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(data folder, shard folder built by the CLI, truths)."""
    root = tmp_path_factory.mktemp("align")
    truths = _write_pairs(root / "data")
    result = runner.invoke(app, ["prep", "build-masks", "--data", str(root / "data"), "--out", str(root / "shards"),
                                 "-r", "5", "--shard-size", "4", "-j", "1"])
    assert result.exit_code == 0, result.output
    return root / "data", root / "shards", truths


@pytest.fixture
def shards(dataset, tmp_path) -> Path:
    out = tmp_path / "shards"
    shutil.copytree(dataset[1], out)
    return out


def _filter(shards: Path, *args: str, keep_list: Path | None = None):
    keep_list = keep_list or shards.parent / "keep.csv"
    return runner.invoke(app, ["prep", "filter-misaligned", "--shards", str(shards), "--keep-list", str(keep_list),
                               "-j", "1", *args])


def _digests(*roots: Path) -> dict[str, str]:
    files = [p for root in roots for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_filter_misaligned_after_build_masks_keeps_aligned_pairs_and_reports_the_blank_one(shards):
    result = _filter(shards)
    assert result.exit_code == 0, result.output
    assert "9 pairs (9 scored now, 0 already scored): 4 kept, 5 dropped; 3 shards written" in result.output
    assert "dropped 3: shift beyond the limit (shift)" in result.output
    assert "unscorable train/pair_04" in result.output and "too little tissue" in result.output
    rows = _rows(shards.parent / "keep.csv")
    assert list(rows) == sorted(PAIRS, key=lambda n: (PAIRS[n][0], n))  # by split, then name
    assert list(next(iter(rows.values()))) == list(store.KEEP_COLUMNS)
    for name, (split, shift, rotation, kept) in PAIRS.items():
        row = rows[name]
        assert row["split"] == split and row["kept"] == ("true" if kept else "false")
        assert row["reason"].startswith({"shift": "shift", "rotation": "rotation", "unscorable": "unscorable",
                                         None: ""}[EXPECTED_RULES.get(name)])
        if shift != "blank":
            assert abs(float(row["shift_x"]) - shift[0]) <= 2 and abs(float(row["shift_y"]) - shift[1]) <= 2
            assert float(row["rotation"]) == pytest.approx(rotation, abs=0.5)
        else:
            assert row["score"] == "" and row["shift_x"] == ""
    for path in shards.rglob("shard-*.h5"):
        assert validate(path) == []
        for sample in iter_samples(path, arrays=()):
            a, row = sample["alignment"], rows[sample["name"]]
            assert a["status"] == ("unscorable" if sample["name"] == "pair_04" else "done")
            assert bool(a["kept"]) == (row["kept"] == "true") and a["reason"] == row["reason"]
            assert a["rule"] == EXPECTED_RULES.get(sample["name"], "")
            if a["status"] == "done":
                assert f"{a['score']:.4f}" == row["score"] and f"{a['shift_x']:.3f}" == row["shift_x"]
    manifest = read_manifest(shards / "mist-her2")
    assert manifest["alignment"]["kept"] == 4 and manifest["alignment"]["dropped"] == {
        "unscorable": 1, "shift": 3, "rotation": 1}
    assert verify(shards).problems == []
    for picture in ("alignment-scores.png", "alignment-worst.png"):
        image = cv2.imread(str(shards / "mist-her2" / picture))
        assert image is not None and image.shape[1] >= 700
        assert f"picture: {shards / 'mist-her2' / picture}" in result.output


def test_the_library_call_writes_what_the_command_writes(shards, dataset, tmp_path):
    """``store.filter_misaligned`` from Python: the command's shards, keep-list and pictures, byte for byte."""
    other = tmp_path / "other"
    shutil.copytree(dataset[1], other)
    result = _filter(shards)
    assert result.exit_code == 0, result.output
    summary = store.filter_misaligned(other, keep_list=tmp_path / "keep2.csv")
    assert summary.pictures == [other / "mist-her2" / name for name in PICTURES]
    for path in summary.pictures:
        image = cv2.imread(str(path))
        assert image is not None and image.shape[1] >= 700
        assert f"picture: {shards / path.relative_to(other)}" in result.output

    def written(root: Path) -> dict[Path, str]:
        return {Path(k).relative_to(root): v for k, v in _digests(root).items() if k.endswith((".h5", ".png"))}

    assert written(shards) == written(other) and len(written(other)) == 5  # 3 shards, 2 pictures
    assert (tmp_path / "keep.csv").read_bytes() == (tmp_path / "keep2.csv").read_bytes()
    again = store.filter_misaligned(other, keep_list=tmp_path / "keep2.csv", pictures=False)
    assert again.pictures == [] and again.shards_written == 0


def test_a_picture_that_cannot_be_encoded_is_a_one_line_error(shards, monkeypatch):
    monkeypatch.setattr(pictures.cv2, "imencode", lambda *args: (False, None))
    result = _filter(shards)
    message = f"{shards / 'mist-her2' / PICTURES[0]}: could not encode PNG"
    assert result.exit_code == 1 and message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    with pytest.raises(pictures.PictureError, match="could not encode PNG"):
        store.filter_misaligned(shards, keep_list=shards.parent / "keep.csv")


def test_a_second_run_changes_nothing(shards):
    assert _filter(shards).exit_code == 0
    before = _digests(shards, shards.parent / "keep.csv")
    mtimes = {p: p.stat().st_mtime_ns for p in shards.rglob("*.h5")}
    result = _filter(shards)
    assert result.exit_code == 0 and "(0 scored now, 9 already scored)" in result.output
    assert "0 shards written" in result.output
    assert _digests(shards, shards.parent / "keep.csv") == before
    assert {p: p.stat().st_mtime_ns for p in shards.rglob("*.h5")} == mtimes


def test_same_inputs_give_byte_identical_shards(shards, dataset, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(dataset[1], other)
    assert _filter(shards, "--register").exit_code == 0
    assert _filter(other, "--register", keep_list=tmp_path / "keep2.csv").exit_code == 0
    assert {Path(k).relative_to(shards): v for k, v in _digests(shards).items() if k.endswith(".h5")} == \
        {Path(k).relative_to(other): v for k, v in _digests(other).items() if k.endswith(".h5")}
    assert (tmp_path / "keep.csv").read_bytes() == (tmp_path / "keep2.csv").read_bytes()


def test_register_moves_mask_dab_and_centroids_into_the_he_frame(shards, dataset):
    truths = dataset[2]
    result = _filter(shards, "--register")
    assert result.exit_code == 0, result.output
    inner = (slice(24, -24), slice(24, -24))
    checked = 0
    for path in shards.rglob("shard-*.h5"):
        assert validate(path) == []
        for s in iter_samples(path, arrays=("mask", "mask_registered", "dab", "dab_registered")):
            a = s["alignment"]
            assert s["mask_registered"].dtype == np.uint8 and s["mask_registered"].shape == s["mask"].shape
            if a["status"] != "done":
                np.testing.assert_array_equal(s["mask_registered"], s["mask"])  # nothing to undo
                continue
            np.testing.assert_allclose(s["centroids_registered"], s["centroids"] - [a["shift_x"], a["shift_y"]],
                                       atol=1e-4)
            shift = (a["shift_x"], a["shift_y"])
            np.testing.assert_array_equal(s["mask_registered"], register_image(s["mask"], shift))
            if s["name"] in ("pair_02", "pair_05", "pair_08"):  # shifted by 16-24 px
                truth_he, truth_ihc = truths[s["name"]]["positive_mask_he"], truths[s["name"]]["positive_mask_ihc"]
                # the round trip on the true masks: shift (the renderer), correct (our estimate), compare
                corrected = register_image(truth_ihc.astype(np.uint8), shift) > 0
                assert _iou(corrected[inner], truth_he[inner]) > max(0.95, _iou(truth_ihc[inner], truth_he[inner]) + 0.2)
                # the stored Eq. 1 mask (DAB on membranes, not the region) lies more inside the true region
                assert _precision(s["mask_registered"][inner] > 0, truth_he[inner]) > \
                    _precision(s["mask"][inner] > 0, truth_he[inner]) + 0.03
                checked += 1
    assert checked == 3
    with h5py.File(shards / "mist-her2" / "train" / "shard-00000.h5") as f:
        g = f["samples/00000"]
        for key, source in (("mask_registered", "mask"), ("dab_registered", "dab")):
            # the compact layout stores no DAB: the registered one is stored as the raw layout stores DAB
            like = g[source] if source in g else SimpleNamespace(chunks=(256, 256), compression="lzf", shuffle=True)
            assert g[key].chunks == like.chunks and g[key].compression == like.compression
            assert g[key].shuffle == like.shuffle
    assert verify(shards).problems == []
    before = _digests(shards)
    assert "0 shards written" in _filter(shards).output  # registered targets are kept, not dropped
    assert _digests(shards) == before


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _precision(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float((predicted & truth).sum() / max(predicted.sum(), 1))


def test_rank_cut_rewrites_decisions_without_rescoring(shards):
    assert _filter(shards).exit_code == 0
    result = _filter(shards, "--drop-fraction", "0.5", "--split", "train")
    assert result.exit_code == 0, result.output
    assert "(0 scored now, 7 already scored)" in result.output and "dropped 3: rank cut (rank)" in result.output
    rows = _rows(shards.parent / "keep.csv")
    assert set(rows) == {n for n, p in PAIRS.items() if p[0] == "train"}
    assert sum(r["kept"] == "true" for r in rows.values()) == 3  # 7 - ceil(3.5)
    assert rows["pair_04"]["kept"] == "false"
    assert verify(shards).problems == []


def test_an_interrupted_write_is_reported_by_verify_and_finished_by_a_rerun(shards, dataset, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    shutil.copytree(dataset[1], reference)
    assert _filter(reference, keep_list=tmp_path / "ref.csv").exit_code == 0
    write_shard, calls = store.write_shard, {"n": 0}

    def dies_on_the_second_shard(task):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return write_shard(task)

    monkeypatch.setattr(store, "write_shard", dies_on_the_second_shard)
    result = _filter(shards)
    assert result.exit_code == 130 and "interrupted" in result.output
    monkeypatch.setattr(store, "write_shard", write_shard)
    report = verify(shards)
    assert report.shards_ok == 3 and any("filter-misaligned interrupted" in p for p in report.problems)
    result = _filter(shards)
    assert result.exit_code == 0 and "2 shards written" in result.output
    assert verify(shards).problems == []
    assert {Path(k).relative_to(shards): v for k, v in _digests(shards).items() if k.endswith(".h5")} == \
        {Path(k).relative_to(reference): v for k, v in _digests(reference).items() if k.endswith(".h5")}


def test_shards_without_images_are_scored_from_their_source_files(dataset, shards, tmp_path):
    data = dataset[0]
    out = tmp_path / "noimages"
    result = runner.invoke(app, ["prep", "build-masks", "--data", str(data), "--out", str(out), "-r", "5",
                                 "--shard-size", "4", "-j", "1", "--no-images", "--counter", "none"])
    assert result.exit_code == 0, result.output
    source = data / "MIST" / "HER2" / "TrainValAB" / "valA" / "pair_07.jpg"
    source.rename(source.with_suffix(".moved"))
    try:
        result = _filter(out, keep_list=tmp_path / "a.csv")
    finally:
        source.with_suffix(".moved").rename(source)
    assert result.exit_code == 0 and "unscorable val/pair_07" in result.output
    assert "source image unreadable" in " ".join(result.output.split())
    result = _filter(out, keep_list=tmp_path / "a.csv")  # the file is back: scored now, not reused
    assert result.exit_code == 0 and "(1 scored now, 8 already scored)" in result.output
    assert _filter(shards, keep_list=tmp_path / "b.csv").exit_code == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_filter_misaligned_has_help():
    result = runner.invoke(app, ["prep", "filter-misaligned", "--help"])
    assert result.exit_code == 0 and "--drop-fraction" in result.output and "--register" in result.output


def test_default_keep_list_goes_to_data_manifests(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "keep_list_dir", lambda: tmp_path / "data_manifests")
    result = runner.invoke(app, ["prep", "filter-misaligned", "--shards", str(shards), "-j", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data_manifests" / "keep-mist-her2.csv").is_file()


@pytest.mark.parametrize("args, message", [
    (["--keep", "3", "--drop-fraction", "0.1"], "either keep"),
    (["--drop-fraction", "1.5"], "drop_fraction must be in [0, 1]"),
    (["--min-score", "2"], "min_score must be in [0, 1]"),
])
def test_bad_options_are_one_line_errors(shards, args, message):
    result = _filter(shards, *args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_missing_shards_are_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["prep", "filter-misaligned", "--shards", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "no manifest.json" in " ".join(result.output.split())


def test_filter_misaligned_as_written_in_a_subprocess(shards, tmp_path):
    result = _run(["prep", "filter-misaligned", "--shards", str(shards), "--keep-list", str(tmp_path / "k.csv")],
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 kept, 5 dropped" in result.stdout and "pairs/s" in result.stderr
