"""Dataset layout detection and pair listing, on empty files in tmp_path (no images opened)."""

from pathlib import Path

import pytest

from atst_prep.sources import (
    KNOWN_IDS,
    SourceError,
    count_mismatch,
    descriptor_dir,
    detect,
    load_descriptor,
)


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def make_mist(root: Path, markers=("HER2", "ER")) -> Path:
    for m in markers:
        ab = root / m / "TrainValAB"
        touch(ab / "trainA", "1.jpg", "2.jpg")
        touch(ab / "trainB", "1.jpg", "2.jpg")
        touch(ab / "valA", "9.jpg")
        touch(ab / "valB", "9.jpg")
    return root


def make_bci(root: Path) -> Path:
    touch(root / "HE" / "train", "00000_train_1+.png", "00001_train_3+.png", "00002_train_0.png")
    touch(root / "IHC" / "train", "00000_train_1+.png", "00001_train_3+.png", "00002_train_0.png")
    touch(root / "HE" / "test", "00000_test_2+.png")
    touch(root / "IHC" / "test", "00000_test_2+.png")
    return root


def make_folder(root: Path) -> Path:
    touch(root / "H&E", "b.png", "a.png")
    touch(root / "IHC", "a.jpg", "b.tif")
    return root


# --- detection from each entry point -------------------------------------------------------


def test_mist_root_yields_one_source_per_marker(tmp_path):
    sources = detect(make_mist(tmp_path / "MIST", markers=("HER2", "ER", "PR", "Ki67")))
    assert [s.id for s in sources] == ["mist-er", "mist-her2", "mist-ki67", "mist-pr"]
    her2 = sources[1]
    assert (her2.kind, her2.marker, her2.splits) == ("mist", "HER2", ("train", "val"))
    assert her2.root == (tmp_path / "MIST" / "HER2" / "TrainValAB").resolve()


@pytest.mark.parametrize("entry", ["HER2", "HER2/TrainValAB"])
def test_mist_detected_from_marker_and_trainvalab_folders(tmp_path, entry):
    make_mist(tmp_path / "MIST")
    (source,) = detect(tmp_path / "MIST" / entry)
    assert (source.id, source.marker, source.splits) == ("mist-her2", "HER2", ("train", "val"))
    assert [p.name for p in source.list_split("val").pairs] == ["9"]


def test_mist_marker_folder_names_are_case_insensitive_and_canonicalised(tmp_path):
    make_mist(tmp_path / "MIST", markers=("ki67",))
    (source,) = detect(tmp_path / "MIST")
    assert (source.id, source.marker) == ("mist-ki67", "Ki67")


def test_bci_root_detected_with_train_and_test_splits(tmp_path):
    (source,) = detect(make_bci(tmp_path / "BCI_dataset"))
    assert (source.id, source.kind, source.marker, source.splits) == ("bci", "bci", None, ("train", "test"))


def test_bci_recognised_by_file_names_when_root_is_renamed(tmp_path):
    (source,) = detect(make_bci(tmp_path / "downloads"))
    assert source.id == "bci"


def test_he_ihc_folder_with_splits_but_no_bci_names_is_a_plain_folder(tmp_path):
    touch(tmp_path / "My Pairs" / "HE" / "train", "x.png")
    touch(tmp_path / "My Pairs" / "IHC" / "train", "x.png")
    (source,) = detect(tmp_path / "My Pairs")
    assert (source.id, source.kind, source.splits) == ("my-pairs", "folder", ("train",))


def test_plain_folder_without_splits_has_split_all(tmp_path):
    (source,) = detect(make_folder(tmp_path / "Lab_Set.2"))
    assert (source.id, source.kind, source.marker, source.splits) == ("lab-set-2", "folder", None, ("all",))


def test_plain_folder_with_split_subfolders_lists_them_in_canonical_order(tmp_path):
    for side in ("a", "b"):
        touch(tmp_path / "pairs" / side / "test", "t.png")
        touch(tmp_path / "pairs" / side / "train", "r.png")
    (source,) = detect(tmp_path / "pairs")
    assert source.splits == ("train", "test")
    assert [p.name for p in source.list_split("test").pairs] == ["t"]


def test_plain_folder_with_split_suffixed_ab_folders_uses_the_split_names(tmp_path):
    touch(tmp_path / "cyc" / "trainA", "1.png")
    touch(tmp_path / "cyc" / "trainB", "1.png")
    touch(tmp_path / "cyc" / "testA", "2.png")
    touch(tmp_path / "cyc" / "testB", "2.png")
    (source,) = detect(tmp_path / "cyc")
    assert (source.kind, source.splits) == ("folder", ("train", "test"))


