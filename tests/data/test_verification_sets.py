"""Verification sets: .bin -> uint8 memfile conversion (atomic, one-time) and VerificationSets."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from oaml.constants import ChannelOrder
from oaml.data import verification_sets
from oaml.data.masks import seeded_mask, visibility_grid
from oaml.data.occluders import OcclusionProtocol, seeded_occlusion
from oaml.data.transforms import image_to_tensor
from oaml.data.verification_sets import VerificationSets, convert_bin, load_bin, load_memfile
from oaml.errors import DataError

BinWriter = Callable[..., Path]


def _images(factory: Callable[..., np.ndarray], count: int, start: int = 0) -> list[np.ndarray]:
    return [factory(start + i) for i in range(count)]


def test_convert_bin_writes_uint8_memfile_issame_and_sidecar(tmp_path: Path, bin_writer: BinWriter,
                                                            image_factory: Callable[..., np.ndarray]) -> None:
    images = _images(image_factory, 6)
    source = bin_writer(tmp_path / "lfw.bin", images, [True, False, True])
    out = tmp_path / "mem"
    data_path = convert_bin(source, out)
    assert data_path == out / "lfw.u8"
    assert data_path.stat().st_size == 6 * 112 * 112 * 3  # uint8: exactly a quarter of float32
    assert data_path.stat().st_size * 4 == np.zeros((6, 112, 112, 3), np.float32).nbytes
    array, issame, order = load_memfile(out, "lfw")
    assert isinstance(array, np.memmap) and array.dtype == np.uint8 and array.shape == (6, 112, 112, 3)
    assert order is ChannelOrder.BGR and issame.tolist() == [True, False, True]
    for stored, original in zip(array, images):
        assert np.array_equal(stored, original)  # PNG is lossless and cv2 decodes to BGR
    meta = json.loads((out / "lfw.json").read_text())
    assert meta["shape"] == [6, 112, 112, 3] and meta["dtype"] == "uint8" and meta["channel_order"] == "bgr"
    assert meta["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_rgb_conversion_reverses_channels(tmp_path: Path, bin_writer: BinWriter,
                                          image_factory: Callable[..., np.ndarray]) -> None:
    images = _images(image_factory, 2)
    source = bin_writer(tmp_path / "cfp_fp.bin", images, [False])
    convert_bin(source, tmp_path / "rgb", ChannelOrder.RGB)
    array, _, order = load_memfile(tmp_path / "rgb", "cfp_fp")
    assert order is ChannelOrder.RGB and np.array_equal(array[1], images[1][:, :, ::-1])


def test_conversion_is_one_time_and_redone_for_a_new_source(tmp_path: Path, bin_writer: BinWriter,
                                                            image_factory: Callable[..., np.ndarray],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    source = bin_writer(tmp_path / "lfw.bin", _images(image_factory, 2), [True])
    convert_bin(source, tmp_path)
    stamp = (tmp_path / "lfw.u8").stat().st_mtime_ns
    real_load = verification_sets.load_bin
    monkeypatch.setattr(verification_sets, "load_bin", lambda path: pytest.fail("converted twice"))
    convert_bin(source, tmp_path)
    assert (tmp_path / "lfw.u8").stat().st_mtime_ns == stamp
    monkeypatch.setattr(verification_sets, "load_bin", real_load)
    bin_writer(source, _images(image_factory, 4, start=10), [False, True])
    convert_bin(source, tmp_path)
    assert load_memfile(tmp_path, "lfw")[1].tolist() == [False, True]


def test_interrupted_conversion_leaves_nothing(tmp_path: Path, bin_writer: BinWriter,
                                               image_factory: Callable[..., np.ndarray]) -> None:
    images = _images(image_factory, 4)
    source = bin_writer(tmp_path / "lfw.bin", images, [True, True])
    raw, _ = load_bin(source)
    raw[3] = b"not an image"
    source.write_bytes(pickle.dumps((raw, [True, True]), protocol=2))
    out = tmp_path / "out"
    with pytest.raises(DataError, match="image 3"):
        convert_bin(source, out)
    assert list(out.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        load_memfile(out, "lfw")


def test_bin_structure_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True]), protocol=2))
    with pytest.raises(DataError, match="3 images for 1 pairs"):
        load_bin(path)


@pytest.fixture
def two_sets(tmp_path: Path, bin_writer: BinWriter, image_factory: Callable[..., np.ndarray]) -> tuple[Path, dict]:
    images = {"lfw": _images(image_factory, 6, 0), "cfp_fp": _images(image_factory, 4, 100)}
    issame = {"lfw": [True, False, False], "cfp_fp": [False, True]}
    out = tmp_path / "memfiles"
    for name in images:
        convert_bin(bin_writer(tmp_path / f"{name}.bin", images[name], issame[name]), out)
    return out, {"images": images, "issame": issame}


def test_five_set_dataset_order_offsets_and_items(two_sets: tuple[Path, dict],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    out, truth = two_sets
    with caplog.at_level(logging.INFO):
        dataset = VerificationSets(out)
    assert dataset.names == ["cfp_fp", "lfw"]  # SPEC order: agedb_30, cfp_fp, lfw, cplfw, calfw
    assert dataset.offsets == {"cfp_fp": 0, "lfw": 4} and dataset.pair_counts == {"cfp_fp": 2, "lfw": 3}
    assert dataset.missing == ["agedb_30", "cplfw", "calfw"]
    # Sets the user does not have are one informational line, not three warnings telling them to convert files.
    lines = [r for r in caplog.records if "absent" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert lines[0].getMessage().endswith("cfp_fp, lfw; absent: agedb_30, cplfw, calfw")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(dataset) == 10
    image, issame, set_index, global_index, visibility = dataset[7]  # lfw image 3 = second image of lfw pair 1
    assert torch.equal(image, image_to_tensor(truth["images"]["lfw"][3]))
    assert torch.equal(visibility, torch.ones(7, 7))  # a clean image is all visible
    assert image.shape == (3, 112, 112) and image.dtype == torch.float32 and image.abs().max() <= 1.0
    assert (issame, set_index, global_index) == (False, 1, 7)
    assert [dataset[i][1] for i in range(10)] == [False, False, True, True, True, True, False, False, False, False]
    batch = next(iter(DataLoader(dataset, batch_size=10)))
    assert batch[0].shape == (10, 3, 112, 112) and batch[1].dtype == torch.bool
    assert batch[2].tolist() == [0] * 4 + [1] * 6 and batch[3].tolist() == list(range(10))


def test_channel_order_and_flip(two_sets: tuple[Path, dict]) -> None:
    out, truth = two_sets
    rgb = VerificationSets(out, channel_order=ChannelOrder.RGB, flip=True)
    mirrored = truth["images"]["cfp_fp"][2][:, ::-1]
    red = torch.from_numpy(mirrored[:, :, 2].astype(np.float32)) / 127.5 - 1.0  # BGR plane 2 is red
    blue = torch.from_numpy(mirrored[:, :, 0].astype(np.float32)) / 127.5 - 1.0
    assert torch.allclose(rgb[2][0][0], red) and torch.allclose(rgb[2][0][2], blue)


def test_masked_protocol_masks_only_second_images_deterministically(two_sets: tuple[Path, dict]) -> None:
    out, _ = two_sets
    clean = VerificationSets(out)
    masked = VerificationSets(out, masked_second=True, mask_seed=3)
    again = VerificationSets(out, masked_second=True, mask_seed=3)
    for i in range(len(clean)):
        same = torch.equal(clean[i][0], masked[i][0])
        assert same == (i % 2 == 0)
        assert torch.equal(masked[i][0], again[i][0])
    other_seed = VerificationSets(out, masked_second=True, mask_seed=4)
    assert not torch.equal(masked[1][0], other_seed[1][0])
    twin = clean.masked(mask_seed=3)
    assert torch.equal(twin[5][0], masked[5][0]) and torch.equal(clean[5][0], VerificationSets(out)[5][0])
    # Bit for bit the masked protocol of old: seeded_mask of the stored image, by its global index.
    stored = np.asarray(load_memfile(out, "lfw")[0][1])
    old, old_visibility = seeded_mask(np.ascontiguousarray(stored), 3, 5)
    assert torch.equal(masked[5][0], image_to_tensor(old))
    assert torch.equal(masked[5].visibility, torch.from_numpy(visibility_grid(old_visibility)))
    assert masked.masked_second and not clean.masked_second


def test_occlusion_protocols_occlude_their_sides(two_sets: tuple[Path, dict]) -> None:
    out, _ = two_sets
    clean = VerificationSets(out)
    both = clean.occluded(OcclusionProtocol.parse("mask+sunglasses"), seed=2)
    one = clean.occluded(OcclusionProtocol.parse("sunglasses"), seed=2)
    stored = np.ascontiguousarray(load_memfile(out, "lfw")[0][0])  # lfw image 0 = global index 4, a first image
    for index in range(len(clean)):
        first = index % 2 == 0
        assert torch.equal(one[index][0], clean[index][0]) == first
        assert not torch.equal(both[index][0], clean[index][0])
        hidden_one, hidden_both = one[index].visibility < 1, both[index].visibility < 1
        assert bool(hidden_both.any()) and bool(hidden_one.any()) == (not first)
    masked, visibility = seeded_occlusion(stored, "mask", 2, 4)
    assert torch.equal(both[4][0], image_to_tensor(masked))
    assert torch.equal(both[4].visibility, torch.from_numpy(visibility_grid(visibility)))
    assert torch.equal(both[5][0], image_to_tensor(seeded_occlusion(
        np.ascontiguousarray(load_memfile(out, "lfw")[0][1]), "sunglasses", 2, 5)[0]))


def test_no_sets_is_an_empty_dataset(tmp_path: Path) -> None:
    dataset = VerificationSets(tmp_path)
    assert len(dataset) == 0 and dataset.names == [] and dataset.issame.shape == (0,)


@pytest.mark.shared_data
def test_real_faces_round_trip_through_a_bin(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "lfw_subset10_arcface112" / "Colin_Powell"
    pngs = sorted(folder.glob("*.png"))[:4]
    raw = [p.read_bytes() for p in pngs]
    source = tmp_path / "lfw.bin"
    source.write_bytes(pickle.dumps((raw, [True, True]), protocol=2))
    convert_bin(source, tmp_path)
    array, issame, _ = load_memfile(tmp_path, "lfw")
    assert issame.tolist() == [True, True]
    for stored, png in zip(array, pngs):
        assert np.array_equal(stored, cv2.imread(str(png)))
