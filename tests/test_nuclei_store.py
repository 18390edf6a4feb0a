"""Nuclei in shards: the schema, counting at build time, ``count-nuclei`` (resume, atomicity), preview.

Most tests use the stand-in counters of ``tests/nuclei_stub.py`` (fast, and
independent of the classical detector's tuning); one runs ``"classical"``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from atst_prep import engine, preview
from atst_prep.build import BuildConfig, BuildError, build, read_manifest
from atst_prep.mask import MaskConfig
from atst_prep.nuclei import count_in_mask
from atst_prep.nuclei.store import CounterError, count_nuclei, load_counter
from atst_prep.shard_check import validate
from atst_prep.shards import as_stored, iter_samples, read_header
from atst_prep.sources import detect
from atst_prep.verify import verify

from .nuclei_stub import BlobCounter

CONFIG = BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=3)
BLOBS = {"counter": "test-blobs", "version": "1", "params": {"min_area": 10, "threshold": 0.06}}


def _shards(root: Path) -> list[Path]:
    return sorted(root.rglob("shard-*.h5"))


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in _shards(root)}


@pytest.fixture(scope="module")
def pending(tmp_path_factory, synth_data) -> Path:
    """Shards built without a counter: 3 shards, 8 samples, nuclei pending."""
    out = tmp_path_factory.mktemp("pending")
    build(detect(synth_data), out, CONFIG)
    return out


@pytest.fixture(scope="module")
def counted(tmp_path_factory, pending) -> Path:
    """The same shards after count-nuclei with the stand-in blob counter."""
    out = tmp_path_factory.mktemp("counted") / "shards"
    shutil.copytree(pending, out)
    summary = count_nuclei(out, "test-blobs")
    assert summary.shards_counted == 3 and summary.samples == 8 and summary.nuclei > 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_count_nuclei_fills_every_sample_and_the_manifest_checksums_still_verify(counted):
    counter = BlobCounter()
    for path in _shards(counted):
        assert validate(path) == []
        assert read_header(path)["params"]["nuclei"] == BLOBS
        with h5py.File(path) as f:
            for key in f["samples"]:
                g = f["samples"][key]
                attrs = dict(g["nuclei"].attrs)
                n = len(g["nuclei/areas"])
                assert attrs["status"] == "done" and attrs["counter"] == "test-blobs"
                assert attrs["counter_version"] == "1" and json.loads(attrs["counter_params"]) == BLOBS["params"]
                assert attrs["count"] == n > 0
                assert g["nuclei/centroids"].shape == (n, 2) and g["nuclei/centroids"].dtype == np.float32
                assert g["nuclei/areas"].dtype == np.int32
        for sample in iter_samples(path, arrays=("dab", "hema")):
            expected = counter.detect(sample["hema"], sample["dab"])  # on the stored densities
            np.testing.assert_array_equal(sample["centroids"], expected.centroids)
            np.testing.assert_array_equal(sample["areas"], expected.areas)
    manifest = read_manifest(counted / "mist-her2")
    assert manifest["params"]["nuclei"] == BLOBS and "nuclei_complete" not in manifest
    report = verify(counted)
    assert report.problems == [] and report.shards_ok == 3


def test_second_count_skips_every_shard_and_touches_no_file(counted):
    files = _shards(counted) + [counted / "mist-her2" / "manifest.json"]
    before = {p: p.stat().st_mtime_ns for p in files}
    seen = []
    summary = count_nuclei(counted, "test-blobs", on_start=lambda total, done: seen.append((total, done)))
    assert summary.shards_counted == 0 and summary.shards_skipped == 3 and seen == [(8, 8)]
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_same_inputs_give_byte_identical_counted_shards(pending, counted, tmp_path):
    again = _copy(pending, tmp_path / "again")
    count_nuclei(again, "test-blobs")
    assert _bytes(again) == _bytes(counted)
    assert read_manifest(again / "mist-her2") == read_manifest(counted / "mist-her2")


def test_interrupted_count_leaves_old_or_new_shards_and_a_rerun_completes(pending, counted, tmp_path, monkeypatch):
    out = _copy(pending, tmp_path / "out")
    old = _bytes(pending)
    calls = {"n": 0}
    detect_blobs = BlobCounter.detect

    def dies_in_the_second_shard(self, hema, dab):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return detect_blobs(self, hema, dab)

    monkeypatch.setattr(BlobCounter, "detect", dies_in_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        count_nuclei(out, "test-blobs")
    monkeypatch.setattr(BlobCounter, "detect", detect_blobs)
    new = _bytes(counted)
    now = _bytes(out)
    assert sum(now[k] == new[k] for k in now) == 1 and sum(now[k] == old[k] for k in now) == 2
    assert not list(out.rglob("*.partial"))
    report = verify(out)  # checksums match the shards as they are, but counting is unfinished
    assert report.shards_ok == 3 and len(report.problems) == 1 and "count-nuclei interrupted" in report.problems[0]

    # a hard kill would also leave a half-written copy behind
    leftover = out / "mist-her2" / "train" / ".shard-00001.h5.4242.partial"
    leftover.write_bytes(b"half a shard")
    summary = count_nuclei(out, "test-blobs")
    assert summary.shards_counted == 2 and summary.shards_skipped == 1 and not leftover.exists()
    assert _bytes(out) == new
    assert verify(out).problems == []


def test_a_kill_between_renaming_a_shard_and_updating_the_manifest_is_repaired_by_a_rerun(pending, counted, tmp_path,
                                                                                            monkeypatch):
    out = _copy(pending, tmp_path / "out")
    writes = {"n": 0}
    write_manifest_file = engine.write_manifest_file  # every pass writes manifests through the engine

    def dies_before_recording_the_first_shard(folder, manifest):
        writes["n"] += 1
        if writes["n"] == 2:  # the 1st write marks counting as started; the 2nd records a finished shard
            raise KeyboardInterrupt
        return write_manifest_file(folder, manifest)

    monkeypatch.setattr(engine, "write_manifest_file", dies_before_recording_the_first_shard)
    with pytest.raises(KeyboardInterrupt):
        count_nuclei(out, "test-blobs")
    monkeypatch.setattr(engine, "write_manifest_file", write_manifest_file)
    assert any("checksum mismatch" in p for p in verify(out).problems)  # one shard is new, its entry old
    summary = count_nuclei(out, "test-blobs")
    assert summary.shards_counted == 2 and summary.shards_skipped == 1
    assert _bytes(out) == _bytes(counted)
    assert read_manifest(out / "mist-her2") == read_manifest(counted / "mist-her2")
    assert verify(out).problems == []


def test_recounting_with_another_counter_needs_overwrite(counted, tmp_path):
    out = _copy(counted, tmp_path / "out")
    before = _bytes(out)
    with pytest.raises(BuildError, match=r"holds nuclei from test-blobs v1; use --overwrite to recount with test-grid v2"):
        count_nuclei(out, "test-grid")
    assert _bytes(out) == before
    summary = count_nuclei(out, "test-grid", overwrite=True)
    assert summary.shards_counted == 3
    for path in _shards(out):
        assert validate(path) == []
        with h5py.File(path) as f:
            nuclei = f["samples/00000/nuclei"]
            assert nuclei.attrs["counter"] == "test-grid" and nuclei.attrs["count"] == 64  # 256 px / 32 px grid
    assert read_manifest(out / "mist-her2")["params"]["nuclei"]["counter"] == "test-grid"
    assert verify(out).problems == []


def test_a_shard_that_differs_from_its_manifest_is_not_counted(pending, tmp_path):
    out = _copy(pending, tmp_path / "out")
    shard = out / "mist-her2" / "val" / "shard-00000.h5"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(BuildError, match="checksum differs from the manifest"):
        count_nuclei(out, "test-blobs")
    assert shard.read_bytes() == bytes(data) and not list(out.rglob("*.partial"))


def test_build_with_a_counter_stores_the_nuclei_count_nuclei_would(synth_data, counted, tmp_path):
    config = BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=3, counter="test-blobs")
    assert config.params()["nuclei"] == BLOBS
    summary = build(detect(synth_data), tmp_path, config)
    assert summary.shards_built == 3
    for path in _shards(tmp_path):
        assert validate(path) == []
        built = list(iter_samples(path, arrays=()))
        later = list(iter_samples(counted / path.relative_to(tmp_path), arrays=()))
        for a, b in zip(built, later, strict=True):
            np.testing.assert_array_equal(a["centroids"], b["centroids"])
            np.testing.assert_array_equal(a["areas"], b["areas"])
    assert read_manifest(tmp_path / "mist-her2")["params"]["nuclei"] == BLOBS
    # shards counted after the build are what a build with that counter makes: a rebuild reuses them
    again = build(detect(synth_data), _copy(counted, tmp_path / "copy"), config)
    assert again.shards_built == 0 and again.shards_reused == 3


def test_build_without_a_counter_keeps_its_parameters_and_nuclei_pending(pending):
    assert "nuclei" not in CONFIG.params()
    with h5py.File(_shards(pending)[0]) as f:
        assert all(f["samples"][k]["nuclei"].attrs["status"] == "pending" for k in f["samples"])


def test_building_over_uncounted_shards_with_a_counter_points_to_count_nuclei(synth_data, pending, tmp_path):
    config = BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=3, counter="test-blobs")
    with pytest.raises(BuildError, match=r"\(nuclei from no counter vs test-blobs v1\); .*'atst prep count-nuclei --counter test-blobs'"):
        build(detect(synth_data), _copy(pending, tmp_path / "copy"), config)


def test_building_without_a_counter_over_counted_shards_says_how_to_keep_them(synth_data, counted, tmp_path):
    with pytest.raises(BuildError, match=r"\(nuclei from test-blobs v1 vs no counter\); .*--counter test-blobs"):
        build(detect(synth_data), _copy(counted, tmp_path / "copy"), CONFIG)


def test_validate_checks_the_nuclei_of_counted_samples(counted, tmp_path):
    shard = _copy(counted, tmp_path / "copy") / "mist-her2" / "val" / "shard-00000.h5"
    with h5py.File(shard, "r+") as f:
        f["samples/00000/nuclei"].attrs["count"] = 3
        del f["samples/00001/nuclei/areas"]
        f["samples/00001/nuclei/areas"] = np.zeros(2, np.int64)
    problems = validate(shard)
    assert any(p.startswith("sample 00000: nuclei count attribute 3") for p in problems)
    assert any(p.startswith("sample 00001: nuclei/centroids is") for p in problems)
    assert any(p.startswith("sample 00001: nuclei/areas is (2,) int64") for p in problems)


def test_counting_stored_densities_matches_the_float_densities_closely(synth_data):
    """as_stored rounds to the 1e-4 fixed point: detections hardly move (why both paths use it)."""
    from atst_prep.images import read_rgb
    from atst_prep.stain import dab_and_hematoxylin

    ihc = read_rgb(next((synth_data / "MIST" / "HER2" / "TrainValAB" / "trainB").glob("*.jpg")))
    dab, hema = dab_and_hematoxylin(ihc)
    assert np.abs(as_stored(hema) - hema).max() <= 5.01e-5
    exact, stored = BlobCounter().detect(hema, dab), BlobCounter().detect(as_stored(hema), as_stored(dab))
    assert abs(len(exact) - len(stored)) <= 1


@pytest.mark.parametrize("name, weights, message", [
    ("no-such-counter", None, "unknown nucleus counter 'no-such-counter'"),
    ("test-blobs", "w.pt", "takes no weights file"),
])
def test_counters_that_cannot_be_made_are_one_line_errors(name, weights, message):
    with pytest.raises(CounterError, match=message) as info:
        load_counter(name, weights)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=message):  # and so a config error for build-masks
        BuildConfig(counter=name, counter_weights=weights)


def test_preview_draws_centroids_as_cyan_dots_where_they_are(counted):
    sample = next(iter_samples(_shards(counted)[0], arrays=("he", "ihc", "dab", "mask")))
    labels = []
    original = preview._label
    try:
        preview._label = lambda tile, text: labels.append(text)
        with_dots = preview.sample_row(sample, thumb=128)
        plain = preview.sample_row({k: v for k, v in sample.items() if k not in ("centroids", "areas")}, thumb=128)
    finally:
        preview._label = original
    cyan = np.all(with_dots == preview.NUCLEUS_COLOUR, axis=-1)
    assert not np.all(plain == preview.NUCLEUS_COLOUR, axis=-1).any()
    assert cyan[:, :3 * 128].sum() == 0 and cyan[:, 3 * 128:].sum() > len(sample["centroids"])
    for x, y in preview.thumb_coords(sample["centroids"], sample["mask"].shape, (128, 128)):
        assert cyan[int(round(y)), 3 * 128 + int(round(x))]
    inside = count_in_mask(sample["centroids"], sample["mask"].astype(bool))
    assert labels[0].endswith(f"{len(sample['centroids'])} nuclei ({inside} in mask)")
    assert "nuclei" not in labels[1]


def test_thumbnail_coordinates_keep_pixel_centres():
    # 1024 px -> 256 px: full pixels 0..3 make thumbnail pixel 0, 1020..1023 make pixel 255
    xy = preview.thumb_coords(np.array([[1.5, 1021.5], [0, 1023]], np.float32), (1024, 1024), (256, 256))
    np.testing.assert_allclose(xy, [[0, 255], [-0.375, 255.375]])


# loky reuses the workers of earlier tests; the counter registry imports torch in them (~0.8 GB), which
# loky takes for a leak and answers by restarting the worker, with this warning
@pytest.mark.filterwarnings("ignore:A worker stopped while some jobs were given to the executor")
def test_classical_counter_end_to_end_in_parallel_gives_the_same_shards(pending, tmp_path):
    one = _copy(pending, tmp_path / "one")
    two = _copy(pending, tmp_path / "two")
    assert count_nuclei(one, "classical", jobs=1).shards_counted == 3
    assert count_nuclei(two, "classical", jobs=2).shards_counted == 3
    assert _bytes(one) == _bytes(two)
    assert verify(two).problems == []
    assert read_manifest(two / "mist-her2")["params"]["nuclei"]["counter"] == "classical"
