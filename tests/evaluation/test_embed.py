"""Tests of ``oaml.evaluation.embed``: ``oaml embed`` outputs and deterministic synthetic masks."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from eval_helpers import write_face_folder
from oaml.cli.main import main
from oaml.constants import ARCFACE_TEMPLATE
from oaml.data.masks import visibility_grid
from oaml.data.occluders import seeded_occlusion
from oaml.errors import DataError
from oaml.evaluation.api import load_model
from oaml.evaluation.embed import OccludedImages, SeededOccluder, embed_folder, extract_features
from oaml.evaluation.eval_data import EvalImages


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two identities (one nested a level deeper) plus one loose image without identity."""
    root = write_face_folder(tmp_path_factory.mktemp("embed"), [2, 3])
    nested = root / "id01" / "extra"
    nested.mkdir()
    cv2.imwrite(str(nested / "deep.jpg"), np.full((112, 112, 3), 128, np.uint8))
    cv2.imwrite(str(root / "loose.png"), np.full((112, 112, 3), 30, np.uint8))
    (root / "notes.txt").write_text("not an image")
    return root


def _read_index(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_embed_folder_writes_embeddings_index_and_maps(oaml_ckpt: Path, mixed_folder: Path, tmp_path: Path) -> None:
    rec = load_model(oaml_ckpt, batch_size=4)
    summary = embed_folder(rec, mixed_folder, tmp_path, save_maps=True, progress=False)
    assert summary.num_images == 7
    emb = np.load(tmp_path / "embeddings.npy")
    assert emb.shape == (7, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    rows = _read_index(tmp_path / "index.csv")
    assert [r["path"] for r in rows] == ["id00/img000.png", "id00/img001.png", "id01/extra/deep.jpg",
                                         "id01/img000.png", "id01/img001.png", "id01/img002.png", "loose.png"]
    assert [r["identity"] for r in rows] == ["id00"] * 2 + ["id01"] * 4 + [""]
    direct, norms = rec.embed([mixed_folder / r["path"] for r in rows])
    np.testing.assert_allclose(emb, direct, atol=1e-5)
    np.testing.assert_allclose([float(r["norm"]) for r in rows], norms, rtol=1e-4)
    with np.load(tmp_path / "features.npz") as features:
        assert features["feature_maps"].shape == (7, 64, 7, 7) and features["feature_maps"].dtype == np.float16
        assert features["occlusion"].shape == (7, 1, 7, 7)


def test_embed_command_with_released_checkpoint(released_ckpt: Path, mixed_folder: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "--model-path", str(released_ckpt), "--data-path", str(mixed_folder), "--output-dir",
                 str(tmp_path), "--save-maps", "--num-workers", "0", "--no-progress"]) == 0
    assert "embedded 7 images" in capsys.readouterr().out
    with np.load(tmp_path / "features.npz") as features:
        assert set(features.files) == {"feature_maps"}  # no occlusion head in the released layout
    assert not (tmp_path / "results.json").exists()


def test_embed_refuses_other_sizes_and_empty_folders(oaml_ckpt: Path, tmp_path: Path) -> None:
    root = write_face_folder(tmp_path / "big", [1], size=128)
    with pytest.raises(DataError, match=r"img000.png \(128x128\).*oaml align"):
        embed_folder(load_model(oaml_ckpt), root, tmp_path / "out", progress=False)
    summary = embed_folder(load_model(oaml_ckpt, resize=True), root, tmp_path / "out", progress=False)
    assert summary.num_images == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        embed_folder(load_model(oaml_ckpt), tmp_path / "empty", tmp_path / "out", progress=False)


@pytest.mark.parametrize("occluder", ["mask", "sunglasses"])
def test_occluders_depend_only_on_the_seed_and_the_image_index(face_folder: Path, occluder: str) -> None:
    files = sorted(str(p) for p in face_folder.rglob("*.png"))
    images = EvalImages(names=files, paths=files)
    forward = OccludedImages(images, np.arange(len(files)), occluder, seed=7)
    backward = OccludedImages(images, np.arange(len(files))[::-1], occluder, seed=7)
    clean = OccludedImages(images, np.arange(len(files)))
    assert np.array_equal(forward[2][0], backward[len(files) - 3][0])
    assert not np.array_equal(forward[2][0], clean[2][0]) and np.array_equal(clean[2][0], images.read(2))
    assert not np.array_equal(forward[2][0], OccludedImages(images, np.arange(len(files)), occluder, seed=8)[2][0])
    expected_image, visibility = seeded_occlusion(images.read(2), occluder, 7, 2)
    assert np.array_equal(forward[2][0], expected_image)
    assert np.array_equal(forward[2][1], visibility_grid(visibility)) and (clean[2][1] == 1).all()


def test_occluders_follow_the_images_landmarks(face_folder: Path) -> None:
    files = sorted(str(p) for p in face_folder.rglob("*.png"))
    moved = np.repeat(ARCFACE_TEMPLATE[None].astype(np.float64) + (6.0, 9.0), len(files), axis=0)
    images = EvalImages(names=files, paths=files, landmarks=moved)
    image, visibility = OccludedImages(images, np.arange(len(files)), "eyes", seed=1)[3]
    expected = seeded_occlusion(images.read(3), "eyes", 1, 3, moved[3])
    assert np.array_equal(image, expected[0])
    assert not np.array_equal(image, seeded_occlusion(images.read(3), "eyes", 1, 3)[0])


def test_masked_features_do_not_depend_on_batching(oaml_ckpt: Path, face_folder: Path) -> None:
    files = sorted(str(p) for p in face_folder.rglob("*.png"))
    images = EvalImages(names=files, paths=files)
    one = extract_features(load_model(oaml_ckpt, batch_size=3), images, occluder="mask", progress=False)
    two = extract_features(load_model(oaml_ckpt, batch_size=10), images, occluder="mask", num_workers=1,
                           progress=False)
    np.testing.assert_allclose(one.embedding.numpy(), two.embedding.numpy(), atol=1e-5)
    np.testing.assert_allclose(one.occlusion_flip.numpy(), two.occlusion_flip.numpy(), atol=1e-5)


def test_an_occluder_gets_each_image_with_its_index(face_folder: Path) -> None:
    files = sorted(str(p) for p in face_folder.rglob("*.png"))
    images = EvalImages(names=files, paths=files)

    def black_top_rows(image: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        occluded = image.copy()
        occluded[:index + 1] = 0
        return occluded, np.ones(image.shape[:2], np.float32)

    occluded = OccludedImages(images, np.array([3, 1]), occluder=black_top_rows)
    assert not occluded[0][0][:4].any() and occluded[0][0][4:].any() and not occluded[1][0][:2].any()
    seeded = OccludedImages(images, np.arange(3), occluder=SeededOccluder("mask", 7))
    assert np.array_equal(seeded[2][0], OccludedImages(images, np.arange(3), "mask", seed=7)[2][0])
    with pytest.raises(ValueError, match="unknown occluder"):
        SeededOccluder("tophat")
