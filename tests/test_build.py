"""build-masks as a library: shard contents, resume, determinism, bad inputs, backends."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from atst_prep.build import BuildConfig, BuildError, build, read_manifest
from atst_prep.images import read_rgb
from atst_prep.mask import MaskConfig, dab_mask
from atst_prep.shard_check import validate
from atst_prep.shards import iter_samples, read_header
from atst_prep.sources import detect
from atst_prep.stain import dab_and_hematoxylin
from atst_prep.verify import content_digest

from .badfiles import BAD_PAIRS, add_bad_pairs

CONFIG = BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=3)


def _build(data: Path, out: Path, config: BuildConfig = CONFIG, **kwargs):
    return build(detect(data), out, config, **kwargs)


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("shard-*.h5"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory, synth_data):
    out = tmp_path_factory.mktemp("shards")
    summary = _build(synth_data, out)
    return out, summary


def test_build_writes_schema_valid_shards_and_a_manifest(built):
    out, summary = built
    assert summary.datasets == ["mist-her2"] and summary.samples == 8 and not summary.rejected
    manifest = read_manifest(out / "mist-her2")
    assert manifest["params"]["mask"]["closing_radius"] == 5
    assert [len(s["shards"]) for s in manifest["splits"].values()] == [2, 1]  # 6 train / 3, 2 val
    for split in manifest["splits"].values():
        assert split["complete"]
        for shard in split["shards"]:
            assert validate(out / "mist-her2" / shard["file"]) == []


def test_shard_contents_equal_a_direct_computation(built, synth_data):
    out, _ = built
    shard = out / "mist-her2" / "train" / "shard-00000.h5"
    header = read_header(shard)
    assert header["n_samples"] == 3 and header["split"] == "train"
    for sample in iter_samples(shard, arrays=("he", "ihc", "dab", "hema", "mask")):
        root = Path(header["source_root"])
        he, ihc = read_rgb(root / sample["he_path"]), read_rgb(root / sample["ihc_path"])
        np.testing.assert_array_equal(sample["he"], he)
        np.testing.assert_array_equal(sample["ihc"], ihc)
        dab, hema = dab_and_hematoxylin(ihc)
        np.testing.assert_allclose(sample["dab"], dab, atol=5.01e-5)  # fixed point, 1e-4 steps
        np.testing.assert_allclose(sample["hema"], hema, atol=5.01e-5)
        np.testing.assert_array_equal(sample["mask"].astype(bool), dab_mask(ihc, CONFIG.mask))
        assert sample["mask_fraction"] == pytest.approx(sample["mask"].mean())


def test_nuclei_and_alignment_groups_are_reserved_as_pending(built):
    out, _ = built
    with h5py.File(out / "mist-her2" / "val" / "shard-00000.h5") as f:
        for key in f["samples"]:
            assert f["samples"][key]["nuclei"].attrs["status"] == "pending"
            assert f["samples"][key]["alignment"].attrs["status"] == "pending"


def test_rerun_skips_finished_shards_and_changes_nothing(built, synth_data):
    out, _ = built
    before = {p: p.stat().st_mtime_ns for p in out.rglob("shard-*.h5")}
    summary = _build(synth_data, out)
    assert summary.shards_built == 0 and summary.shards_reused == 3
    assert {p: p.stat().st_mtime_ns for p in out.rglob("shard-*.h5")} == before


def test_same_inputs_give_byte_identical_shards_whatever_the_worker_count(built, synth_data, tmp_path):
    out, _ = built
    _build(synth_data, tmp_path, jobs=2)
    assert _shard_bytes(tmp_path) == _shard_bytes(out)


def test_other_parameters_need_overwrite(built, synth_data, tmp_path):
    out, _ = built
    shutil.copytree(out, tmp_path / "copy")
    other = BuildConfig(mask=MaskConfig(closing_radius=9), shard_size=3)
    with pytest.raises(BuildError, match="closing_radius 5 vs 9"):
        _build(synth_data, tmp_path / "copy", other)
    summary = _build(synth_data, tmp_path / "copy", other, overwrite=True)
    assert summary.shards_built == 3
    assert read_header(tmp_path / "copy" / "mist-her2" / "val" / "shard-00000.h5")["params"]["mask"][
        "closing_radius"] == 9


def test_content_digest_sees_a_changed_value_and_ignores_nothing_else(built, tmp_path):
    out, _ = built
    shard = out / "mist-her2" / "val" / "shard-00000.h5"
    copy = tmp_path / "copy.h5"
    shutil.copy(shard, copy)
    assert content_digest(copy) == content_digest(shard)
    with h5py.File(copy, "r+") as f:
        mask = f["samples/00000/mask"]
        mask[0, 0] = 1 - mask[0, 0]
    assert content_digest(copy) != content_digest(shard)


def test_leftover_partial_files_are_removed_and_missing_shards_rebuilt(built, synth_data, tmp_path):
    out, _ = built
    shutil.copytree(out, tmp_path / "copy")
    victim = tmp_path / "copy" / "mist-her2" / "train" / "shard-00001.h5"
    partial = victim.with_name(".shard-00001.h5.999.partial")
    victim.rename(partial)
    summary = _build(synth_data, tmp_path / "copy")
    assert summary.shards_built == 1 and not partial.exists()
    assert _shard_bytes(tmp_path / "copy") == _shard_bytes(out)


def test_bad_inputs_are_rejected_one_by_one_and_the_batch_completes(tmp_path, synth_data):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    root = data / "MIST" / "HER2" / "TrainValAB"
    add_bad_pairs(root / "trainA", root / "trainB", root / "trainA" / "synth_00000.jpg",
                  root / "trainB" / "synth_00000.jpg")
    seen = []
    summary = _build(data, tmp_path / "out", on_reject=seen.append)
    rejected = {r["name"]: r for r in summary.rejected}
    assert set(rejected) == set(BAD_PAIRS) | {"bad_missing_partner"}
    for name, (side, reason) in BAD_PAIRS.items():
        assert reason in rejected[name]["reason"], name
        assert rejected[name]["file"].endswith(name + Path(rejected[name]["file"]).suffix)
    assert "no IHC partner" in rejected["bad_missing_partner"]["reason"]
    assert summary.samples == 8 and len(seen) == len(rejected)
    manifest = read_manifest(tmp_path / "out" / "mist-her2")
    assert {r["name"] for r in manifest["splits"]["train"]["rejected"]} == set(rejected)
    # a resumed run reports the same rejections from the shards alone
    again = _build(data, tmp_path / "out")
    assert again.shards_built == 0 and {r["name"] for r in again.rejected} == set(rejected)


def test_store_images_can_be_turned_off(synth_data, tmp_path):
    config = BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=8, store_images=False)
    _build(synth_data, tmp_path, config, splits=["val"])
    shard = tmp_path / "mist-her2" / "val" / "shard-00000.h5"
    assert validate(shard) == []
    with h5py.File(shard) as f:
        assert "he" not in f["samples/00000"] and "mask" in f["samples/00000"]


def test_second_build_into_a_locked_folder_is_refused(built, synth_data):
    out, _ = built
    from atst_prep.runner import FolderLock

    lock = FolderLock(out / "mist-her2")
    try:
        with pytest.raises(BuildError, match="another build"):
            _build(synth_data, out)
    finally:
        lock.release()


@pytest.mark.slow
def test_dask_backend_on_a_local_cluster_gives_the_same_shards(built, synth_data, tmp_path):
    distributed = pytest.importorskip("distributed")
    out, _ = built
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        summary = _build(synth_data, tmp_path, backend="dask", scheduler=cluster.scheduler_address)
    assert summary.shards_built == 3
    # Same contents; the bytes are usually identical too, but HDF5 has been seen to lay a file
    # out differently inside a Dask worker now and then (contents equal, checked value by value).
    ours = {str(p.relative_to(tmp_path)): content_digest(p) for p in sorted(tmp_path.rglob("shard-*.h5"))}
    assert ours == {str(p.relative_to(out)): content_digest(p) for p in sorted(out.rglob("shard-*.h5"))}


def test_mist_bci_and_folder_layouts_build_side_by_side(tmp_path, synth_data):
    """One data/ folder holding all three layouts: each becomes its own dataset of shards."""
    import cv2

    data = tmp_path / "data"
    shutil.copytree(synth_data / "MIST", data / "MIST")
    mist = data / "MIST" / "HER2" / "TrainValAB"
    for i, name in enumerate(sorted(p.stem for p in (mist / "trainA").glob("*.jpg"))[:4]):
        split = "train" if i < 3 else "test"
        for side, folder in (("HE", "trainA"), ("IHC", "trainB")):
            target = data / "BCI_dataset" / side / split
            target.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target / f"{i:05d}_{split}_2+.png"), cv2.imread(str(mist / folder / f"{name}.jpg")))
        for side, folder in (("he", "trainA"), ("ihc", "trainB")):
            (data / "my_pairs" / side).mkdir(parents=True, exist_ok=True)
            shutil.copy(mist / folder / f"{name}.jpg", data / "my_pairs" / side / f"tile{i}.jpg")
    summary = _build(data, tmp_path / "shards")
    assert summary.datasets == ["bci", "mist-her2", "my-pairs"] and not summary.rejected
    bci = read_manifest(tmp_path / "shards" / "bci")
    assert {k: v["samples"] for k, v in bci["splits"].items()} == {"train": 3, "test": 1}
    folder = read_manifest(tmp_path / "shards" / "my-pairs")
    assert folder["splits"]["all"]["samples"] == 4
    sample = next(iter_samples(tmp_path / "shards" / "bci" / "train" / "shard-00000.h5", arrays=()))
    assert sample["meta"] == {"her2_level": "2+"}
