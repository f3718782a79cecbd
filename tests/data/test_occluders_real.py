"""Occluders on real aligned faces (``../shared/data``): landmarks of aligned folders, placement, a montage.

The montage PNGs are written to the test's ``tmp_path`` only (the faces are real people); run with
``--basetemp /tmp/occluder_montage`` to keep them in a known place.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from oaml.constants import ARCFACE_TEMPLATE
from oaml.data.landmarks import aligned_landmarks
from oaml.data.occluders import occluder_names, seeded_occlusion

pytestmark = pytest.mark.shared_data

LFW = "lfw_min10_arcface112"
TEMPLATE = ARCFACE_TEMPLATE.astype(np.float64)


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "landmarks.tsv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _turn(points: np.ndarray) -> float:
    """How far the nose tip sits from the perpendicular through the eye centre, in eye distances."""
    axis = points[1] - points[0]
    offset = points[2] - (points[0] + points[1]) / 2
    return abs(float(axis @ offset)) / float(axis @ axis)


def test_aligned_landmarks_of_lfw_lie_near_the_template_and_match_the_aligner(shared_data: Path) -> None:
    folder = shared_data / LFW
    mapped = aligned_landmarks(folder)
    rows = _rows(folder)
    assert list(mapped) == [row["aligned"] for row in rows]
    for key in list(mapped)[::400]:
        assert (folder / key).is_file()
    distances = []
    for row in rows:
        points = mapped[row["aligned"]]
        # The aligner logged the mean distance between its warped landmarks and the template.
        assert abs(np.linalg.norm(points - TEMPLATE, axis=1).mean() - float(row["mean_dist_px_vs_template"])) < 0.01
        distances.append(np.linalg.norm(points - TEMPLATE, axis=1).max())
    distances = np.array(distances)
    assert (distances <= 10.0).mean() >= 0.9 and np.median(distances) < 5.0
    assert distances.max() > 5.0  # turned faces: the crop's own landmarks are not the template


def test_aligned_landmarks_of_att_faces(shared_data: Path) -> None:
    folder = shared_data / "att_faces_arcface112"
    mapped = aligned_landmarks(folder)
    rows = _rows(folder)
    assert len(mapped) == len(rows) > 350 and all(key.endswith(".png") for key in mapped)
    for row in rows:
        error = np.abs(mapped[row["aligned"]] - TEMPLATE).mean()
        assert abs(error - float(row["mean_abs_err_px_vs_template"])) < 0.05


def _faces(shared_data: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Three frontal and three of the most turned faces of lfw_min10, with their own landmarks."""
    folder = shared_data / LFW
    mapped = aligned_landmarks(folder)
    ordered = sorted(mapped, key=lambda key: (_turn(mapped[key]), key))
    keys = [ordered[i] for i in (10, 400, 1200)] + [ordered[-1], ordered[-4], ordered[-12]]
    return [(key, cv2.imread(str(folder / key)), mapped[key]) for key in keys]


def _at(visibility: np.ndarray, point: np.ndarray) -> float:
    return float(visibility[round(float(point[1])), round(float(point[0]))])


@pytest.mark.parametrize("name,hidden,visible", [
    ("sunglasses", (0, 1), (3, 4)), ("hand_eyes", (0, 1), ()), ("eyes", (0, 1), (2, 3, 4)),
    ("kn95", (2, 3, 4), (0, 1)), ("cloth_mask", (2, 3, 4), (0, 1)), ("mask", (2, 3, 4), (0, 1)),
    ("hand_mouth", (3, 4), (0, 1)), ("scarf", (3, 4), (0, 1, 2)), ("nose", (2,), (0, 1, 3, 4)),
    ("mouth", (3, 4), (0, 1, 2)),
    ("glasses", (), (0, 1, 2, 3, 4)),
])
def test_occluders_follow_real_landmarks(shared_data: Path, name: str, hidden: tuple[int, ...],
                                         visible: tuple[int, ...]) -> None:
    folder = shared_data / LFW
    mapped = aligned_landmarks(folder)
    keys = sorted(mapped, key=lambda key: (_turn(mapped[key]), key))
    sample = keys[::60] + keys[-15:]  # frontal to strongly turned
    failures = 0
    for index, key in enumerate(sample):
        image = cv2.imread(str(folder / key))
        _, visibility = seeded_occlusion(image, name, 0, index, mapped[key])
        ok = all(_at(visibility, mapped[key][i]) == 0 for i in hidden)
        ok &= all(_at(visibility, mapped[key][i]) == 1 for i in visible)
        failures += not ok
    assert failures <= 0.05 * len(sample), f"{name}: {failures} of {len(sample)} faces misplaced"


def test_montage_of_every_occluder_on_real_faces(shared_data: Path, tmp_path: Path) -> None:
    faces = _faces(shared_data)
    assert max(_turn(points) for _, _, points in faces) > 0.25  # some turned faces are among them
    rows = []
    for name in occluder_names():
        tiles, maps = [], []
        for index, (key, image, points) in enumerate(faces):
            occluded, visibility = seeded_occlusion(image, name, 2024, index, points)
            changed = (occluded != image).any(axis=2)
            assert changed.mean() > 0.01 and (visibility == 0).sum() > 30, (name, key)
            tiles.append(occluded)
            maps.append(cv2.cvtColor((visibility * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR))
        row = np.hstack(tiles)
        sheet = np.vstack([np.hstack([image for _, image, _ in faces]), row, np.hstack(maps)])
        assert cv2.imwrite(str(tmp_path / f"{name}.png"), sheet)
        labelled = row.copy()
        cv2.putText(labelled, name, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1, cv2.LINE_AA)
        rows.append(labelled)
    assert cv2.imwrite(str(tmp_path / "overview.png"), np.vstack(rows))
    for name in [*occluder_names(), "overview"]:
        written = cv2.imread(str(tmp_path / f"{name}.png"))
        assert written is not None and written.shape[1] == 112 * len(faces)
    assert cv2.imread(str(tmp_path / "overview.png")).shape[0] == 112 * len(occluder_names())
