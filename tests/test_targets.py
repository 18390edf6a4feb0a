"""A perfect fake scores zero: targets and the fake's predictions are the same function on the same extent.

The real IHC is scikit-image's sample with its DAB weakened on one half (a
tile stained unevenly, like HER2 1+/2+ next to 3+), where Otsu's threshold
of a crop is not the tile's.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from skimage.color import hed2rgb, rgb2hed
from typer.testing import CliRunner

from atst_model.data import ShardPairs, dihedral
from atst_model.losses import TERMS, AuxLossConfig, AuxLosses
from atst_model.train.check import TOLERANCES
from atst_prep.build import BuildConfig, build
from atst_prep.mask import MaskConfig, mask_from_dab, window_masks, window_origins
from atst_prep.sources import detect
from atst_prep.stain import dab_channel
from cli.main import app

WINDOW = 256


def uneven(ihc: np.ndarray, factor: float = 0.35) -> np.ndarray:
    """The IHC with its DAB optical density scaled by ``factor`` on the right half."""
    hed = rgb2hed(ihc)
    hed[:, ihc.shape[1] // 2:, 2] *= factor
    return (np.clip(hed2rgb(hed), 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def uneven_ihc(real_ihc) -> np.ndarray:
    return uneven(real_ihc)


def _unit(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_window_origins_cover_every_pixel_and_stay_inside():
    for h, w, c, s in [(1024, 1024, 512, 256), (1000, 700, 512, 256), (256, 256, 96, 48), (512, 512, 512, 512)]:
        o = window_origins(h, w, c, s)
        covered = np.zeros((h, w), bool)
        for y, x in o:
            assert 0 <= y <= h - c and 0 <= x <= w - c
            covered[y:y + c, x:x + c] = True
        assert covered.all()
    assert len(window_origins(1024, 1024, 512, 256)) == 9 and len(window_origins(1024, 1024, 512, 512)) == 4


def test_a_crop_of_the_tile_mask_is_not_eq1_of_the_crop_on_uneven_staining(uneven_ihc):
    # why prep stores Eq. 1 per window: the tile's threshold misses the weakly stained half
    config = MaskConfig(closing_radius=5)
    dab = dab_channel(uneven_ihc)
    tile = mask_from_dab(dab, config)
    o = window_origins(512, 512, WINDOW, WINDOW)
    per_window = window_masks(dab, o, WINDOW, config)
    worst = max(float((tile[y:y + WINDOW, x:x + WINDOW] != m).mean()) for (y, x), m in zip(o, per_window))
    assert worst > 0.05, worst


@pytest.mark.parametrize("shape, window, stride", [((512, 512), WINDOW, WINDOW // 2), ((333, 509), 101, 37)])
def test_window_masks_are_eq1_of_each_window_on_its_own(uneven_ihc, shape, window, stride):
    # prep renders the tile's DAB gray once and cuts the windows from it: the same masks, bit for bit
    config = MaskConfig(closing_radius=5)
    dab = dab_channel(np.ascontiguousarray(uneven_ihc[:shape[0], :shape[1]]))
    o = window_origins(*shape, window, stride)
    alone = [mask_from_dab(np.ascontiguousarray(dab[y:y + window, x:x + window]), config) for y, x in o]
    np.testing.assert_array_equal(window_masks(dab, o, window, config), np.stack(alone))


@pytest.mark.parametrize("k", range(8))
def test_eq1_commutes_with_the_symmetries_of_the_square_on_real_ihc(uneven_ihc, k):
    config = MaskConfig(closing_radius=30)
    dab = dab_channel(uneven_ihc[:WINDOW, 128:128 + WINDOW])
    a = mask_from_dab(np.ascontiguousarray(dihedral(dab, k)), config)
    b = dihedral(mask_from_dab(dab, config), k)
    assert (a != b).mean() <= 1e-4  # float rounding of the blur at the threshold, if anything


@pytest.mark.parametrize("radius", [5, 30])
def test_a_perfect_fake_scores_zero_on_every_term_in_every_window(uneven_ihc, radius):
    config = AuxLossConfig(mask=MaskConfig(closing_radius=radius))
    aux = AuxLosses(config)
    dab = dab_channel(uneven_ihc)
    o = window_origins(512, 512, WINDOW, WINDOW // 2)
    masks = torch.from_numpy(window_masks(dab, o, WINDOW, config.mask)).float()[:, None]
    real = torch.cat([_unit(uneven_ihc[y:y + WINDOW, x:x + WINDOW]) for y, x in o])
    fake = real.clone().requires_grad_(True)
    out = aux(fake, real, masks, aux.dab_target(real, masks))
    for k in TERMS:
        assert float(out[k].detach()) <= 1e-6, (k, float(out[k].detach()))
    torch.testing.assert_close(out["count_fake"], out["count_target"])


def test_the_old_tile_cropped_target_fails_the_perfect_fake(uneven_ihc):
    # the bug this replaces: M cut from the tile's Eq. 1, M' Eq. 1 of the crop
    config = AuxLossConfig(mask=MaskConfig(closing_radius=5))
    aux = AuxLosses(config)
    tile = mask_from_dab(dab_channel(uneven_ihc), config.mask)
    o = window_origins(512, 512, WINDOW, WINDOW)
    masks = torch.stack([torch.from_numpy(tile[y:y + WINDOW, x:x + WINDOW]).float()[None] for y, x in o])
    real = torch.cat([_unit(uneven_ihc[y:y + WINDOW, x:x + WINDOW]) for y, x in o])
    assert float(aux(real.clone(), real, masks, aux.dab_target(real, masks))["l1"]) > TOLERANCES["l1"]


@pytest.fixture(scope="module")
def uneven_data(tmp_path_factory, real_ihc) -> Path:
    """A plain H&E/IHC folder: four 512 px real IHC tiles stained unevenly (left, right, top, bottom weak)."""
    root = tmp_path_factory.mktemp("uneven") / "uneven"
    (root / "he").mkdir(parents=True)
    (root / "ihc").mkdir()
    for i in range(4):
        ihc = np.ascontiguousarray(np.rot90(uneven(np.ascontiguousarray(np.rot90(real_ihc, -i))), i))
        he = np.ascontiguousarray(real_ihc[::-1])  # any tissue: the check never looks at the H&E
        cv2.imwrite(str(root / "he" / f"t{i}.png"), cv2.cvtColor(he, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "ihc" / f"t{i}.png"), cv2.cvtColor(ihc, cv2.COLOR_RGB2BGR))
    return root


def _build(data: Path, out: Path, radius: int) -> Path:
    build(detect(data), out, BuildConfig(mask=MaskConfig(closing_radius=radius), shard_size=4, counter="classical",
                                         window=WINDOW, window_stride=WINDOW // 2), jobs=1)
    return out / "uneven"


@pytest.mark.parametrize("radius", [5, 30])
def test_check_targets_holds_on_uneven_real_ihc(uneven_data, tmp_path, radius):
    shards = _build(uneven_data, tmp_path / "shards", radius)
    report = tmp_path / "check.json"
    result = CliRunner().invoke(app, ["check-targets", "--shards", str(shards), "--n", "12", "--json", str(report)])
    assert result.exit_code == 0, result.output
    got = json.loads(report.read_text())
    assert got["n"] == 12 and got["ok"] and set(got["terms"]) == set(TERMS)
    for k in ("l1", "l2", "l3", "l4"):
        assert got["terms"][k]["max"] <= TOLERANCES[k]
    assert got["terms"]["l5"]["rel_max"] <= TOLERANCES["l5"] and "mean" in got["terms"]["l5"]


def test_check_targets_fails_with_one_line_when_targets_are_cut_from_the_tile(uneven_data, tmp_path):
    shards = _build(uneven_data, tmp_path / "shards", 5)
    for path in shards.rglob("shard-*.h5"):  # replace each window's target by the crop of the tile's mask
        with h5py.File(path, "r+") as f:
            for g in f["samples"].values():
                tile, origins = g["mask"][()], g["windows/origins"][()]
                g["windows/mask"][...] = np.stack([tile[y:y + WINDOW, x:x + WINDOW] for y, x in origins])
    result = CliRunner().invoke(app, ["check-targets", "--shards", str(shards), "--n", "16"])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "l1 max" in error[0] and "Traceback" not in result.output


def test_loader_masks_are_the_windows_targets_under_the_drawn_symmetry(uneven_data, tmp_path):
    shards = _build(uneven_data, tmp_path / "shards", 5)
    paths = sorted(shards.rglob("shard-*.h5"))
    data = ShardPairs(paths, crop=WINDOW, seed=3, unpaired=False, flips=True)
    seen = set()
    config = MaskConfig(closing_radius=5)
    for epoch in range(3):
        data.set_epoch(epoch)
        for i in range(len(data)):
            item = data[i]
            seen.add(int(item["transform"]))
            ihc = ((item["ihc"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
            want = mask_from_dab(dab_channel(ihc), config)
            assert (item["mask"][0].numpy().astype(bool) != want).mean() <= 1e-4
    assert len(seen) > 3  # symmetries are drawn


def test_tiled_windows_are_the_four_fixed_crops(uneven_data, tmp_path):
    shards = _build(uneven_data, tmp_path / "shards", 5)
    data = ShardPairs(sorted(shards.rglob("shard-*.h5")), crop=WINDOW, windows="tiled", unpaired=False)
    origins = set()
    for epoch in range(20):
        data.set_epoch(epoch)
        origins |= {tuple(data[i]["origin"].tolist()) for i in range(len(data))}
    assert origins == {(0, 0), (0, 256), (256, 0), (256, 256)}


def test_a_crop_that_is_not_the_shards_window_is_one_clear_error(uneven_data, tmp_path):
    from atst_prep.shards import ShardError

    shards = _build(uneven_data, tmp_path / "shards", 5)
    with pytest.raises(ShardError, match="--window 128"):
        ShardPairs(sorted(shards.rglob("shard-*.h5")), crop=128)


def _detached_mask(aux: AuxLosses):
    original = aux.fake_stains

    def fake_stains(fake):
        dab, hema, m = original(fake)
        return dab, hema, m.detach()
    return fake_stains


@pytest.mark.parametrize("term", TERMS)
def test_each_term_trains_the_fake_through_its_mask(real_ihc, term, monkeypatch):
    """Fails if M' is detached (not only D' or H'): the gradient through M' is part of every term's."""
    config = AuxLossConfig(mask=MaskConfig(closing_radius=5))
    aux = AuxLosses(config)
    crop = uneven(real_ihc)[192:320, 192:320]
    real = _unit(crop)
    mask = torch.from_numpy(mask_from_dab(dab_channel(crop), config.mask)).float()[None, None]
    torch.manual_seed(0)
    start = (real.rot90(1, (-2, -1)) + 0.1 * torch.randn_like(real)).clamp(-1, 1)  # a wrong, noisy fake

    def grad() -> torch.Tensor:
        fake = start.clone().requires_grad_(True)
        loss = aux(fake, real, mask, aux.dab_target(real, mask))[term]
        return torch.autograd.grad(loss, fake)[0] if loss.requires_grad else torch.zeros_like(fake)

    assert float(aux(start, real, mask, aux.dab_target(real, mask))[term]) > 0
    full = grad()
    monkeypatch.setattr(aux, "fake_stains", _detached_mask(aux))
    detached = grad()
    assert full.abs().sum() > 0
    assert (full - detached).norm() > 1e-3 * full.norm(), f"{term}: no gradient through M'"


