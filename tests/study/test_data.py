"""Identity discovery, stratified identity splits, held-out pairs and the linked training folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oaml.data.datasets import FolderDataset
from oaml.errors import ConfigError, DataError
from oaml.study.data import (DEFAULT_DATASETS, VIEW2_DATASET, Identity, benchmark_pairs,
                             discover_identities, held_out_pairs, link_train_folder, split_identities,
                             validation_split)


def _tree(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for k in range(n):
            (root / name / f"{k}.png").write_bytes(b"x")
    return root


def _identities(dataset: str, n: int, images: int = 3) -> list[Identity]:
    return [Identity(dataset, f"p{k}", f"/{dataset}/p{k}", tuple(f"/{dataset}/p{k}/{j}.png" for j in range(images)))
            for k in range(n)]


def test_discover_names_identities_by_dataset_and_skips_single_images(tmp_path: Path) -> None:
    a = _tree(tmp_path / "setA", {"x": 3, "y": 1, "z": 2})
    b = _tree(tmp_path / "setB", {"x": 2})
    (a / "x" / "notes.txt").write_text("not an image")
    found = discover_identities([a, b])
    assert [i.key for i in found] == ["setA/x", "setA/z", "setB/x"]  # y has one image: no pairs possible
    assert [len(i.images) for i in found] == [3, 2, 2]
    assert all(Path(p).is_absolute() for i in found for p in i.images)


def test_discover_refuses_missing_duplicate_and_empty_roots(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        discover_identities([tmp_path / "nope"])
    a = _tree(tmp_path / "one" / "faces", {"x": 2})
    b = _tree(tmp_path / "two" / "faces", {"y": 2})
    with pytest.raises(DataError, match="same folder name"):
        discover_identities([a, b])
    empty = _tree(tmp_path / "empty", {"solo": 1})
    with pytest.raises(DataError, match=">= 2 images"):
        discover_identities([empty])


def test_split_is_stratified_disjoint_and_seeded() -> None:
    identities = _identities("att", 40) + _identities("lfw", 10) + _identities("johns", 5)
    split = split_identities(identities, 0.3, seed=0)
    train, test = {i.key for i in split.train}, {i.key for i in split.test}
    assert not train & test and len(train | test) == 55
    held = {d: sum(i.dataset == d for i in split.test) for d in ("att", "lfw", "johns")}
    assert held == {"att": 12, "lfw": 3, "johns": 2}  # round(0.3 n) per dataset: 12, 3, round(1.5) = 2
    again = split_identities(identities, 0.3, seed=0)
    assert again == split
    other = split_identities(identities, 0.3, seed=1)
    assert {i.key for i in other.test} != test


def test_split_keeps_one_identity_on_each_side_and_refuses_tiny_data() -> None:
    split = split_identities(_identities("big", 40) + _identities("pair", 2), 0.9, seed=3)
    assert sum(i.dataset == "pair" for i in split.test) == 1  # never all of a dataset
    assert sum(i.dataset == "pair" for i in split.train) == 1
    with pytest.raises(ConfigError, match="--test-fraction"):
        split_identities(_identities("big", 8), 1.0, seed=0)
    with pytest.raises(ConfigError, match="needs >= 4"):
        split_identities(_identities("small", 4), 0.5, seed=0)


def test_held_out_pairs_are_all_genuine_plus_as_many_distinct_impostors() -> None:
    test = tuple(_identities("d", 3, images=4)) + tuple(_identities("e", 2, images=3))
    pairs = held_out_pairs(test, seed=7)
    genuine_expected = 3 * 6 + 2 * 3  # C(4,2) per 4-image identity, C(3,2) per 3-image identity
    assert pairs.num_genuine == genuine_expected and pairs.num_impostor == genuine_expected
    assert len(pairs.paths) == 18
    assert np.all(pairs.first < pairs.second)
    assert np.array_equal(pairs.issame, pairs.labels[pairs.first] == pairs.labels[pairs.second])
    keys = set(zip(pairs.first.tolist(), pairs.second.tolist()))
    assert len(keys) == pairs.issame.size  # no pair twice
    same_mask = pairs.labels[:, None] == pairs.labels[None, :]
    assert {(i, j) for i, j in keys if same_mask[i, j]} == {(i, j) for i in range(18) for j in range(i + 1, 18)
                                                           if same_mask[i, j]}
    assert not np.all(pairs.issame[:genuine_expected])  # shuffled: folds mix genuine and impostor pairs
    again = held_out_pairs(test, seed=7)
    assert np.array_equal(again.first, pairs.first) and np.array_equal(again.second, pairs.second)


def test_linked_training_folder_reads_back_as_a_folder_dataset(tmp_path: Path) -> None:
    a = _tree(tmp_path / "setA", {"x": 3, "y": 2})
    b = _tree(tmp_path / "setB", {"x": 2})
    identities = discover_identities([a, b])
    folder = link_train_folder(tuple(identities), tmp_path / "work" / "train")
    (folder / "stale").mkdir()
    folder = link_train_folder(tuple(identities[:2]), tmp_path / "work" / "train")  # made afresh
    dataset = FolderDataset(folder)
    assert dataset.class_names == ["setA__x", "setA__y"]
    assert np.array_equal(dataset.labels, [0, 0, 0, 1, 1])
    assert (a / "x" / "0.png").is_file()  # the originals are untouched


@pytest.mark.shared_data
def test_default_datasets_have_the_documented_sizes(shared_data: Path) -> None:
    roots = [shared_data / name for name in DEFAULT_DATASETS]
    identities = discover_identities(roots)
    by_dataset = {d: [i for i in identities if i.dataset == d] for d in DEFAULT_DATASETS}
    assert [len(by_dataset[d]) for d in DEFAULT_DATASETS] == [40, 5, 158]
    assert [sum(len(i.images) for i in by_dataset[d]) for d in DEFAULT_DATASETS] == [399, 55, 2974]


def test_validation_split_divides_the_training_identities_only() -> None:
    split = split_identities(_identities("a", 20) + _identities("b", 8), 0.3, seed=4)
    inner = validation_split(split, 0.25)
    assert set(inner.train) | set(inner.test) == set(split.train) and not set(inner.train) & set(inner.test)
    assert not set(inner.test) & set(split.test)  # the held-out identities stay out of the selection
    assert validation_split(split, 0.25) == inner  # fixed per split


def _view2_like(root: Path) -> Path:
    for person, count in (("Ann_A", 2), ("Bob_B", 1), ("Cid_C", 2), ("Dan_D", 1)):
        (root / person).mkdir(parents=True)
        for k in range(1, count + 1):
            (root / person / f"{person}_{k:04d}.jpg").write_bytes(b"x")
    (root / "pairs.txt").write_text("1\t2\nAnn_A\t1\t2\nCid_C\t1\t2\nAnn_A\t1\tBob_B\t1\nCid_C\t2\tDan_D\t1\n")
    return root


def test_benchmark_pairs_keep_only_pairs_of_unseen_people(tmp_path: Path) -> None:
    root = _view2_like(tmp_path / "view2")
    seen = Identity("lfw_min10_arcface112", "Ann_A", "/x/Ann_A", ("/x/Ann_A/1.jpg", "/x/Ann_A/2.jpg"))
    other = Identity("att_faces_arcface112", "Dan_D", "/y/Dan_D", ("/y/1.png", "/y/2.png"))  # not an LFW set
    bench = benchmark_pairs(root, (seen, other))
    assert (bench.total, bench.dropped) == (4, 2)
    pairs = bench.pairs
    assert [Path(pairs.paths[i]).name for i in pairs.first] == ["Cid_C_0001.jpg", "Cid_C_0002.jpg"]
    assert [Path(pairs.paths[j]).name for j in pairs.second] == ["Cid_C_0002.jpg", "Dan_D_0001.jpg"]
    assert pairs.issame.tolist() == [True, False]
    assert pairs.labels.tolist() == [0, 0, 1]  # Cid_C, Cid_C, Dan_D
    with pytest.raises(DataError, match="nothing is held out"):
        benchmark_pairs(root, (seen, Identity("lfw_min10_arcface112", "Cid_C", "/z", ("/z/1", "/z/2"))))


@pytest.mark.shared_data
def test_view2_pairs_of_people_unseen_in_training(shared_data: Path) -> None:
    identities = discover_identities([shared_data / name for name in DEFAULT_DATASETS])
    split = split_identities(identities, 0.3, 0)
    bench = benchmark_pairs(shared_data / VIEW2_DATASET, split.train)
    assert bench.total == 6000 and 0 < bench.dropped < 6000
    people = {Path(p).parent.name for p in bench.pairs.paths}
    assert not people & {i.name for i in split.train if i.dataset.startswith("lfw")}
