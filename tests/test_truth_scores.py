"""Scores against exact truth (issue 7): hand-computed cases, and the ablation task's determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from atst_model.eval.truth import TileTruth, dice_iou, mean_in, relative_count_error, score_tile, summarise
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
