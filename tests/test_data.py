"""ShardPairs: crops and targets equal a direct computation from the shards; keep-list; workers."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from atst_model.data import ShardPairs, keep_freed_memory, read_keep_list, to_unit
from atst_model.loader import ThreadedLoader
from atst_prep.build import BuildConfig, build
from atst_prep.mask import MaskConfig, mask_from_dab
from atst_prep.shards import ShardError, iter_samples
from atst_prep.sources import detect
from atst_prep.stain import dab_channel

CROP = 96
MASK = MaskConfig(closing_radius=5)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, synth_data) -> list[Path]:
    """The synthetic 256 px dataset built with the classical nucleus counter (6 train, 2 val pairs)."""
    out = tmp_path_factory.mktemp("train-shards")
    build(detect(synth_data), out, BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=3, counter="classical",
                                               window=CROP, window_stride=CROP // 2))
    return sorted(out.rglob("shard-*.h5"))


@pytest.fixture(scope="module")
def samples(shards) -> dict[str, dict]:
    found = {s["name"]: s for p in shards for s in iter_samples(p, arrays=("he", "ihc", "dab", "mask"))}
    for p in shards:  # the training windows and their own Eq. 1 masks
        with h5py.File(p, "r") as f:
            for g in f["samples"].values():
                found[str(g.attrs["name"])]["windows"] = (g["windows/origins"][()], g["windows/mask"][()])
    return found


def _brute_force_counts(centroids: np.ndarray, mask: np.ndarray, y0: int, x0: int, c: int) -> tuple[int, int]:
    """Nuclei (rounded centroid pixel of the tile) inside the crop, and inside crop and mask."""
    in_crop = in_mask = 0
    for x, y in centroids:
        px, py = int(np.rint(x)), int(np.rint(y))
        if x0 <= px < x0 + c and y0 <= py < y0 + c:
            in_crop += 1
            in_mask += bool(mask[py, px])
    return in_crop, in_mask


def test_items_equal_a_direct_computation_from_the_shards(shards, samples):
    ds = ShardPairs(shards, crop=CROP, seed=7)
    assert len(ds) == 8
    counted = 0
    for i in range(len(ds)):
        item = ds[i]
        s = samples[item["name"]]
        y0, x0 = item["origin"].tolist()
        win = np.s_[y0:y0 + CROP, x0:x0 + CROP]
        for key in ("he", "ihc"):
            want = torch.from_numpy(s[key][win]).permute(2, 0, 1).float() / 127.5 - 1
            assert item[key].shape == (3, CROP, CROP) and item[key].dtype == torch.float32
            torch.testing.assert_close(item[key], want, rtol=0, atol=1e-6)
        origins, window_masks = s["windows"]
        (k,) = np.flatnonzero((origins == [y0, x0]).all(axis=1))  # crops are the shard's training windows
        mask = window_masks[k]
        np.testing.assert_array_equal(item["mask"][0].numpy(), mask.astype(np.float32))
        np.testing.assert_array_equal(mask.astype(bool), mask_from_dab(dab_channel(s["ihc"][win]), MASK))
        want_dab = cv2.mean(s["dab"][win], mask=mask)[0] if mask.any() else 0.0
        assert item["dab_mean_in_mask"].item() == pytest.approx(want_dab, abs=5.01e-5)  # the shard's 1e-4 steps
        full = np.zeros_like(s["mask"])
        full[win] = mask
        in_crop, in_mask = _brute_force_counts(s["centroids"], full, y0, x0, CROP)
        assert (item["count_in_crop"].item(), item["count_in_mask"].item()) == (in_crop, in_mask)
        counted += in_mask
        other = samples[item["name_unpaired"]]
        uy, ux = item["origin_unpaired"].tolist()
        assert item["name_unpaired"] != item["name"]
        want = torch.from_numpy(other["ihc"][uy:uy + CROP, ux:ux + CROP]).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(item["ihc_unpaired"], want, rtol=0, atol=1e-6)
    assert counted > 0  # some crops do hold nuclei inside the mask


def test_crops_depend_only_on_seed_epoch_and_index(shards):
    ds = ShardPairs(shards, crop=CROP, seed=3)
    first = [ds[i]["origin"].tolist() for i in range(len(ds))]
    assert [ds[i]["origin"].tolist() for i in reversed(range(len(ds)))][::-1] == first
    ds.set_epoch(1)
    assert [ds[i]["origin"].tolist() for i in range(len(ds))] != first
    ds.set_epoch(0)
    assert [ds[i]["origin"].tolist() for i in range(len(ds))] == first
    assert [ShardPairs(shards, crop=CROP, seed=4)[i]["origin"].tolist() for i in range(len(ds))] != first


def test_two_workers_give_the_same_items_as_one_process(shards):
    ds = ShardPairs(shards, crop=CROP, seed=5)
    ds.set_epoch(2)
    ds[0]  # a handle opened in the parent must not leak into the workers
    batches = [list(DataLoader(ds, batch_size=3, num_workers=n)) for n in (0, 2)]
    for a, b in zip(*batches):
        assert a["name"] == b["name"]
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, b[key], rtol=0, atol=0)


def test_threaded_loader_gives_the_dataloader_batches_in_sampler_order(shards):
    ds = ShardPairs(shards, crop=CROP, seed=5, raw=True)
    ds.set_epoch(1)
    order = [5, 2, 7, 0, 1, 6, 3, 4]
    want = list(DataLoader(ds, batch_size=3, sampler=order, drop_last=True))
    for threads in (0, 1, 3):
        got = list(ThreadedLoader(ds, batch_size=3, sampler=order, threads=threads, prefetch=1))
        assert len(got) == len(want) == 2
        for a, b in zip(got, want):
            assert a["name"] == b["name"]
            for key, value in b.items():
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(a[key], value, rtol=0, atol=0)
    kept_last = list(ThreadedLoader(ds, batch_size=3, sampler=order, drop_last=False))
    assert [len(b["name"]) for b in kept_last] == [3, 3, 2]


def test_epoch_order_partners_are_the_previous_index_and_resume_alike():
    from atst_model.train.state import EpochOrder

    for n, world in ((8, 1), (9, 2), (3, 4)):
        for rank in range(world):
            plain, paired = EpochOrder(n, seed=3, rank=rank, world=world), EpochOrder(n, seed=3, rank=rank,
                                                                                   world=world, partners=True)
            plain.set_position(4, 0)
            paired.set_position(4, 0)
            order, pairs = list(plain), list(paired)
            assert [i for i, _ in pairs] == order  # the same order as without partners
            assert [j for _, j in pairs] == order[-1:] + order[:-1]  # each one's partner is the one before
            if len(set(order)) > 1:
                assert sorted(j for _, j in pairs) == sorted(order)  # each pair is a partner once per epoch
            start = min(2, len(pairs))
            paired.set_position(4, start)
            assert list(paired) == pairs[start:] and len(paired) == len(pairs) - start  # a restart resumes alike


def test_a_given_partner_supplies_the_unpaired_ihc(shards):
    ds = ShardPairs(shards, crop=CROP, seed=5, raw=True)
    ds.set_epoch(1)
    names = ds.names()
    alone, paired = ds[2], ds[(2, 5)]
    assert paired["name_unpaired"] == names[5]
    for key in ("he", "ihc", "mask", "origin", "count_in_mask", "dab_darkness_in_mask"):
        assert torch.equal(alone[key], paired[key]), key  # the pair's own crop does not change
    o = paired["origin_unpaired"].tolist()
    other = next(s for path in shards for s in iter_samples(path, arrays=("ihc",)) if s["name"] == names[5])
    np.testing.assert_array_equal(other["ihc"][o[0]:o[0] + CROP, o[1]:o[1] + CROP], paired["ihc_unpaired"])
    itself = ds[(2, 2)]  # a pair is never its own partner: a random other one instead, as without a partner
    assert itself["name_unpaired"] == alone["name_unpaired"]
    with pytest.raises(IndexError, match="out of range"):
        ds[(2, 99)]


def test_threaded_loader_stops_early_and_passes_errors_on(shards):
    ds = ShardPairs(shards, crop=CROP, seed=5)
    loader = ThreadedLoader(ds, batch_size=2, sampler=range(len(ds)), threads=2)
    for _ in loader:  # leaving the loop early must not hang or leak running threads
        break
    with pytest.raises(IndexError, match="out of range"):
        list(ThreadedLoader(ds, batch_size=2, sampler=[0, 1, 99, 2], threads=2))
    with pytest.raises(ValueError):
        ThreadedLoader(ds, batch_size=0, sampler=[0])


def test_keep_freed_memory_is_harmless_to_call_again():
    assert keep_freed_memory() in (True, False)
    assert keep_freed_memory() in (True, False)


def test_raw_items_convert_to_the_float_items(shards):
    floats, raw = ShardPairs(shards, crop=CROP, seed=1), ShardPairs(shards, crop=CROP, seed=1, raw=True)
    item = raw[2]
    assert item["he"].dtype == torch.uint8 and item["mask"].dtype == torch.uint8
    assert item["he"].shape == (CROP, CROP, 3) and item["mask"].shape == (1, CROP, CROP)  # as stored
    converted, want = to_unit(item), floats[2]
    for key in ("he", "ihc", "ihc_unpaired", "mask", "dab_mean_in_mask", "count_in_mask"):
        torch.testing.assert_close(converted[key], want[key], rtol=0, atol=1e-6)
    batch = to_unit(next(iter(DataLoader(raw, batch_size=2))))
    assert batch["he"].shape == (2, 3, CROP, CROP)
    assert batch["he"].is_contiguous(memory_format=torch.channels_last)  # the generators' layout, no copy


def _keep_list(path: Path, rows: list[tuple[str, str, str]], columns=("name", "split", "score", "kept")) -> Path:
    lines = [",".join(columns)]
    for name, split, kept in rows:
        values = {"name": name, "split": split, "score": "0.5", "kept": kept}
        lines.append(",".join(values[c] for c in columns))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_keep_list_filters_samples(shards, samples, tmp_path):
    names = sorted(samples)
    splits = {n: ("val" if "val" in str(p) else "train") for p in shards for n in
              [s["name"] for s in iter_samples(p, arrays=())]}
    rows = [(n, splits[n], v) for n, v in zip(names, ["true", "1", "True", "false", "0", "", "no", "yes"])]
    ds = ShardPairs(shards, crop=CROP, keep_list=_keep_list(tmp_path / "keep.csv", rows))
    assert sorted(ds.names()) == names[:3]
    # without a split column names alone decide; unlisted pairs are dropped
    ds = ShardPairs(shards, crop=CROP, keep_list=_keep_list(tmp_path / "k2.csv", [(names[4], "", "true")],
                                                            columns=("name", "kept")))
    assert ds.names() == [names[4]]
    assert ds[0]["name_unpaired"] == names[4]  # only one pair: the unpaired crop comes from it too
    # a (split, name) that does not exist keeps nothing
    wrong = _keep_list(tmp_path / "k3.csv", [(names[0], "test", "true")])
    with pytest.raises(ValueError, match="no sample kept by keep-list") as err:
        ShardPairs(shards, crop=CROP, keep_list=wrong)
    assert "\n" not in str(err.value)


def test_keep_list_without_the_needed_columns_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("pair,kept\nx,true\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_keep_list(path)
    with pytest.raises(ValueError, match="cannot read keep-list"):
        read_keep_list(tmp_path / "missing.csv")


def test_shards_that_cannot_train_are_refused_with_the_reason(shards, synth_data, tmp_path):
    with pytest.raises(ShardError, match="smaller than the 512 px crop"):
        ShardPairs(shards, crop=512)
    build(detect(synth_data), tmp_path, BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=8, window=CROP),
          splits=["val"])
    with pytest.raises(ShardError, match="count-nuclei"):
        ShardPairs(sorted(tmp_path.rglob("shard-*.h5")), crop=CROP)
    with pytest.raises(ValueError, match="crop"):
        ShardPairs(shards, crop=0)
