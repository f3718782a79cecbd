"""Corrupt training data: undecodable images are skipped, replaced, counted and logged; too many abort; a
truncated .rec fails when it is opened.

All runs use the 8-identity x 4-image synthetic set of ``conftest.py`` (one epoch of four batches of 8).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import replace_payload, tiny_config

from oaml.config import config_from_dict
from oaml.data.datasets import FolderDataset, RecordDataset
from oaml.errors import ConfigError, DataError, RecordIOError
from oaml.training.build import build_datamodule
from oaml.training.run import run_training

BAD_KEY = 5  # a training image record (key 0 is the insightface meta record)
BAD_IMAGES = {"garbage": b"this is not a JPEG", "empty": b"", "header only": None}  # None: the first 64 bytes


def _bad_bytes(kind: str, good: bytes) -> bytes:
    content = BAD_IMAGES[kind]
    return good[:64] if content is None else content


def _corrupt_record(synthetic: Path, kind: str) -> None:
    rec = synthetic / "train.rec"
    good = RecordDataset(rec).reader.read_record(BAD_KEY)[1]
    replace_payload(rec, BAD_KEY, _bad_bytes(kind, good))


def _corrupt_file(synthetic: Path, kind: str) -> Path:
    path = sorted((synthetic / "images").rglob("*.jpg"))[9]
    path.write_bytes(_bad_bytes(kind, path.read_bytes()))
    return path


def _assert_replaced_by_same_identity(dataset: RecordDataset | FolderDataset, index: int) -> None:
    image, label, _, skipped = dataset[index]
    assert label == dataset.labels[index]
    assert len(skipped) <= 1 and all("cannot decode" in entry for entry in skipped)  # reported with the item
    others = [i for i in np.flatnonzero(dataset.labels == label) if i != index]
    assert any(np.array_equal(image, dataset.load_image(int(i))) for i in others), "not an image of the identity"


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_rec_bad_image_is_replaced_counted_and_logged(synthetic: Path, kind: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    _corrupt_record(synthetic, kind)
    dataset = RecordDataset(synthetic / "train.rec", replace_on_error=True, max_bad_fraction=0.1)
    index = int(np.flatnonzero(dataset.keys == BAD_KEY)[0])
    with caplog.at_level(logging.WARNING, logger="oaml"):
        _assert_replaced_by_same_identity(dataset, index)
        _assert_replaced_by_same_identity(dataset, index)  # a known bad image is counted once
    assert dataset.num_skipped == 1
    assert dataset.skipped[0][0].endswith(f"train.rec key {BAD_KEY}")
    assert f"key {BAD_KEY}" in caplog.text


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_folder_bad_image_is_replaced_counted_and_logged(synthetic: Path, kind: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    bad = _corrupt_file(synthetic, kind)
    dataset = FolderDataset(synthetic / "images", replace_on_error=True, max_bad_fraction=0.1)
    index = list(dataset.paths).index(bad.relative_to(synthetic / "images").as_posix())
    with caplog.at_level(logging.WARNING, logger="oaml"):
        _assert_replaced_by_same_identity(dataset, index)
    assert dataset.skipped[0][0] == str(bad) and dataset.num_skipped == 1
    assert str(bad) in caplog.text


def test_without_replacement_a_bad_image_raises_naming_it(synthetic: Path) -> None:
    bad = _corrupt_file(synthetic, "garbage")
    dataset = FolderDataset(synthetic / "images", replace_on_error=False)
    index = list(dataset.paths).index(bad.relative_to(synthetic / "images").as_posix())
    with pytest.raises(DataError, match="cannot decode"):
        dataset[index]


def test_max_bad_fraction_is_a_validated_config_field(synthetic: Path, tmp_path: Path) -> None:
    config = tiny_config(synthetic.parent, synthetic.name, tmp_path, max_bad_fraction=0.25)
    assert build_datamodule(config).train.max_bad_fraction == 0.25
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="max_bad_fraction"):
            config_from_dict(flat={"max_bad_fraction": bad})


@pytest.mark.parametrize("layout", ["rec", "folder"])
def test_training_skips_bad_images_and_summarises_each_epoch(synthetic: Path, tmp_path: Path, layout: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    if layout == "rec":
        _corrupt_record(synthetic, "garbage")
        train, where = synthetic.name, f"train.rec key {BAD_KEY}"
    else:
        where = str(_corrupt_file(synthetic, "garbage"))
        train = f"{synthetic.name}/images"
    config = tiny_config(synthetic.parent, train, tmp_path / "runs", max_bad_fraction=0.1)
    with caplog.at_level(logging.WARNING, logger="oaml"):
        result = run_training(config)
    assert result.last_checkpoint is not None
    summaries = [r.getMessage() for r in caplog.records if "skipped and replaced" in r.getMessage()]
    assert len(summaries) == 1 and where in summaries[0] and "epoch 0: 1 unreadable" in summaries[0], summaries


def test_workers_report_their_skips_to_the_summary(synthetic: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    # Each DataLoader worker keeps its own dataset copy; the summary in the main process must still count the skip.
    _corrupt_record(synthetic, "garbage")
    config = tiny_config(synthetic.parent, synthetic.name, tmp_path / "runs", max_bad_fraction=0.1, num_workers=2)
    with caplog.at_level(logging.WARNING, logger="oaml.training"):
        run_training(config)
    summaries = [r.getMessage() for r in caplog.records if "skipped and replaced" in r.getMessage()]
    assert len(summaries) == 1 and "epoch 0: 1 unreadable" in summaries[0], summaries
    assert f"train.rec key {BAD_KEY}" in summaries[0]


def test_one_bad_image_is_tolerated_by_the_default_fraction(synthetic: Path, tmp_path: Path) -> None:
    # 32 images x 0.001 rounds to 0 tolerated images; a small set must still survive one unreadable file.
    _corrupt_record(synthetic, "garbage")
    result = run_training(tiny_config(synthetic.parent, synthetic.name, tmp_path / "runs"))
    assert result.last_checkpoint is not None


@pytest.mark.parametrize("workers", [0, 2])
def test_training_aborts_past_max_bad_fraction(synthetic: Path, tmp_path: Path, workers: int) -> None:
    rec = synthetic / "train.rec"
    for key in (BAD_KEY, BAD_KEY + 12):  # two identities, so that both can be replaced
        replace_payload(rec, key, b"this is not a JPEG")
    config = tiny_config(synthetic.parent, synthetic.name, tmp_path / "runs", max_bad_fraction=0.0,
                         num_workers=workers)
    with pytest.raises(DataError) as info:
        run_training(config)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert "2 of 32 training images are unreadable" in message and "the 1 allowed" in message, message
    assert "train.rec key" in message and "--max_bad_fraction" in message


@pytest.mark.parametrize("cut", [1, 100, "last record"])
def test_truncated_rec_fails_at_open_with_the_offset(synthetic: Path, tmp_path: Path, cut: int | str) -> None:
    rec = synthetic / "train.rec"
    data = rec.read_bytes()
    offsets = sorted(int(line.split()[1]) for line in (synthetic / "train.idx").read_text().splitlines())
    size = offsets[-1] if cut == "last record" else len(data) - int(cut)
    rec.write_bytes(data[:size])
    with pytest.raises(RecordIOError) as info:
        RecordDataset(rec)
    message = str(info.value)
    # The offset named is that of a record (or its payload) that no longer fits in the file.
    named = [int(n) for n in re.findall(r"offset (\d+)", message)]
    assert str(rec) in message and named and all(offsets[0] <= n <= len(data) for n in named), message
    assert any(n in offsets and n + 8 > size or n - 8 in offsets for n in named), message
    with pytest.raises(RecordIOError, match="offset"):  # and the run stops before training starts
        run_training(tiny_config(synthetic.parent, synthetic.name, tmp_path / "runs"))