def test_a_white_fake_gets_a_gradient_towards_brown_inside_m(real_ihc):
    # the soft threshold's width and the straight-through clip let L1 grow a region where the fake is blank
    config = AuxLossConfig(mask=MaskConfig(closing_radius=5))
    aux = AuxLosses(config)
    crop = real_ihc[192:320, 192:320]
    real = _unit(crop)
    mask = torch.from_numpy(mask_from_dab(dab_channel(crop), config.mask)).float()[None, None]
    fake = torch.full_like(real, 0.96).requires_grad_(True)  # near white everywhere
    aux(fake, real, mask, aux.dab_target(real, mask))["l1"].backward()
    inside = fake.grad[0, :, mask[0, 0] > 0]
    assert inside.abs().sum() > 0
    # descending the gradient darkens the blue channel most (DAB is brown: it absorbs blue)
    step = -inside.mean(dim=1)
    assert step[2] < 0 and step[2] < step[0]


def test_poisson_relative_and_absolute_count_forms(real_ihc):
    config = AuxLossConfig(mask=MaskConfig(closing_radius=5))
    assert config.count_form == "poisson"
    rel, ab = (AuxLosses(AuxLossConfig(mask=config.mask, count_form=f)) for f in ("relative", "absolute"))
    poisson = AuxLosses(config, counter=rel.counter)
    ab.counter = rel.counter
    crop = real_ihc[:128, :128]
    real = _unit(crop)
    mask = torch.from_numpy(mask_from_dab(dab_channel(crop), config.mask)).float()[None, None]
    fake = real.flip(-1)
    a = rel(fake, real, mask, torch.zeros(1))
    b = ab(fake, real, mask, torch.zeros(1))
    diff = float((b["count_fake"] - b["count_target"]).abs())
    assert float(b["l5"]) == pytest.approx(diff, rel=1e-5)
    assert float(a["l5"]) == pytest.approx(diff / max(float(a["count_crop"]), 1.0), rel=1e-5)
    p = poisson(fake, real, mask, torch.zeros(1))
    assert float(p["l5"]) == pytest.approx(diff / max(float(a["count_crop"]), 1.0) ** 0.5, rel=1e-5)
