"""Tests of ``oaml align`` (src/oaml/tools/align.py) and the MTCNN detector (src/oaml/tools/_mtcnn.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from oaml.cli.main import main
from oaml.constants import ARCFACE_TEMPLATE
from oaml.errors import DataError
from oaml.tools._mtcnn import Detections
from oaml.tools.align import (AlignSummary, align_folder, align_image, read_landmarks_tsv, select_face,
                              similarity_transform, transform_points)

TEMPLATE = ARCFACE_TEMPLATE.astype(np.float64)


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    angle = np.deg2rad(angle_deg)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.concatenate([rotation, np.array(shift)[:, None]], axis=1)


def _photo(landmarks: np.ndarray, shape: tuple[int, int] = (180, 150)) -> np.ndarray:
    """A grey photo with a coloured dot on each landmark, so the crop shows where they landed."""
    image = np.full((*shape, 3), 90, np.uint8)
    colours = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255)]
    for (x, y), colour in zip(landmarks, colours):
        cv2.circle(image, (int(round(x)), int(round(y))), 4, colour, -1)
    return image


def _write_tsv(path: Path, rows: dict[str, np.ndarray]) -> Path:
    header = ["source", "det_prob", "lex", "ley", "rex", "rey", "nx", "ny", "lmx", "lmy", "rmx", "rmy"]
    lines = ["\t".join(header)] + ["\t".join([rel, "1.0", *(f"{v:.4f}" for v in pts.ravel())])
                                   for rel, pts in rows.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_similarity_transform_recovers_a_known_transform() -> None:
    truth = _similarity(17.0, 1.7, (-20.0, 35.0))
    src = transform_points(_similarity(0.0, 1.0, (0.0, 0.0)), TEMPLATE * 1.3 + 5.0)
    dst = transform_points(truth, src)
    np.testing.assert_allclose(similarity_transform(src, dst), truth, atol=1e-9)


def test_similarity_transform_is_the_least_squares_fit_without_reflection() -> None:
    rng = np.random.default_rng(0)
    src = TEMPLATE + rng.normal(0, 2.0, TEMPLATE.shape)
    matrix = similarity_transform(src, TEMPLATE)
    residual = np.sum((transform_points(matrix, src) - TEMPLATE) ** 2)
    assert np.linalg.det(matrix[:, :2]) > 0
    angle, scale = np.arctan2(matrix[1, 0], matrix[0, 0]), np.hypot(*matrix[:, 0])
    for delta in np.concatenate([np.eye(4), -np.eye(4)]) * 1e-3:  # no small change of the 4 parameters does better
        other = _similarity(np.rad2deg(angle + delta[0]), scale + delta[1], tuple(matrix[:, 2] + delta[2:]))
        assert np.sum((transform_points(other, src) - TEMPLATE) ** 2) > residual
    mirrored = src * np.array([-1.0, 1.0])  # a mirror image: the fit stays a rotation, never a reflection
    assert np.linalg.det(similarity_transform(mirrored, TEMPLATE)[:, :2]) > 0


def test_similarity_transform_rejects_degenerate_points() -> None:
    with pytest.raises(DataError, match="coincide"):
        similarity_transform(np.ones((5, 2)), TEMPLATE)
    with pytest.raises(DataError, match="NaN"):
        similarity_transform(np.full((5, 2), np.nan), TEMPLATE)


def test_align_image_puts_the_landmarks_on_the_template() -> None:
    landmarks = transform_points(_similarity(-12.0, 1.4, (20.0, 10.0)), TEMPLATE)
    crop, distance = align_image(_photo(landmarks), landmarks)
    assert crop.shape == (112, 112, 3) and distance < 1e-6
    for (x, y), channel in zip(TEMPLATE, [2, 1, 0]):  # red, green, blue dots on the eyes and the nose
        assert crop[int(round(y)), int(round(x)), channel] > 200


def test_select_face_central_and_largest() -> None:
    boxes = np.array([[0, 0, 60, 60], [70, 70, 110, 110], [150, 0, 200, 50]], np.float64)
    detections = Detections(boxes, np.array([0.99, 0.95, 0.5]), np.zeros((3, 5, 2)))
    assert select_face(detections, (180, 180, 3), "largest")[0] == 0
    assert select_face(detections, (180, 180, 3), "central")[0] == 1
    assert select_face(detections, (180, 180, 3), "central", min_prob=0.999) == (None, "no face with probability "
                                                                                      ">= 0.999 (best 0.990)")
    assert select_face(Detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))), (9, 9, 3))[1] == \
        "no face detected"


def test_align_folder_with_landmarks_keeps_the_tree_and_lists_failures(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    table = {}
    for k, rel in enumerate(["alice/a1.jpg", "alice/deep/a2.png", "bob/b1.jpg", "top.jpg"]):
        landmarks = transform_points(_similarity(5.0 * k, 1.2 + 0.1 * k, (10.0 + k, 20.0)), TEMPLATE)
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(src / rel), _photo(landmarks))
        table[rel] = landmarks
    (src / "bob" / "broken.jpg").write_bytes(b"not an image")
    cv2.imwrite(str(src / "bob" / "unlisted.jpg"), _photo(TEMPLATE))
    tsv = _write_tsv(tmp_path / "lm.tsv", table)
    summary = align_folder(src, dst, landmarks_tsv=tsv, progress=False)
    assert (summary.num_images, summary.num_aligned) == (6, 4)
    assert summary.mean_landmark_distance < 1e-3
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.png")) == [
        "alice/a1.png", "alice/deep/a2.png", "bob/b1.png", "top.png"]
    failed = dict(line.split("\t") for line in (dst / "failed.txt").read_text().splitlines())
    assert failed["bob/broken.jpg"].startswith("unreadable")
    assert failed["bob/unlisted.jpg"] == "no landmarks for this image in the landmarks TSV"
    again = read_landmarks_tsv(dst / "landmarks.tsv")  # the written table reads back
    np.testing.assert_allclose(again["alice/a1.jpg"][0], table["alice/a1.jpg"], atol=1e-3)
    keep = align_folder(src, tmp_path / "keep", landmarks_tsv=tsv, ext="keep", progress=False)
    assert keep.num_aligned == 4 and (tmp_path / "keep" / "alice" / "a1.jpg").is_file()


def test_cli_without_the_mtcnn_extra_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "src").mkdir()
    cv2.imwrite(str(tmp_path / "src" / "x.jpg"), _photo(TEMPLATE))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "facenet_pytorch" else real_find_spec(name, *a))
    assert main(["align", str(tmp_path / "src"), str(tmp_path / "dst")]) == 2
    assert "pip install --no-deps facenet-pytorch" in capsys.readouterr().err


@pytest.mark.shared_data
def test_reference_landmarks_reproduce_the_reference_crops(shared_data: Path, tmp_path: Path) -> None:
    reference = shared_data / "lfw_subset10_arcface112"
    summary = align_folder(shared_data / "lfw_subset10", tmp_path, landmarks_tsv=reference / "landmarks.tsv",
                           progress=False)
    assert summary.num_aligned == 100 and not summary.failed
    diffs = [np.abs(cv2.imread(str(p)).astype(int) - cv2.imread(str(tmp_path / p.relative_to(reference))).astype(int))
             .mean() for p in sorted(reference.rglob("*.png"))]
    assert len(diffs) == 100 and float(np.mean(diffs)) < 0.05


def _mtcnn_run(shared_data: Path, out: Path, name: str,
               count: int | None = None) -> tuple[AlignSummary, list[float], float]:
    """Align ``count`` images (all by default, else spread evenly) of ``shared_data/name`` with MTCNN.

    Returns the summary, the mean absolute pixel difference of each crop to the reference crop in
    ``<name>_arcface112`` and the largest landmark difference to the reference landmarks (px).
    """
    source, reference = shared_data / name, shared_data / f"{name}_arcface112"
    rels = sorted(p.relative_to(source) for p in source.rglob("*") if p.suffix in (".jpg", ".pgm"))
    src = out.parent / "src"
    for rel in rels[::len(rels) // count][:count] if count else rels:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).symlink_to(source / rel)
    summary = align_folder(src, out, progress=False)
    diffs = [np.abs(cv2.imread(str(reference / p.relative_to(out))).astype(int) - cv2.imread(str(p)).astype(int))
             .mean() for p in sorted(out.rglob("*.png"))]
    theirs = read_landmarks_tsv(reference / "landmarks.tsv")
    ours = read_landmarks_tsv(out / "landmarks.tsv")
    worst = max(float(np.abs(points - theirs[rel][0]).max()) for rel, (points, _) in ours.items())
    return summary, diffs, worst


@pytest.mark.shared_data
@pytest.mark.parametrize(("name", "count"), [("lfw_subset10", 20), ("dlib_johns", None)])
def test_mtcnn_alignment_matches_the_reference_crops(shared_data: Path, tmp_path: Path, mtcnn_extra: None, name: str,
                                                     count: int | None) -> None:
    # dlib_johns: tight 150x150 chips whose face boxes reach past the image, so clipping and ties matter.
    summary, diffs, worst = _mtcnn_run(shared_data, tmp_path / "out", name, count)
    assert summary.num_images == summary.num_aligned == len(diffs) and not summary.failed
    assert summary.mean_landmark_distance < 3.0
    assert worst < 0.02  # px, against facenet-pytorch's landmarks (rounded to 0.01 px in the TSV)
    assert float(np.mean(diffs)) < 0.05  # grey levels


@pytest.mark.slow
@pytest.mark.shared_data
def test_cli_aligns_all_100_lfw_images(shared_data: Path, tmp_path: Path, mtcnn_extra: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    summary, diffs, worst = _mtcnn_run(shared_data, tmp_path / "out", "lfw_subset10")
    assert summary.num_aligned == 100 and summary.mean_landmark_distance < 3.0
    assert worst < 0.02 and float(np.mean(diffs)) < 0.05
    assert main(["align", str(shared_data / "lfw_subset10"), str(tmp_path / "cli"), "--no-progress"]) == 0
    assert "aligned 100 of 100 images" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.shared_data
def test_att_faces_match_the_reference_including_its_one_failure(shared_data: Path, tmp_path: Path,
                                                                 mtcnn_extra: None) -> None:
    summary, diffs, worst = _mtcnn_run(shared_data, tmp_path / "out", "att_faces")
    assert (summary.num_images, summary.num_aligned) == (400, 399)
    assert len(read_landmarks_tsv(shared_data / "att_faces_arcface112" / "landmarks.tsv")) == 399
    assert worst < 0.02 and float(np.mean(diffs)) < 0.05


def test_mtcnn_finds_no_face_in_a_blank_image(tmp_path: Path, mtcnn_extra: None) -> None:
    (tmp_path / "src").mkdir()
    cv2.imwrite(str(tmp_path / "src" / "blank.png"), np.full((120, 160, 3), 128, np.uint8))
    summary = align_folder(tmp_path / "src", tmp_path / "dst", progress=False)
    assert summary.num_aligned == 0
    assert (tmp_path / "dst" / "failed.txt").read_text() == "blank.png\tno face detected\n"


def test_mtcnn_is_loaded_without_importing_facenet_pytorch(mtcnn_extra: None) -> None:
    import sys

    from oaml.tools._mtcnn import MTCNN

    MTCNN()
    assert "facenet_pytorch" not in sys.modules  # its own detector would import torchvision
