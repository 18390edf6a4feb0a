"""Scores against exact truth (issue 7): hand-computed cases, and the ablation task's determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from atst_model.eval.truth import TileTruth, dice_iou, mean_in, region_auc, relative_count_error, score_tile, summarise
from atst_prep.mask import MaskConfig
from atst_prep.nuclei import make_counter
from atst_prep.stain import dab_and_hematoxylin
from atst_prep.synth import load_truth


def test_dice_and_iou_by_hand():
    pred = np.zeros((4, 4), bool)
    truth = np.zeros((4, 4), bool)
    pred[0, :3] = True   # 3 px
    truth[0, 1:] = True  # 3 px, 2 shared
    assert dice_iou(pred, truth) == pytest.approx((4 / 6, 2 / 4))
    assert dice_iou(pred, pred) == (1.0, 1.0)
    assert dice_iou(np.zeros((4, 4)), np.zeros((4, 4))) == (1.0, 1.0)  # a correct negative
    assert dice_iou(pred, np.zeros((4, 4))) == (0.0, 0.0)
    with pytest.raises(ValueError, match="shapes differ"):
        dice_iou(pred, np.zeros((3, 4)))


def test_mean_in_region_and_count_error_by_hand():
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    region = np.array([[True, False, True], [False, False, True]])
    assert mean_in(values, region) == pytest.approx((0 + 2 + 5) / 3)
    assert math.isnan(mean_in(values, np.zeros((2, 3), bool)))
    assert relative_count_error(12, 10) == pytest.approx(0.2)
    assert relative_count_error(3, 0) == 3.0 and relative_count_error(0, 0) == 0.0


def test_region_auc_by_hand_and_against_a_pairwise_count():
    values = np.array([[0.9, 0.5, 0.1], [0.5, 0.3, 0.7]])
    region = np.array([[True, True, False], [False, False, True]])
    tissue = np.array([[True, True, True], [True, False, True]])
    # positives 0.9, 0.5, 0.7; negatives (tissue) 0.1, 0.5: pairs won 2 + 1.5 (tie) + 2 = 5.5 of 6
    assert region_auc(values, region, tissue) == pytest.approx(5.5 / 6)
    rng = np.random.default_rng(0)
    v, r, t = rng.random((20, 20)).round(1), rng.random((20, 20)) < 0.3, rng.random((20, 20)) < 0.8
    pos, neg = v[r & t], v[~r & t]
    want = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])  # float64 definition
    assert region_auc(v, r, t) == pytest.approx(want, rel=1e-12)
    assert math.isnan(region_auc(values, np.zeros_like(region), tissue))


def test_tissue_mask_is_what_tissue_fraction_counts(synth_data):
    import cv2

    from atst_prep.images import tissue_fraction, tissue_mask

    he = cv2.cvtColor(cv2.imread(str(next(synth_data.rglob("*.jpg")))), cv2.COLOR_BGR2RGB)
    assert tissue_mask(he).mean() == pytest.approx(tissue_fraction(he, step=1))
    assert not tissue_mask(np.full((4, 4, 3), 255, np.uint8)).any()


def test_summary_averages_dab_error_over_positive_tiles_only():
    rows = [dict(dice=1.0, iou=1.0, count_rel_error=0.0, psnr=30.0, ssim=0.9, dab_error=math.nan),
            dict(dice=0.5, iou=0.25, count_rel_error=0.5, psnr=20.0, ssim=0.7, dab_error=-0.02)]
    s = summarise(rows)
    assert s["dice"] == 0.75 and s["iou"] == 0.625 and s["dab_abs_error"] == pytest.approx(0.02)
    assert (s["tiles"], s["positive_tiles"]) == (2, 1)


def test_a_real_ihc_scored_against_itself(synth_data):
    """On the synthetic set: the real IHC scored against its own truth uses prep's mask and counter."""
    root = next(synth_data.rglob("truth_val.npz")).parent
    name, truth = sorted(load_truth(root / "truth_val.npz").items())[0]
    import cv2

    ihc = cv2.cvtColor(cv2.imread(str(root / "TrainValAB" / "valB" / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
    t = TileTruth.from_synth(truth, "ihc")
    config = MaskConfig(closing_radius=5)
    row = score_tile(ihc, t, real_ihc=ihc, real_truth=t, mask_config=config, counter=make_counter("classical"))
    from atst_prep.mask import dab_mask

    want = dice_iou(dab_mask(ihc, config) > 0, t.region)
    assert (row["dice"], row["iou"]) == want
    assert row["psnr"] == math.inf and row["ssim"] == pytest.approx(1.0)
    assert row["dab_error"] == 0.0 or (math.isnan(row["dab_error"]) and not t.region.any())
    if t.region.any():
        assert row["dab_in_region"] == pytest.approx(float(dab_and_hematoxylin(ihc)[0][t.region].mean()), rel=1e-6)
    with pytest.raises(ValueError, match="frame"):
        TileTruth.from_synth(truth, "dab")


def test_the_ablation_task_is_deterministic(tmp_path):
    from dataclasses import replace

    from atst_model.eval.ablation import CPU_BUDGET, write_task

    budget = replace(CPU_BUDGET, n_train=2, n_test=1)
    a, b = write_task(tmp_path / "a", budget, seed=3), write_task(tmp_path / "b", budget, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 8  # 3 pairs x 2 images + 2 truth files
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = write_task(tmp_path / "c", budget, seed=4)
    assert (c / files[0]).read_bytes() != (a / files[0]).read_bytes()
    truth = load_truth(a / "truth_val.npz")
    (t,) = truth.values()
    assert t["size"] == 256 and t["positive_mask_he"].shape == (256, 256)


def test_one_ablation_run_end_to_end(tmp_path):
    """Task -> shards -> one training step of the full variant -> scored test tiles (the benchmark's path)."""
    from dataclasses import replace

    from atst_model.eval import ablation as A

    budget = replace(A.CPU_BUDGET, n_train=2, n_test=1, steps=1, batch=1)
    root = A.write_task(tmp_path / "data", budget)
    shards = A.build_shards(root, tmp_path / "shards", budget)
    trainer = A.train_variant(shards, tmp_path / "run", budget, A.VARIANTS["+L5 (full)"], seed=0)
    summary, rows, images = A.score_generator(trainer.g1, root, budget, keep_images=1)
    assert summary["tiles"] == len(rows) == 1 and 0.0 <= summary["dice"] <= 1.0
    assert images[0].shape == (256, 3 * 256, 3)
    assert 0.0 <= A.oracle_scores(root, budget)["dice"] <= 1.0


def test_score_folder_pairs_by_name_and_reports_bad_files(synth_data, tmp_path):
    import shutil

    from atst_model.eval.truth import score_folder
    from atst_prep.images import InputError

    root = next(synth_data.rglob("truth_val.npz")).parent
    real = root / "TrainValAB" / "valB"
    fake = tmp_path / "fake"
    shutil.copytree(real, fake)
    (fake / "stray.png").write_bytes(b"not an image")
    config, counter = MaskConfig(closing_radius=5), make_counter("classical")
    rows, summary, rejected = score_folder(fake, real, root / "truth_val.npz", config, counter,
                                           out_csv=tmp_path / "scores.csv")
    names = sorted(p.stem for p in real.iterdir())
    assert [r["name"] for r in rows] == names and summary["tiles"] == len(names)
    assert len(rejected) == 1 and "stray" in rejected[0]
    assert (tmp_path / "scores.csv").read_text().count("\n") == len(names) + 1
    with pytest.raises(InputError, match="not a synthetic truth file"):
        score_folder(fake, real, tmp_path / "scores.csv", config, counter)


def test_atst_eval_with_truth_writes_truth_scores(synth_data, tmp_path, monkeypatch):
    """The command, and ``evaluate(..., truth=...)`` from Python writing the same files."""
    import csv
    import warnings

    from typer.testing import CliRunner

    from atst_model.eval.run import evaluate
    from atst_prep.images import InputError
    from cli.main import app

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no ResNet-50: PHV is skipped
    root = next(synth_data.rglob("truth_val.npz")).parent
    ihc = root / "TrainValAB" / "valB"
    out = tmp_path / "eval"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(app, ["eval", "--fake", str(ihc), "--real", str(ihc), "--out", str(out),
                                          "--kid-subsets", "2", "--truth", str(root / "truth_val.npz"),
                                          "--closing-radius", "5"])
    assert result.exit_code == 0, result.output
    assert "truth (" in result.output and "Dice" in result.output
    with open(out / "truth_scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["name"] for r in rows) == sorted(p.stem for p in ihc.iterdir())
    bad = CliRunner().invoke(app, ["eval", "--fake", str(ihc), "--real", str(ihc), "--out", str(out),
                                   "--kid-subsets", "2", "--truth", str(tmp_path / "missing.npz")])
    assert bad.exit_code == 1 and "missing.npz" in bad.output and "Traceback" not in bad.output
    lib = tmp_path / "lib"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(ihc, ihc, None, lib, kid_subsets=2, truth=root / "truth_val.npz", closing_radius=5)
    assert sorted(p.name for p in lib.iterdir()) == sorted(p.name for p in out.iterdir()) == [
        "histograms.png", "per_image.csv", "report.html", "report.png", "summary.json", "truth_scores.csv"]
    for path in out.iterdir():  # the report names its inputs, not its folder: the same bytes
        assert (lib / path.name).read_bytes() == path.read_bytes(), path.name
    assert result.truth["tiles"] == len(rows) and result.truth_rejected == []
    with pytest.raises(InputError, match="truth file not found"):
        evaluate(ihc, ihc, None, tmp_path / "never", truth=tmp_path / "missing.npz")
    assert not (tmp_path / "never").exists()
