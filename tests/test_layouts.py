"""Compact shards (the source files' bytes) hold the same pairs as raw ones (decoded pixels and densities):
every reader gets the same arrays, masks and nuclei, the loader the same crops; old (schema 2) shards read."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from atst_model.data import ShardPairs
from atst_prep.build import BuildConfig, build
from atst_prep.images import read_file
from atst_prep.manifest import shard_paths
from atst_prep.mask import MaskConfig
from atst_prep.nuclei.store import count_nuclei
from atst_prep.shard_check import validate
from atst_prep.shards import iter_samples, read_header
from atst_prep.sources import detect

ARRAYS = ("he", "ihc", "dab", "hema", "mask")


def _config(layout: str, **kw) -> BuildConfig:
    return BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=3, window=128, counter="classical",
                       layout=layout, **kw)


@pytest.fixture(scope="module")
def both(synth_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    for layout in ("compact", "raw"):
        build(detect(synth_data), root / layout, _config(layout))
    return root


def _samples(folder):
    return [s for p in sorted(folder.rglob("shard-*.h5")) for s in iter_samples(p, arrays=ARRAYS)]


def test_compact_and_raw_shards_give_every_reader_the_same_arrays_and_nuclei(both, synth_data):
    compact, raw = _samples(both / "compact"), _samples(both / "raw")
    assert len(compact) == len(raw) == 8
    for a, b in zip(compact, raw):
        assert a["name"] == b["name"]
        for key in ARRAYS + ("centroids", "areas"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{a['name']} {key}")
    for path in sorted((both / "compact").rglob("shard-*.h5")):
        assert validate(path) == [] and read_header(path)["layout"] == "compact"
        with h5py.File(path, "r") as f:  # the source files, bit for bit
            for key in sorted(f["samples"]):
                g = f["samples"][key]
                root = read_header(path)["source_root"]
                assert g["ihc_file"][()].tobytes() == read_file(f"{root}/{g.attrs['ihc_path']}")
                assert "dab" not in g and "he" not in g


def test_compact_shards_are_a_fraction_of_raw(both):
    size = {k: sum(p.stat().st_size for p in (both / k).rglob("shard-*.h5")) for k in ("compact", "raw")}
    assert size["compact"] < size["raw"] / 3, size


def test_recounting_a_compact_shard_gives_the_build_time_nuclei(both, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(both / "compact", out)
    count_nuclei(out, "classical", overwrite=True)
    for a, b in zip(_samples(out), _samples(both / "raw")):
        np.testing.assert_array_equal(a["centroids"], b["centroids"])


def test_the_loader_gives_the_same_crops_from_both_layouts(both):
    kw = dict(crop=128, seed=3, unpaired=True, flips=True)
    compact = ShardPairs(shard_paths(both / "compact"), **kw)
    raw = ShardPairs(shard_paths(both / "raw"), **kw)
    assert len(compact) == len(raw)
    for i in range(len(raw)):
        a, b = compact[i], raw[i]
        for key, value in b.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(a[key], value), (i, key)
            else:
                assert a[key] == value


def test_the_trainers_order_decodes_each_compact_image_once_per_item_and_keeps_the_batches(both, monkeypatch):
    """With EpochOrder(partners=True) an item's unpaired IHC is the previous item's IHC, already decoded:
    two decodes per item (H&E, IHC), not three, whatever the threads (and one more per epoch); batches as
    a DataLoader's, and as from raw shards."""
    import atst_model.data as data_module
    from atst_model.loader import ThreadedLoader
    from atst_model.train.state import EpochOrder

    calls = []
    decode = data_module.decode_rgb
    monkeypatch.setattr(data_module, "decode_rgb", lambda *a, **k: calls.append(a[1]) or decode(*a, **k))
    kw = dict(crop=128, seed=3, unpaired=True, flips=True, raw=True)
    raw = ShardPairs(shard_paths(both / "raw"), **kw)
    order = EpochOrder(len(raw), seed=1, partners=True)
    order.set_position(2, 0)
    want = list(torch.utils.data.DataLoader(raw, batch_size=1, sampler=order))
    for threads, batch in ((2, 1), (2, 3), (0, 1)):
        compact = ShardPairs(shard_paths(both / "compact"), **kw)
        calls.clear()
        got = list(ThreadedLoader(compact, batch_size=batch, sampler=order, threads=threads, drop_last=False))
        # the first item's partner, the epoch's last pair, is decoded ahead (and may be again at the end)
        assert 2 * len(compact) <= len(calls) <= 2 * len(compact) + 1, (threads, batch, len(calls))
        assert len(set(calls)) == 2 * len(compact)  # nothing else decoded twice, also when threads ask at once
        items = [{k: v[i:i + 1] if isinstance(v, torch.Tensor) else v[i:i + 1] for k, v in b.items()}
                 for b in got for i in range(len(b["name"]))]
        for a, b in zip(items, want, strict=True):
            for key, value in b.items():
                assert torch.equal(a[key], value) if isinstance(value, torch.Tensor) else a[key] == value, key


