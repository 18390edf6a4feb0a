"""CPP-Net: polygon geometry, context enhancement, NMS, training, checkpoints, the differentiable count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stardist import star_dist

from atst_model.cppnet import CONFIGS, CppNet, CppNetConfig, load_checkpoint, save_checkpoint
from atst_model.cppnet.count import soft_count
from atst_model.cppnet.counter import BUNDLED_WEIGHTS, labels_to_nuclei
from atst_model.cppnet.predict import maps_to_instances
from atst_model.cppnet.targets import density_map, instance_centroids, make_targets
from atst_model.cppnet.train import TrainConfig, synthetic_tiles, train, train_nuclei
from atst_prep.errors import ConfigError
from atst_prep.mask import MaskConfig, dab_mask
from atst_prep.nuclei import count_in_mask, make_counter
from atst_prep.nuclei.metrics import instance_f1
from atst_prep.stain import dab_and_hematoxylin
from atst_prep.synth import SynthConfig, render_pair

torch.manual_seed(0)
TINY = CONFIGS["tiny"]


def _rectangle_labels() -> np.ndarray:
    labels = np.zeros((64, 64), np.uint16)
    labels[20:41, 12:53] = 1  # rows 20..40, cols 12..52: centre (30, 32)
    return labels


def test_rays_point_where_stardist_measures_them():
    """Ray k of the model walks (row += d sin, col += d cos): the tips land on the known rectangle's edge."""
    labels = _rectangle_labels()
    model = CppNet(TINY)
    d = star_dist(labels, TINY.n_rays, mode="cpp")[30, 32]
    rows = 30 + d * model.ray_dy.flatten().numpy()
    cols = 32 + d * model.ray_dx.flatten().numpy()
    on_edge = (np.minimum(np.abs(rows - 19.5), np.abs(rows - 40.5)) <= 1.0) | \
              (np.minimum(np.abs(cols - 11.5), np.abs(cols - 52.5)) <= 1.0)
    assert on_edge.all()
    assert d[0] == pytest.approx(20.5, abs=1) and d[TINY.n_rays // 4] == pytest.approx(10.5, abs=1)


def test_context_enhancement_keeps_exact_distances_of_a_convex_object():
    """Every point sampled along a ray of a convex object sees the same boundary point, so refining changes nothing."""
    labels = np.zeros((64, 64), np.uint16)
    yy, xx = np.mgrid[:64, :64]
    labels[(yy - 32) ** 2 + (xx - 31) ** 2 <= 14**2] = 1
    model = CppNet(TINY)
    dist = torch.from_numpy(np.moveaxis(star_dist(labels, TINY.n_rays, mode="cpp"), -1, 0))[None]
    weights = torch.randn(1, TINY.n_rays * (TINY.n_samples + 1), 64, 64)
    inner = torch.from_numpy(np.flatnonzero(((yy - 32) ** 2 + (xx - 31) ** 2 <= 6**2).ravel()))[None]
    own = torch.gather(dist.flatten(2), 2, inner.unsqueeze(1).expand(1, TINY.n_rays, inner.shape[1]))
    refined = model.refine_at(dist, weights, inner)
    assert (refined - own).abs().mean() < 0.5  # digital disk and bilinear sampling: sub-pixel


def test_polygon_nms_keeps_the_more_probable_of_two_overlapping_candidates():
    prob = np.zeros((64, 64), np.float32)
    dist = np.zeros((64, 64, 32), np.float32)
    for (r, c), p in (((20, 20), 0.9), ((22, 23), 0.8), ((45, 45), 0.7)):
        prob[r, c], dist[r, c] = p, 8.0
    labels, points = maps_to_instances(prob, dist, prob_thresh=0.5, nms_thresh=0.3)
    assert sorted(map(tuple, points.tolist())) == [(20, 20), (45, 45)]
    assert labels.max() == 2 and labels[20, 20] > 0 and labels[45, 45] > 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_registered_config_gives_the_documented_shapes(name):
    config = CONFIGS[name]
    out = CppNet(config)(torch.rand(2, config.in_channels, 64, 64) * 0.2)
    assert out.prob_logit.shape == (2, 1, 64, 64) and out.density.shape == (2, 1, 64, 64)
    assert out.dist.shape == (2, config.n_rays, 64, 64)
    assert out.weight_logits.shape == (2, config.n_rays * (config.n_samples + 1), 64, 64)
    assert (out.dist >= 0).all() and (out.density >= 0).all()


def test_bad_input_size_and_bad_config_are_refused():
    with pytest.raises(ValueError, match="multiples of 4"):
        CppNet(TINY)(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="n_rays"):
        CppNetConfig(n_rays=2)


def test_density_target_integrates_to_the_number_of_centred_nuclei():
    labels = _rectangle_labels()
    labels[50:58, 50:58] = 2
    centroids = instance_centroids(labels)
    np.testing.assert_allclose(centroids, [[32, 30], [53.5, 53.5]], atol=1e-4)
    assert density_map(centroids, labels.shape).sum() == pytest.approx(2.0, abs=1e-3)
    targets = make_targets(labels, 32)
    assert targets["prob"].max() == pytest.approx(1.0) and targets["dist"].shape == (32, 64, 64)


def test_a_few_training_steps_lower_the_loss():
    tiles = synthetic_tiles(2, size=128, seed=5)
    _, history = train(TINY, tiles, TrainConfig(steps=40, batch=2, crop=64, lr=3e-3, seed=1), device="cpu")
    first = np.mean([h["total"] for h in history[:5]])
    last = np.mean([h["total"] for h in history[-5:]])
    assert last < 0.8 * first


def test_train_nuclei_from_python_writes_the_checkpoint_the_command_writes(tmp_path, monkeypatch):
    """``train_nuclei`` (the library of ``atst prep train-nuclei``): same weights, thresholds and metadata."""
    from typer.testing import CliRunner

    from atst_model.cppnet import train as train_module
    from cli.main import app

    # 64 px held-out tiles: an untrained network finds nuclei everywhere, and NMS over 512 x 512 takes minutes
    monkeypatch.setattr(train_module, "CALIBRATION_SIZE", 64)
    lines = []
    settings = TrainConfig(steps=2, batch=1, crop=64, seed=3)
    result = train_nuclei(tmp_path / "lib" / "m.pt", "tiny", settings, synthetic=1, synthetic_size=64, calibrate=1,
                          device="cpu", on_message=lines.append)
    assert lines[0] == "rendering 1 synthetic tiles (64 px)" and lines[-1].startswith("thresholds: probability ")
    command = CliRunner().invoke(app, ["prep", "train-nuclei", "--out", str(tmp_path / "cli" / "m.pt"), "--config",
                                       "tiny", "--steps", "2", "--batch", "1", "--crop", "64", "--seed", "3",
                                       "--synthetic", "1", "--synthetic-size", "64", "--calibrate", "1",
                                       "--device", "cpu"])
    assert command.exit_code == 0, command.output
    assert f"nucleus model: {tmp_path / 'cli' / 'm.pt'}" in command.output
    assert "thresholds: probability " in command.output
    model, meta = load_checkpoint(result.path)
    other, other_meta = load_checkpoint(tmp_path / "cli" / "m.pt")
    assert meta == other_meta and meta["calibration"] == result.calibration and len(result.calibration) == 9
    assert model.config == other.config == result.model.config
    assert (model.config.prob_thresh, model.config.nms_thresh) == tuple(
        float(x) for x in max(result.calibration, key=result.calibration.get).split("/"))
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError, match="unknown network config 'huge'"):
        train_nuclei(tmp_path / "x.pt", "huge")


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = CppNet(TINY).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(model, path, note="test")
    loaded, meta = load_checkpoint(path)
    x = torch.rand(1, 1, 32, 32) * 0.2
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            torch.testing.assert_close(a, b)
    assert meta == {"note": "test"} and loaded.config == TINY


