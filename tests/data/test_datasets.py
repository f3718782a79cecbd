"""RecordIndex (labels from headers, cache), RecordDataset and FolderDataset on synthetic and real files."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from oaml.data.datasets import FolderDataset, RecordDataset, RecordIndex
from oaml.data.images import decode_image
from oaml.data.recordio import RecordReader
from oaml.data.transforms import TrainTransform
from oaml.errors import DataError


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = cv2.imdecode

    def counting(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(cv2, "imdecode", counting)
    return calls


def test_index_of_insightface_layout_relabels_contiguously(make_rec: Callable[..., Path],
                                                          count_decodes: list[int]) -> None:
    labels = [3, 3, 7, 7, 7, 10]
    rec = make_rec(labels, meta=True)
    index = RecordIndex.load(rec)
    assert index.layout == "insightface"
    assert index.keys.tolist() == [1, 2, 3, 4, 5, 6]  # identity records 7..9 are not images
    assert index.labels.tolist() == [0, 0, 1, 1, 1, 2] and index.labels.dtype == np.int64
    assert index.class_ids.tolist() == [3, 7, 10] and index.num_classes == 3
    assert count_decodes[0] == 0


def test_index_of_flat_layout_and_extra_labels(make_rec: Callable[..., Path]) -> None:
    rec = make_rec([2, 0, 2, 1], meta=False, extra_label=True)
    index = RecordIndex.load(rec)
    assert index.layout == "flat" and index.keys.tolist() == [0, 1, 2, 3]
    assert index.labels.tolist() == [2, 0, 2, 1]  # the class is the first extra label when flag > 0


def test_index_reads_headers_only_and_caches(make_rec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    rec = make_rec([0, 0, 1, 1, 1])
    reader = RecordReader(rec)

    real_read = RecordReader.read

    def no_body_reads(self: RecordReader, key: int) -> bytes:
        if key != 0:  # the meta record (no image) is the only body the index may read
            raise AssertionError(f"the label index read the body of key {key}")
        return real_read(self, key)

    monkeypatch.setattr(RecordReader, "read", no_body_reads)
    first = RecordIndex.load(rec, reader=reader)
    cache = rec.with_name("train.labels.npz")
    assert cache.is_file()
    monkeypatch.setattr(RecordReader, "read_header", lambda self, key: pytest.fail("cache was not used"))
    second = RecordIndex.load(rec)
    assert second.labels.tolist() == first.labels.tolist() == [0, 0, 1, 1, 1]


def test_stale_cache_is_rebuilt(make_rec: Callable[..., Path]) -> None:
    rec = make_rec([0, 0, 1])
    assert RecordIndex.load(rec).num_classes == 2
    make_rec([0, 1, 2, 3, 3])  # rewrites train.rec/.idx in place: another size and mtime
    index = RecordIndex.load(rec)
    assert index.num_classes == 4 and index.keys.tolist() == [1, 2, 3, 4, 5]


def test_cache_falls_back_when_the_data_folder_is_not_writable(make_rec: Callable[..., Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rec = make_rec([0, 1, 1])
    # Tests run as root here, so chmod cannot make a folder read-only: block the file name instead.
    (rec.with_name("train.labels.npz")).mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    RecordIndex.load(rec)
    cached = list((tmp_path / "xdg" / "oaml" / "labels").glob("train-*.labels.npz"))
    assert len(cached) == 1
    explicit = tmp_path / "explicit"
    RecordIndex.load(rec, cache_dir=explicit)
    assert len(list(explicit.glob("*.labels.npz"))) == 1


@pytest.mark.shared_data
def test_record_dataset_on_the_mxnet_fixture(shared_data: Path, tmp_path: Path, count_decodes: list[int]) -> None:
    folder = shared_data / "insightface_rec_lfw20"
    dataset = RecordDataset(folder, cache_dir=tmp_path)  # a folder with train.rec; cache kept out of shared data
    with open(folder / "labels.tsv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert len(dataset) == 20 and dataset.num_classes == 10
    assert dataset.labels.tolist() == [int(r[1]) for r in rows]
    assert dataset.class_names == [str(i) for i in range(10)]
    assert count_decodes[0] == 0
    image, label, visibility, skipped = dataset[3]
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8 and label == int(rows[3][1])
    assert visibility.shape == (112, 112) and visibility.dtype == np.float32 and visibility.min() == 1.0
    assert skipped == ()
    png = cv2.imread(str(shared_data / "lfw_subset10_arcface112" / rows[3][3]))
    assert np.abs(image.astype(int) - png.astype(int)).mean() < 3.0  # BGR, same pixels up to JPEG loss
    dataset.transform = TrainTransform(mask_prob=1.0, seed=0)
    tensor, label, vis, _ = dataset[3]
    assert tensor.shape == (3, 112, 112) and tensor.dtype == torch.float32
    assert vis.shape == (1, 112, 112) and 0 < vis.mean() < 1


def test_record_subset_drops_small_identities(make_rec: Callable[..., Path], tmp_path: Path) -> None:
    labels = [5] * 6 + [8] * 4 + [9] * 7  # keys 1..6, 7..10, 11..17
    rec = make_rec(labels)
    subset = tmp_path / "subset.txt"
    subset.write_text("1\n2\n3\n4\n5\n7,8,9,10\n11\n12\n13\n14\n15\n16\n999\n")
    dataset = RecordDataset(rec, subset_index=subset)
    assert dataset.keys.tolist() == [1, 2, 3, 4, 5, 11, 12, 13, 14, 15, 16]
    assert dataset.labels.tolist() == [0] * 5 + [1] * 6
    assert dataset.class_names == ["5", "9"]
    assert dataset[5][1] == 1 and np.array_equal(dataset[5][0], decode_image(
        RecordReader(rec).read_record(11)[1], "k11"))


def test_folder_dataset_layout_formats_and_labels(tmp_path: Path, image_factory: Callable[..., np.ndarray],
                                                  encoder: Callable[..., bytes], count_decodes: list[int]) -> None:
    root = tmp_path / "faces"
    (root / "b_person" / "nested" / "deeper").mkdir(parents=True)
    (root / "a_person").mkdir()
    (root / "c_empty").mkdir()
    (root / ".hidden").mkdir()
    gray = cv2.cvtColor(image_factory(1), cv2.COLOR_BGR2GRAY)
    (root / "a_person" / "1.PNG").write_bytes(encoder(gray, ".png"))
    (root / "a_person" / "2.bmp").write_bytes(encoder(image_factory(2), ".bmp"))
    (root / "a_person" / "notes.txt").write_text("not an image")
    (root / "b_person" / "3.jpeg").write_bytes(encoder(image_factory(3), ".jpeg"))
    (root / "b_person" / "nested" / "deeper" / "4.pgm").write_bytes(encoder(gray, ".pgm"))
    dataset = FolderDataset(root)
    assert dataset.class_names == ["a_person", "b_person"] and dataset.num_classes == 2
    assert dataset.labels.tolist() == [0, 0, 1, 1]
    assert list(dataset.paths) == ["a_person/1.PNG", "a_person/2.bmp", "b_person/3.jpeg",
                                   "b_person/nested/deeper/4.pgm"]
    assert count_decodes[0] == 0
    image, label, _, _ = dataset[0]
    assert image.shape == (112, 112, 3) and label == 0
    assert np.array_equal(image[..., 0], gray) and np.array_equal(image[..., 2], gray)  # gray -> 3 equal channels
    assert np.array_equal(dataset[1][0], image_factory(2))  # BMP is lossless: exact BGR pixels
    assert dataset[3][0].shape == (112, 112, 3) and dataset[3][1] == 1


def test_non_112_images_raise_or_resize(tmp_path: Path, image_factory: Callable[..., np.ndarray],
                                        encoder: Callable[..., bytes]) -> None:
    root = tmp_path / "big"
    (root / "x").mkdir(parents=True)
    big = image_factory(7, size=150)
    (root / "x" / "big.png").write_bytes(encoder(big, ".png"))
    with pytest.raises(DataError) as info:
        FolderDataset(root)[0]
    message = str(info.value)
    assert "big.png" in message and "150x150" in message and "oaml align" in message and "resize" in message
    resized = FolderDataset(root, resize=True)[0].image
    assert np.array_equal(resized, cv2.resize(big, (112, 112), interpolation=cv2.INTER_AREA))


@pytest.mark.shared_data
def test_real_folders(shared_data: Path, count_decodes: list[int]) -> None:
    att = FolderDataset(shared_data / "att_faces_arcface112")
    assert att.num_classes == 40 and len(att) == 399 and count_decodes[0] == 0
    assert att.class_names[:3] == ["s1", "s10", "s11"] and np.bincount(att.labels).min() >= 9
    image, label, _, _ = att[0]
    assert image.shape == (112, 112, 3) and label == 0
    with pytest.raises(DataError, match="150x150"):
        FolderDataset(shared_data / "dlib_johns")[0]
    johns = FolderDataset(shared_data / "dlib_johns", resize=True)
    assert johns[0][0].shape == (112, 112, 3) and johns.class_names[0] == "John_Salley"


def test_undecodable_image_raises_naming_it(make_folder: Callable[..., Path]) -> None:
    root = make_folder({"p": 3, "q": 2})
    (root / "p" / "001.png").write_bytes(b"definitely not a png")
    dataset = FolderDataset(root)
    with pytest.raises(DataError, match="001.png"):
        dataset[1]


def test_replace_on_error_uses_the_same_identity(make_folder: Callable[..., Path],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    root = make_folder({"p": 3, "q": 2})
    (root / "p" / "001.png").write_bytes(b"broken")
    dataset = FolderDataset(root, replace_on_error=True, max_bad_fraction=0.5)
    with caplog.at_level(logging.WARNING):
        image, label, _, _ = dataset[1]
    assert label == 0
    same_identity = [dataset.load_image(i) for i in (0, 2)]
    assert any(np.array_equal(image, other) for other in same_identity)
    assert dataset.num_skipped == 1 and "001.png" in dataset.skipped[0][0]
    assert "001.png" in caplog.text
    strict = FolderDataset(root, replace_on_error=True, max_bad_fraction=0.0)
    strict[1]  # one unreadable image is always tolerated (max(1, 0.0 x 5))
    (root / "q" / "000.png").write_bytes(b"broken too")
    with pytest.raises(DataError, match="2 of 5 training images are unreadable, more than the 1 allowed"):
        strict[3]


def test_corrupt_record_names_the_key(make_rec: Callable[..., Path]) -> None:
    rec = make_rec([0, 0, 1], payloads={1: b"garbage"})
    dataset = RecordDataset(rec)
    with pytest.raises(DataError, match="key 2"):
        dataset[1]
    tolerant = RecordDataset(rec, replace_on_error=True, max_bad_fraction=0.5)
    image, label, _, skipped = tolerant[1]
    assert label == 0 and np.array_equal(image, tolerant.load_image(0))
    assert len(skipped) == 1 and "key 2" in skipped[0]  # the replacement is reported with the item
    assert tolerant[1].skipped == ()  # a known bad image is reported once


def test_folder_subset_by_relative_path(make_folder: Callable[..., Path], tmp_path: Path) -> None:
    root = make_folder({"a": 6, "b": 5, "c": 4})
    subset = tmp_path / "keep.txt"
    keep = [f"a/{i:03d}.png" for i in range(5)] + [f"b/{i:03d}.png" for i in range(4)] + ["c/000.png"]
    subset.write_text("\n".join(keep) + "\n")
    dataset = FolderDataset(root, subset_index=subset)
    assert dataset.class_names == ["a"] and dataset.labels.tolist() == [0] * 5
    assert list(dataset.paths) == keep[:5]


def test_reader_reopens_after_fork(make_rec: Callable[..., Path]) -> None:
    dataset = RecordDataset(make_rec([0, 1]))
    expected = dataset.load_image(1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must get its own descriptor and read the same bytes
        ok = np.array_equal(dataset.load_image(1), expected) and dataset.reader._pid == os.getpid()
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"


@pytest.mark.shared_data
def test_shared_folder_gets_no_cache(shared_data: Path) -> None:
    # With an explicit cache_dir, nothing is written next to the shared fixture.
    assert not (shared_data / "insightface_rec_lfw20" / "train.labels.npz").exists()


def test_cache_skips_a_folder_without_write_bits(make_rec: Callable[..., Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rec = make_rec([0, 1, 1])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    rec.parent.chmod(0o555)  # read-only by intent (root could still write: the code must not)
    try:
        assert RecordIndex.load(rec).num_classes == 2
        assert sorted(p.name for p in rec.parent.iterdir()) == ["train.idx", "train.rec"]
    finally:
        rec.parent.chmod(0o755)
    assert len(list((tmp_path / "xdg" / "oaml" / "labels").glob("train-*.labels.npz"))) == 1


_READ_ONLY_SCRIPT = """
import sys
from pathlib import Path
from oaml.config import config_from_dict
from oaml.training.build import build_datamodule
from oaml.data.datasets import RecordDataset
mount = Path(sys.argv[1])
dataset = RecordDataset(mount / "data")
config = config_from_dict(flat={"data_root": str(mount), "train_data_path": "data", "val_data_path": "data",
                                "num_workers": 0})