def test_threads_asking_for_one_image_at_once_decode_it_once_and_share_a_failure():
    import threading

    from atst_model.data import _Decoded

    cache, started, release, calls = _Decoded(2), threading.Event(), threading.Event(), []

    def slow():
        calls.append(1)
        started.set()
        release.wait(5)
        return np.ones(3)

    results = []
    first = threading.Thread(target=lambda: results.append(cache.get("a", slow)))
    first.start()
    started.wait(5)
    second = threading.Thread(target=lambda: results.append(cache.get("a", slow)))
    second.start()
    release.set()
    first.join(5)
    second.join(5)
    assert len(calls) == 1 and len(results) == 2 and results[0] is results[1]

    def broken():
        calls.append(1)
        raise ValueError("corrupt")

    for _ in range(2):  # a failure is not kept: the next caller tries again and gets the same error
        with pytest.raises(ValueError, match="corrupt"):
            cache.get("b", broken)
    assert len(calls) == 3
    cache.get("c", lambda: np.zeros(1))
    cache.get("d", lambda: np.zeros(1))
    cache.get("a", lambda: calls.append(1) or np.ones(3))  # two kept: "a" was dropped, so decoded again
    assert len(calls) == 4


def test_old_raw_shards_still_read(both, tmp_path):
    # schema 2: no layout attribute, always raw; the loader and every reader still take it
    out = tmp_path / "old"
    shutil.copytree(both / "raw", out)
    for path in out.rglob("shard-*.h5"):
        with h5py.File(path, "r+") as f:
            f.attrs["schema_version"] = 2
            del f.attrs["layout"]
        assert validate(path) == [] and read_header(path)["layout"] == "raw"
    data = ShardPairs(shard_paths(out), crop=128, seed=3)
    reference = ShardPairs(shard_paths(both / "raw"), crop=128, seed=3)
    assert torch.equal(data[0]["ihc"], reference[0]["ihc"])
    for a, b in zip(_samples(out), _samples(both / "raw")):
        np.testing.assert_array_equal(a["dab"], b["dab"])


def test_compact_without_images_keeps_the_densities(synth_data, tmp_path):
    build(detect(synth_data), tmp_path, _config("compact", store_images=False))
    paths = sorted(tmp_path.rglob("shard-*.h5"))
    assert all(validate(p) == [] for p in paths)
    sample = next(iter_samples(paths[0], arrays=ARRAYS))
    assert "he" not in sample and sample["dab"].dtype == np.float32


def test_filter_misaligned_scores_and_registers_both_layouts_alike(both, tmp_path):
    from atst_prep.align.store import filter_misaligned

    runs = {}
    for layout in ("compact", "raw"):
        out = tmp_path / layout
        shutil.copytree(both / layout, out)
        filter_misaligned(out, register=True, keep_list=tmp_path / f"{layout}.csv", pictures=False)
        runs[layout] = [s for p in sorted(out.rglob("shard-*.h5"))
                        for s in iter_samples(p, arrays=("mask_registered", "dab_registered"))]
        assert all(validate(p) == [] for p in out.rglob("shard-*.h5"))
    assert (tmp_path / "compact.csv").read_bytes() == (tmp_path / "raw.csv").read_bytes()
    for a, b in zip(runs["compact"], runs["raw"]):
        assert a["alignment"] == b["alignment"]
        for key in ("mask_registered", "dab_registered", "centroids_registered"):
            np.testing.assert_array_equal(a[key], b[key])