def test_missing_or_wrong_weights_files_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-nuclei --out"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an ATST CPP-Net checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    payload = torch.load(BUNDLED_WEIGHTS, weights_only=True)
    payload["config"] = {**payload["config"], "base_channels": 16}
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_checkpoint(tmp_path / "mismatch.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def test_checkpoints_with_pickled_code_are_refused(tmp_path):
    torch.save({"format": "atst-cppnet", "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "evil.pt")


def test_soft_count_passes_a_finite_nonzero_gradient_to_hema_and_mask():
    model = CppNet(TINY).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    hema = (torch.rand(2, 1, 48, 40) * 0.3).requires_grad_(True)  # not a multiple of 4: padded inside
    mask = torch.rand(2, 1, 48, 40).requires_grad_(True)
    counts = soft_count(model, hema, mask)
    assert counts.shape == (2,)
    counts.sum().backward()
    for grad in (hema.grad, mask.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ------------------------------------------------------------------ with the bundled trained weights


@pytest.fixture(scope="module")
def trained():
    model, _ = load_checkpoint(BUNDLED_WEIGHTS)
    return model


def _held_out(pattern: str, seed: int):
    pair = render_pair(SynthConfig(size=256, pattern=pattern, negative_pair_rate=0.0), 7000 + seed)
    dab, hema = dab_and_hematoxylin(pair.ihc)
    return pair, hema, dab


@pytest.mark.parametrize("pattern", ["membranous", "nuclear"])
def test_bundled_counter_finds_synthetic_nuclei(pattern):
    counter = make_counter("cppnet")
    pair, hema, dab = _held_out(pattern, 1)
    nuclei = counter.detect(hema, dab)
    assert instance_f1(nuclei.labels, pair.truth["nucleus_labels_ihc"]).f1 >= 0.8
    n_true = len(np.unique(pair.truth["nucleus_labels_ihc"])) - 1
    assert abs(len(nuclei) - n_true) <= 0.1 * n_true


@pytest.mark.parametrize("pattern", ["membranous", "nuclear"])
def test_soft_count_tracks_the_true_count_on_synthetic_tiles(trained, pattern):
    pair, hema, _ = _held_out(pattern, 2)
    region = pair.truth["positive_mask_ihc"]
    with torch.no_grad():
        whole = float(soft_count(trained, torch.from_numpy(hema)[None, None]))
        inside = float(soft_count(trained, torch.from_numpy(hema)[None, None],
                                  torch.from_numpy(region.astype(np.float32))[None, None]))
    true_whole = len(pair.truth["centroids_ihc"])
    true_inside = count_in_mask(pair.truth["centroids_ihc"], region)
    assert whole == pytest.approx(true_whole, rel=0.1)
    assert inside == pytest.approx(true_inside, rel=0.15, abs=3)


def test_soft_count_tracks_the_discrete_count_on_real_ihc(trained, real_ihc):
    """On real IHC the two counts of one network must agree: density integral vs detected centroids in M."""
    dab, hema = dab_and_hematoxylin(real_ihc)
    mask = dab_mask(real_ihc, MaskConfig(closing_radius=30))
    nuclei = make_counter("cppnet").detect(hema, dab)
    discrete = nuclei.count_in(mask)
    with torch.no_grad():
        soft = float(soft_count(trained, torch.from_numpy(hema)[None, None],
                                torch.from_numpy(mask.astype(np.float32))[None, None]))
    assert discrete > 50
    assert soft == pytest.approx(discrete, rel=0.2)


def test_labels_to_nuclei_gives_centroids_and_areas():
    labels = _rectangle_labels().astype(np.int32)
    labels[50:58, 50:58] = 7
    nuclei = labels_to_nuclei(labels)
    assert len(nuclei) == 2 and sorted(nuclei.areas.tolist()) == [64, 21 * 41]
    np.testing.assert_allclose(sorted(nuclei.centroids.tolist()), [[32, 30], [53.5, 53.5]])


def test_tiled_prediction_equals_one_pass(trained):
    """Tiles read 32 px larger than they are written see all the context the network uses."""
    from atst_model.cppnet.predict import predict_maps

    pair = render_pair(SynthConfig(size=384), 3)
    _, hema = dab_and_hematoxylin(pair.ihc)
    whole = predict_maps(trained, hema[None])
    tiled = predict_maps(trained, hema[None], tile=192, margin=32)
    for key in ("prob", "density"):  # float32 summation order differs: ~1e-6 relative
        np.testing.assert_allclose(tiled[key], whole[key], rtol=1e-5, atol=1e-5)
    # ray distances in px: the few refined near a tile's read edge move by < 0.001 px
    np.testing.assert_allclose(tiled["dist"], whole["dist"], atol=1e-3)


def test_a_batch_of_tiles_finds_what_one_tile_at_a_time_finds(real_ihc):
    # the GPU path (one network batch) must give every tile the nuclei detect gives it; checked on the CPU
    from atst_model.cppnet.counter import CppNetCounter
    from atst_prep.shards import as_stored

    counter = CppNetCounter(device="cpu")
    tiles = []
    for y, x in ((0, 0), (128, 64), (256, 256)):
        dab, hema = dab_and_hematoxylin(np.ascontiguousarray(real_ihc[y:y + 256, x:x + 256]))
        tiles.append((as_stored(hema), as_stored(dab)))
    one = [counter.detect(h, d) for h, d in tiles]
    many = counter.detect_many(tiles, batch=2)
    assert sum(len(n.areas) for n in one) > 20
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.centroids, b.centroids)