datamodule = build_datamodule(config)
datamodule.prepare_data()
datamodule.setup("fit")
print(len(dataset), dataset.num_classes, datamodule.num_classes, [d.names for d in datamodule.val_datasets])
"""


def test_read_only_bind_mount(make_rec: Callable[..., Path], tmp_path: Path) -> None:
    """A dataset on a read-only mount (cluster and container mounts): labels and memfiles go to the user cache."""
    import shutil
    import subprocess
    import sys

    from tests.data.conftest import make_image, write_bin

    rec = make_rec([0, 0, 1, 1, 2])
    write_bin(rec.parent / "lfw.bin", [make_image(i) for i in range(4)], [True, False])
    mount = tmp_path / "mnt"
    (mount / "data").mkdir(parents=True)
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs util-linux unshare to make a private read-only bind mount")
    command = (f"mount --bind {rec.parent} {mount / 'data'} && mount -o remount,ro,bind {mount / 'data'} && "
               f"{sys.executable} -c '{_READ_ONLY_SCRIPT}' {mount}")
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "OAML_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    probe = subprocess.run([unshare, "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here (unshare -rm: {probe.stderr.decode().strip()})")
    result = subprocess.run([unshare, "-rm", "sh", "-c", command], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[:3] == ["5", "3", "3"]
    assert "['lfw']" in result.stdout
    assert sorted(p.name for p in rec.parent.iterdir()) == ["lfw.bin", "train.idx", "train.rec"]
    # One cache root for everything ($OAML_CACHE before $XDG_CACHE_HOME/oaml): labels and converted sets.
    assert len(list((tmp_path / "cache" / "labels").glob("train-*.labels.npz"))) == 1
    assert list((tmp_path / "cache" / "memfiles").rglob("lfw.u8"))
    assert not list((tmp_path / "xdg").rglob("*.npz"))
