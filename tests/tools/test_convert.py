"""Tests of ``oaml convert`` (src/oaml/tools/convert.py) and the insightface writer it shares with
``make-synthetic`` (src/oaml/data/insightface.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from oaml.cli.main import main
from oaml.constants import ChannelOrder
from oaml.data.datasets import RecordDataset, RecordIndex
from oaml.data.insightface import InsightfaceWriter
from oaml.data.recordio import RecordReader
from oaml.data.verification_sets import VerificationSets, convert_bin, load_bin, load_memfile
from oaml.errors import DataError
from oaml.tools.convert import bin_to_memfile, folder_to_rec, image_kind, pairs_to_bin, rec_to_folder


def _face(seed: int, size: int = 112) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), rng.integers(40, 200, 3), np.uint8)
    cv2.circle(image, (int(rng.integers(30, 80)), int(rng.integers(30, 80))), 20, rng.integers(0, 255, 3).tolist(), -1)
    return image


def _identity_folders(root: Path) -> dict[str, bytes]:
    """Three identities: JPEGs (one nested deeper), a PNG and a BMP; returns the source bytes by path."""
    layout = {"carol/1.jpg": 0, "carol/2.jpg": 1, "alice/x/deep.jpg": 2, "alice/a.png": 3, "bob/b.bmp": 4,
              "bob/c.jpg": 5}
    for rel, seed in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / rel), _face(seed))
    (root / "empty").mkdir()
    return {rel: (root / rel).read_bytes() for rel in layout}


def test_image_kind_reads_the_magic_bytes() -> None:
    assert image_kind(cv2.imencode(".jpg", _face(0))[1].tobytes()) == "jpeg"
    assert image_kind(cv2.imencode(".png", _face(0))[1].tobytes()) == "png"
    assert image_kind(cv2.imencode(".bmp", _face(0))[1].tobytes()) == "bmp"
    assert image_kind(b"GIF89a") is None


def test_folder_to_rec_to_folder_round_trip(tmp_path: Path) -> None:
    sources = _identity_folders(tmp_path / "faces")
    summary = folder_to_rec(tmp_path / "faces", tmp_path / "rec", progress=False)
    assert (summary.num_images, summary.num_classes, summary.copied, summary.reencoded) == (6, 3, 5, 1)
    assert (tmp_path / "rec" / "property").read_text() == "3,112,112\n"
    index = RecordIndex.load(tmp_path / "rec" / "train.rec", cache_dir=tmp_path / "cache")
    assert index.layout == "insightface" and index.labels.tolist() == [0, 0, 1, 1, 2, 2]  # alice, bob, carol
    reader = RecordReader(tmp_path / "rec" / "train.rec")
    head0 = reader.read_record(0)
    assert head0[0].label == (7.0, 10.0) and head0[1] == b""
    assert [reader.read_record(k)[0].label for k in (7, 8, 9)] == [(1.0, 3.0), (3.0, 5.0), (5.0, 7.0)]
    labels = (tmp_path / "rec" / "labels.tsv").read_text().splitlines()
    assert labels[1:] == ["1\t0\talice\talice/a.png", "2\t0\talice\talice/x/deep.jpg", "3\t1\tbob\tbob/b.bmp",
                          "4\t1\tbob\tbob/c.jpg", "5\t2\tcarol\tcarol/1.jpg", "6\t2\tcarol\tcarol/2.jpg"]
    back = rec_to_folder(tmp_path / "rec", tmp_path / "back", progress=False)
    assert (back.num_images, back.num_classes, back.skipped) == (6, 3, ())
    written = {p.relative_to(tmp_path / "back").as_posix(): p for p in (tmp_path / "back").rglob("*.*")}
    assert sorted(written) == ["0/1.png", "0/2.jpg", "1/3.png", "1/4.jpg", "2/5.jpg", "2/6.jpg"]
    for out, src in (("0/2.jpg", "alice/x/deep.jpg"), ("1/4.jpg", "bob/c.jpg"), ("2/5.jpg", "carol/1.jpg"),
                     ("0/1.png", "alice/a.png")):
        assert written[out].read_bytes() == sources[src]  # byte-identical: JPEG and PNG are never re-encoded
    bmp = cv2.imdecode(np.frombuffer(sources["bob/b.bmp"], np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.imread(str(written["1/3.png"])), bmp)  # lossless PNG: pixel-identical
    dataset = RecordDataset(tmp_path / "rec", cache_dir=tmp_path / "cache")
    assert dataset.num_classes == 3 and dataset[0][0].shape == (112, 112, 3)


def test_folder_to_rec_again_keeps_labels(tmp_path: Path) -> None:
    _identity_folders(tmp_path / "faces")
    folder_to_rec(tmp_path / "faces", tmp_path / "rec1", progress=False)
    rec_to_folder(tmp_path / "rec1", tmp_path / "folder", progress=False)
    folder_to_rec(tmp_path / "folder", tmp_path / "rec2", progress=False)
    first, second = (RecordReader(tmp_path / name / "train.rec") for name in ("rec1", "rec2"))
    assert [first.read_record(k) for k in first.keys] == [second.read_record(k) for k in second.keys]


def test_folder_to_rec_encode_jpeg_reencodes_every_non_jpeg(tmp_path: Path) -> None:
    sources = _identity_folders(tmp_path / "faces")
    summary = folder_to_rec(tmp_path / "faces", tmp_path / "rec", encode="jpeg", progress=False)
    assert (summary.copied, summary.reencoded) == (4, 2)
    reader = RecordReader(tmp_path / "rec" / "train.rec")
    assert image_kind(reader.read_record(1)[1]) == "jpeg"
    assert reader.read_record(2)[1] == sources["alice/x/deep.jpg"]


def test_folder_to_rec_fails_on_an_undecodable_file_and_publishes_nothing(tmp_path: Path) -> None:
    _identity_folders(tmp_path / "faces")
    (tmp_path / "faces" / "bob" / "zz.bmp").write_bytes(b"truncated")
    with pytest.raises(DataError, match="zz.bmp"):
        folder_to_rec(tmp_path / "faces", tmp_path / "rec", progress=False)
    assert not any((tmp_path / "rec").glob("train.*"))


def test_insightface_writer_checks_order_and_counts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="grouped by class"):
        with InsightfaceWriter(tmp_path, 3, 2) as writer:
            writer.add(1, b"x")
    with pytest.raises(DataError, match="announced 3 images of 2 classes, got 2 images"):
        with InsightfaceWriter(tmp_path, 3, 2) as writer:
            writer.add(0, b"x")
            writer.add(1, b"y")
    assert not any(tmp_path.glob("train.*")) and not (tmp_path / "property").exists()


@pytest.mark.shared_data
def test_rec_to_folder_on_the_mxnet_fixture(shared_data: Path, tmp_path: Path) -> None:
    fixture = shared_data / "insightface_rec_lfw20"
    summary = rec_to_folder(fixture / "train.rec", tmp_path / "out", progress=False)
    assert (summary.num_images, summary.num_classes) == (20, 10)
    reader = RecordReader(fixture / "train.rec")
    assert (tmp_path / "out" / "0" / "01.jpg").read_bytes() == reader.read_record(1)[1]
    assert (tmp_path / "out" / "9" / "20.jpg").read_bytes() == reader.read_record(20)[1]
    folder_to_rec(tmp_path / "out", tmp_path / "rec", progress=False)
    ours = RecordReader(tmp_path / "rec" / "train.rec")
    assert [ours.read_record(k) for k in range(1, 21)] == [reader.read_record(k) for k in range(1, 21)]
    assert ours.read_record(0)[0].label == reader.read_record(0)[0].label == (21.0, 31.0)


def _lfw_folder(root: Path, names: dict[str, int]) -> None:
    seed = 0
    for name, count in names.items():
        (root / name).mkdir(parents=True)
        for n in range(1, count + 1):
            cv2.imwrite(str(root / name / f"{name}_{n:04d}.png"), _face(seed))
            seed += 1


def _pairs_file(path: Path, lines: list[str], header: str = "") -> Path:
    path.write_text((header + "\n" if header else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_pairs_to_bin_round_trips_through_the_validation_loader(tmp_path: Path) -> None:
    _lfw_folder(tmp_path / "aligned", {"Ann_A": 3, "Ben_B": 2})
    pairs = _pairs_file(tmp_path / "pairs.txt", ["Ann_A\t1\t2", "Ann_A\t1\tBen_B\t2", "Ben_B\t1\t2",
                                                 "Ben_B\t1\tAnn_A\t3"], header="2\t1")
    summary = pairs_to_bin(tmp_path / "aligned", pairs, tmp_path / "lfw.bin")
    assert (summary.num_pairs, summary.num_genuine, summary.num_dropped, summary.num_images) == (4, 2, 0, 5)
    images, issame = load_bin(tmp_path / "lfw.bin")
    assert issame.tolist() == [True, False, True, False]
    expected = ["Ann_A/Ann_A_0001", "Ann_A/Ann_A_0002", "Ann_A/Ann_A_0001", "Ben_B/Ben_B_0002", "Ben_B/Ben_B_0001",
                "Ben_B/Ben_B_0002", "Ben_B/Ben_B_0001", "Ann_A/Ann_A_0003"]
    assert images == [(tmp_path / "aligned" / f"{rel}.png").read_bytes() for rel in expected]
    convert_bin(tmp_path / "lfw.bin", tmp_path / "mem")
    dataset = VerificationSets(tmp_path / "mem")
    assert dataset.names == ["lfw"] and dataset.issame.tolist() == [True, False, True, False]
    stored, _, _ = load_memfile(tmp_path / "mem", "lfw")
    for k, rel in enumerate(expected):
        np.testing.assert_array_equal(stored[k], cv2.imread(str(tmp_path / "aligned" / f"{rel}.png")))


def test_pairs_to_bin_refuses_or_skips_missing_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _lfw_folder(tmp_path / "aligned", {"Ann_A": 2, "Ben_B": 1})
    pairs = _pairs_file(tmp_path / "pairs.txt", ["Ann_A\t1\t2", "Ann_A\t1\t7", "Ben_B\t1\tAnn_A\t2"])
    with pytest.raises(DataError, match=r"1 images missing .*Ann_A_0007.*--skip-missing"):
        pairs_to_bin(tmp_path / "aligned", pairs, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    summary = pairs_to_bin(tmp_path / "aligned", pairs, tmp_path / "out.bin", skip_missing=True)
    assert (summary.num_pairs, summary.num_dropped) == (2, 1)
    assert "dropped 1 of 3 pairs" in caplog.text
    assert load_bin(tmp_path / "out.bin")[1].tolist() == [True, False]


def test_pairs_to_bin_needs_aligned_faces(tmp_path: Path) -> None:
    (tmp_path / "aligned" / "Ann_A").mkdir(parents=True)
    for n in (1, 2):
        cv2.imwrite(str(tmp_path / "aligned" / "Ann_A" / f"Ann_A_{n:04d}.jpg"), _face(n, size=250))
    with pytest.raises(DataError, match="250x250, expected 112x112.*oaml align"):
        pairs_to_bin(tmp_path / "aligned", _pairs_file(tmp_path / "p.txt", ["Ann_A\t1\t2"]), tmp_path / "o.bin")


@pytest.mark.shared_data
def test_pairs_to_bin_on_real_lfw_subset(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aligned = shared_data / "lfw_subset10_arcface112"
    out = tmp_path / "lfw.bin"
    assert main(["convert", "pairs-to-bin", str(aligned), str(aligned / "pairs.txt"), str(out)]) == 2
    err = capsys.readouterr().err
    assert "Jacques_Chirac_0006" in err and "Jacques_Chirac_0010" in err and "--skip-missing" in err
    assert main(["convert", "pairs-to-bin", str(aligned), str(aligned / "pairs.txt"), str(out), "--skip-missing"]) == 0
    images, issame = load_bin(out)
    assert 0 < len(issame) < 300 and len(images) == 2 * len(issame)
    assert main(["convert", "bin-to-memfile", str(out), str(tmp_path / "mem"), "--channel-order", "rgb"]) == 0
    stored, stored_issame, order = load_memfile(tmp_path / "mem", "lfw")
    assert order is ChannelOrder.RGB and stored_issame.tolist() == issame.tolist()
    first = cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(stored[0], first[:, :, ::-1])
    assert len(VerificationSets(tmp_path / "mem")) == len(images)


def test_bin_to_memfile_and_cli_conversions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jpegs = [cv2.imencode(".jpg", _face(k))[1].tobytes() for k in range(4)]
    (tmp_path / "cfp_fp.bin").write_bytes(pickle.dumps((jpegs, [True, False]), protocol=4))
    path = bin_to_memfile(tmp_path / "cfp_fp.bin", tmp_path / "mem", "rgb")
    assert path.name == "cfp_fp.u8" and load_memfile(tmp_path / "mem", "cfp_fp")[2] is ChannelOrder.RGB
    _identity_folders(tmp_path / "faces")
    assert main(["convert", "folder-to-rec", str(tmp_path / "faces"), str(tmp_path / "rec"), "--no-progress"]) == 0
    assert "6 images of 3 identities, 5 copied byte for byte, 1 re-encoded" in capsys.readouterr().out
    assert main(["convert", "rec-to-folder", str(tmp_path / "rec" / "train.rec"), str(tmp_path / "back"),
                 "--no-progress"]) == 0
    assert "wrote 6 images of 3 labels" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["convert"])
    assert exited.value.code == 2


# ------------------------------------------------------------------- issue 14: overwrite and bad images
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])  # a JPEG cut short: its magic bytes survive, decoding fails


def test_folder_to_rec_refuses_to_overwrite_an_existing_rec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _identity_folders(tmp_path / "faces")
    folder_to_rec(tmp_path / "faces", tmp_path / "rec", progress=False)
    before = (tmp_path / "rec" / "train.rec").read_bytes()
    small = tmp_path / "small"
    (small / "zoe").mkdir(parents=True)
    cv2.imwrite(str(small / "zoe" / "1.jpg"), _face(9))
    assert main(["convert", "folder-to-rec", str(small), str(tmp_path / "rec"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.rec already exists" in err[0] and "--overwrite" in err[0]
    assert (tmp_path / "rec" / "train.rec").read_bytes() == before  # 6 images were not replaced by 1
    assert main(["convert", "folder-to-rec", str(small), str(tmp_path / "rec"), "--no-progress", "--overwrite"]) == 0
    assert RecordDataset(tmp_path / "rec", cache_dir=tmp_path / "cache").num_classes == 1


def test_folder_to_rec_validates_every_image_while_packing(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _identity_folders(tmp_path / "faces")
    _truncate(tmp_path / "faces" / "carol" / "2.jpg")
    with pytest.raises(DataError, match=r"carol/2.jpg: not a decodable image .*--skip-bad"):
        folder_to_rec(tmp_path / "faces", tmp_path / "rec", progress=False)
    assert not (tmp_path / "rec" / "train.rec").exists()  # nothing published
    assert main(["convert", "folder-to-rec", str(tmp_path / "faces"), str(tmp_path / "rec"), "--no-progress",
                 "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "carol/2.jpg" in out and "5 images of 3 identities" in out
    dataset = RecordDataset(tmp_path / "rec", cache_dir=tmp_path / "cache")
    assert len(dataset) == 5 and all(dataset.load_image(k).shape == (112, 112, 3) for k in range(5))


def test_rec_to_folder_refuses_a_full_folder_and_undecodable_records(tmp_path: Path) -> None:
    from oaml.errors import ConfigError

    _identity_folders(tmp_path / "faces")
    folder_to_rec(tmp_path / "faces", tmp_path / "rec", progress=False)
    rec_to_folder(tmp_path / "rec", tmp_path / "back", progress=False)
    with pytest.raises(ConfigError, match="is not empty"):
        rec_to_folder(tmp_path / "rec", tmp_path / "back", progress=False)
    from tests.reliability.reliability_helpers import replace_payload

    good = RecordReader(tmp_path / "rec" / "train.rec").read_record(2)[1]
    replace_payload(tmp_path / "rec" / "train.rec", 2, good[:300])
    with pytest.raises(DataError, match="key 2: JPEG payload .* does not decode"):
        rec_to_folder(tmp_path / "rec", tmp_path / "again", progress=False)
    result = rec_to_folder(tmp_path / "rec", tmp_path / "again", progress=False, overwrite=True, skip_bad=True)
    assert result.num_images == 5 and [key for key, _ in result.skipped] == [2]


def test_pairs_to_bin_skip_bad_drops_the_pairs_of_a_broken_image(tmp_path: Path) -> None:
    root = tmp_path / "aligned"
    for name in ("Ann", "Bob"):
        (root / name).mkdir(parents=True)
        for number in (1, 2):
            cv2.imwrite(str(root / name / f"{name}_{number:04d}.jpg"), _face(number + len(name)))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("Ann\t1\t2\nBob\t1\t2\nAnn\t1\tBob\t2\n")
    _truncate(root / "Bob" / "Bob_0001.jpg")
    with pytest.raises(DataError, match="Bob_0001.jpg.*--skip-bad"):
        pairs_to_bin(root, pairs, tmp_path / "lfw.bin")
    summary = pairs_to_bin(root, pairs, tmp_path / "lfw.bin", skip_bad=True)
    assert (summary.num_pairs, summary.num_dropped, len(summary.skipped)) == (2, 1, 1)
    images, issame = load_bin(tmp_path / "lfw.bin")
    assert len(images) == 4 and issame.tolist() == [True, False]
    with pytest.raises(Exception, match="already exists"):
        pairs_to_bin(root, pairs, tmp_path / "lfw.bin", skip_bad=True)