def test_plain_folder_never_takes_a_descriptor_id(tmp_path):
    (source,) = detect(make_folder(tmp_path / "mist-her2"))
    assert source.id == "mist-her2-folder"


def test_data_folder_holding_all_layouts_yields_all_sorted_by_id(tmp_path):
    make_mist(tmp_path / "data" / "MIST")
    make_bci(tmp_path / "data" / "BCI_dataset")
    make_folder(tmp_path / "data" / "extra")
    touch(tmp_path / "data" / "notes", "readme.txt")
    assert [s.id for s in detect(tmp_path / "data")] == ["bci", "extra", "mist-er", "mist-her2"]


def test_two_datasets_with_one_id_below_a_folder_raise(tmp_path):
    make_bci(tmp_path / "data" / "BCI_dataset")
    make_bci(tmp_path / "data" / "BCI_copy")
    with pytest.raises(SourceError, match="share the id 'bci'"):
        detect(tmp_path / "data")


def test_missing_folder_raises_source_error_naming_it(tmp_path):
    with pytest.raises(SourceError, match="no such folder") as info:
        detect(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_unrecognised_folder_raises_source_error_naming_it_and_the_layouts(tmp_path):
    touch(tmp_path / "junk" / "images", "1.png")
    with pytest.raises(SourceError, match="TrainValAB") as info:
        detect(tmp_path / "junk")
    assert str((tmp_path / "junk").resolve()) in str(info.value)


def test_file_path_raises_source_error(tmp_path):
    touch(tmp_path, "f.png")
    with pytest.raises(SourceError, match="not a folder"):
        detect(tmp_path / "f.png")


# --- listing ------------------------------------------------------------------------------


def test_pairs_matched_by_stem_and_sorted_in_plain_folders(tmp_path):
    (source,) = detect(make_folder(tmp_path / "set"))
    listing = source.list_split("all")
    assert [(p.name, p.he.name, p.ihc.name) for p in listing.pairs] == [("a", "a.png", "a.jpg"), ("b", "b.png", "b.tif")]
    assert listing.pairs[0].meta == {}


def test_mist_pairs_by_exact_file_name(tmp_path):
    make_mist(tmp_path / "MIST", markers=("PR",))
    ab = tmp_path / "MIST" / "PR" / "TrainValAB"
    touch(ab / "trainA", "3.jpg")
    touch(ab / "trainB", "3.png")  # same stem, other extension: not a MIST pair
    listing = detect(ab)[0].list_split("train")
    assert [p.name for p in listing.pairs] == ["1", "2"]
    assert [p.name for p in listing.unmatched_he] == ["3.jpg"]
    assert [p.name for p in listing.unmatched_ihc] == ["3.png"]


def test_unmatched_files_reported_on_either_side(tmp_path):
    touch(tmp_path / "s" / "he", "both.png", "only_he.png")
    touch(tmp_path / "s" / "ihc", "both.png", "only_ihc1.png", "only_ihc0.png")
    listing = detect(tmp_path / "s")[0].list_split("all")
    assert [p.name for p in listing.pairs] == ["both"]
    assert [p.name for p in listing.unmatched_he] == ["only_he.png"]
    assert [p.name for p in listing.unmatched_ihc] == ["only_ihc0.png", "only_ihc1.png"]


def test_missing_side_of_a_split_leaves_the_other_side_unmatched(tmp_path):
    touch(tmp_path / "s" / "he" / "train", "x.png")
    touch(tmp_path / "s" / "ihc" / "train", "x.png")
    touch(tmp_path / "s" / "he" / "val", "v.png")
    listing = detect(tmp_path / "s")[0].list_split("val")
    assert listing.pairs == () and [p.name for p in listing.unmatched_he] == ["v.png"]


def test_same_stem_with_two_extensions_is_a_duplicate_dropped_from_pairing(tmp_path):
    touch(tmp_path / "s" / "he", "x.png", "x.jpg", "y.png")
    touch(tmp_path / "s" / "ihc", "x.png", "y.png")
    listing = detect(tmp_path / "s")[0].list_split("all")
    assert [p.name for p in listing.pairs] == ["y"]
    assert [p.name for p in listing.duplicates] == ["x.jpg", "x.png"]
    assert [p.name for p in listing.unmatched_ihc] == ["x.png"]


def test_hidden_and_non_image_files_are_ignored_but_reported(tmp_path):
    touch(tmp_path / "s" / "he", "a.PNG", ".DS_Store", "._a.PNG", "notes.txt")
    touch(tmp_path / "s" / "ihc", "a.jpeg", "Thumbs.db")
    (tmp_path / "s" / "ihc" / "sub").mkdir()
    listing = detect(tmp_path / "s")[0].list_split("all")
    assert [p.name for p in listing.pairs] == ["a"]
    assert sorted(p.name for p in listing.ignored) == [".DS_Store", "._a.PNG", "Thumbs.db", "notes.txt"]
    assert listing.unmatched_he == listing.unmatched_ihc == listing.duplicates == ()


def test_bci_her2_level_parsed_into_meta(tmp_path):
    (source,) = detect(make_bci(tmp_path / "BCI_dataset"))
    train = source.list_split("train")
    assert [(p.name, dict(p.meta)) for p in train.pairs] == [
        ("00000_train_1+", {"her2_level": "1+"}),
        ("00001_train_3+", {"her2_level": "3+"}),
        ("00002_train_0", {"her2_level": "0"}),
    ]
    assert source.list_split("test").pairs[0].meta["her2_level"] == "2+"


def test_pair_meta_is_read_only_and_pairs_hash(tmp_path):
    pair = detect(make_bci(tmp_path / "BCI_dataset"))[0].list_split("test").pairs[0]
    with pytest.raises(TypeError):
        pair.meta["her2_level"] = "0"  # type: ignore[index]
    assert len({pair, pair}) == 1


def test_unknown_split_raises_listing_valid_ones(tmp_path):
    (source,) = detect(make_bci(tmp_path / "BCI_dataset"))
    with pytest.raises(SourceError, match="valid splits: train, test"):
        source.list_split("val")


# --- descriptors --------------------------------------------------------------------------

EXPECTED = {
    "mist-her2": {"train": 4642, "val": 1000},
    "mist-ki67": {"train": 4361, "val": 1000},
    "mist-er": {"train": 4153, "val": 1000},
    "mist-pr": {"train": 4139, "val": 1000},
    "bci": {"train": 3896, "test": 977},
}


@pytest.mark.parametrize("dataset_id", sorted(EXPECTED))
def test_descriptor_loads_with_published_pair_counts(dataset_id):
    d = load_descriptor(dataset_id)
    assert d is not None and d.id == dataset_id
    assert dict(d.expected_pairs) == EXPECTED[dataset_id]
    assert (d.tile_size, d.closing_radius) == (1024, 30)
    assert d.image_format == ("PNG" if dataset_id == "bci" else "JPEG")
    assert d.kind == ("bci" if dataset_id == "bci" else "mist")
    assert ("MICCAI 2023" if d.kind == "mist" else "CVPR Workshops 2022") in d.citation


def test_descriptor_files_are_exactly_the_known_ids():
    assert sorted(p.stem for p in descriptor_dir().glob("*.toml")) == sorted(KNOWN_IDS) == sorted(EXPECTED)


def test_descriptor_marker_matches_detected_marker(tmp_path):
    make_mist(tmp_path / "MIST", markers=("Ki67",))
    (source,) = detect(tmp_path / "MIST")
    assert load_descriptor(source.id).marker == source.marker == "Ki67"
    assert load_descriptor("bci").marker is None


def test_plain_folder_has_no_descriptor():
    assert load_descriptor("my-pairs") is None


def test_malformed_descriptor_raises_naming_the_file(tmp_path):
    (tmp_path / "bci.toml").write_text('id = "bci"\nkind = "bci"\n')
    with pytest.raises(SourceError, match="bci.toml: field 'layout'"):
        load_descriptor("bci", tmp_path)
    with pytest.raises(SourceError, match="not a dataset id"):
        load_descriptor("../bci")


def test_count_mismatch_warns_on_partial_download_only(tmp_path):
    (source,) = detect(make_bci(tmp_path / "BCI_dataset"))
    descriptor = load_descriptor("bci")
    message = count_mismatch(source, source.list_split("test"), descriptor)
    assert message is not None and "found 1 pairs" in message and "expected 977" in message
    assert "partial download" in message and "\n" not in message
    full = descriptor.__class__(**{**descriptor.__dict__, "expected_pairs": {"train": 3, "test": 1}})
    assert count_mismatch(source, source.list_split("test"), full) is None
    assert count_mismatch(source, source.list_split("train"), full) is None
    assert count_mismatch(source, source.list_split("train"), None) is None
