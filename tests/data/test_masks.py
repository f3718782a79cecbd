"""Synthetic medical masks: geometry on real aligned faces, template anchoring, styles, 7x7 targets."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from oaml.constants import ARCFACE_TEMPLATE
from oaml.data.masks import MASK_STYLES, apply_medical_mask, medical_mask_outline, seeded_mask, visibility_grid

GRAY = np.full((112, 112, 3), 128, np.uint8)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``: 2x3."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1.0, 0.0], [y, x, 0.0, 1.0]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_fit_similarity_recovers_a_known_transform() -> None:
    angle, scale = np.deg2rad(12.0), 1.7
    truth = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 4.0],
                      [scale * np.sin(angle), scale * np.cos(angle), -9.0]])
    src = np.random.default_rng(0).uniform(0, 100, size=(5, 2))
    assert np.allclose(fit_similarity(src, src @ truth[:, :2].T + truth[:, 2]), truth)


def _aligned_landmarks(folder: Path) -> list[tuple[str, np.ndarray]]:
    """Each aligned image with its five landmarks mapped from the source image into the crop."""
    out = []
    with open(folder / "landmarks.tsv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            src = np.array([[float(row[x]), float(row[y])] for x, y in
                            (("lex", "ley"), ("rex", "rey"), ("nx", "ny"), ("lmx", "lmy"), ("rmx", "rmy"))])
            matrix = fit_similarity(src, ARCFACE_TEMPLATE.astype(np.float64))
            mapped = src @ matrix[:, :2].T + matrix[:, 2]
            # Sanity of the mapping: the fit's residual against the template is the one the fixture reports.
            residual = np.abs(mapped - ARCFACE_TEMPLATE).mean()
            assert abs(residual - float(row["mean_abs_err_px_vs_template"])) < 0.05
            out.append((row["aligned"], mapped))
    return out


def _detail(image: np.ndarray, visibility: np.ndarray) -> float:
    """Mean absolute Laplacian inside the mask, away from its edge."""
    inner = cv2.erode((visibility == 0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    return float(np.abs(cv2.Laplacian(image, cv2.CV_32F))[inner].mean())


def _at(visibility: np.ndarray, point: np.ndarray) -> float:
    return float(visibility[int(round(point[1])), int(round(point[0]))])


@pytest.mark.shared_data
def test_masks_on_real_faces_cover_nose_and_mouth_and_spare_the_eyes(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "lfw_subset10_arcface112"
    entries = _aligned_landmarks(folder)
    assert len(entries) == 100
    tiles = []
    for number, (name, landmarks) in enumerate(entries):
        image = cv2.imread(str(folder / name))
        for seed in range(4):
            masked, visibility = apply_medical_mask(image, np.random.default_rng(1000 * seed + number), landmarks)
            assert _at(visibility, landmarks[2]) == 0.0, (name, seed, "nose tip visible")
            assert _at(visibility, landmarks[3]) == 0.0 and _at(visibility, landmarks[4]) == 0.0, (name, seed)
            for eye in landmarks[:2]:
                x, y = np.round(eye).astype(int)
                assert visibility[y - 2:y + 3, x - 2:x + 3].min() == 1.0, (name, seed, "eye covered")
            assert (masked != image).any(axis=2)[visibility == 0].mean() > 0.9
            if seed == 0 and number % 5 == 0:
                overlay = masked.copy()
                for point in landmarks:
                    cv2.circle(overlay, tuple(int(v) for v in np.round(point)), 2, (0, 0, 255), -1)
                tiles.append(overlay)
    montage = np.vstack([np.hstack(tiles[i:i + 5]) for i in range(0, len(tiles), 5)])
    path = tmp_path / "mask_montage.png"
    assert cv2.imwrite(str(path), montage) and cv2.imread(str(path)).shape == montage.shape


def test_default_mask_is_centred_on_the_template() -> None:
    polygon, _ = medical_mask_outline()
    visibility = np.ones((112, 112), np.uint8)
    cv2.fillPoly(visibility, [np.round(polygon).astype(np.int32)], 0)
    occluded = np.argwhere(visibility == 0)
    centre_x = (ARCFACE_TEMPLATE[0, 0] + ARCFACE_TEMPLATE[1, 0]) / 2
    assert abs(occluded[:, 1].mean() - centre_x) < 1.0  # the 96x112 predecessor was ~8 px left
    column = visibility[:, int(round(centre_x))]
    top = int(np.argmin(column))
    eye_y, nose_y = ARCFACE_TEMPLATE[:2, 1].mean(), ARCFACE_TEMPLATE[2, 1]
    assert eye_y + 5 < top < nose_y - 5  # nose bridge: between the eye line and the nose tip
    assert column[top:].max() == 0  # covered down to the image bottom (below the chin)
    mouth_row = visibility[int(round(ARCFACE_TEMPLATE[3:, 1].mean()))]
    covered = np.flatnonzero(mouth_row == 0)
    assert covered.min() < ARCFACE_TEMPLATE[3, 0] - 8 and covered.max() > ARCFACE_TEMPLATE[4, 0] + 8


def test_randomisation_statistics_on_the_template() -> None:
    lefts, tops = [], []
    for seed in range(200):
        _, visibility = apply_medical_mask(GRAY, np.random.default_rng(seed), ear_loops=False)
        occluded = np.argwhere(visibility == 0)
        lefts.append(occluded[:, 1].min())
        tops.append(occluded[:, 0].min())
        assert _at(visibility, ARCFACE_TEMPLATE[2]) == 0.0
        assert _at(visibility, ARCFACE_TEMPLATE[0]) == 1.0 and _at(visibility, ARCFACE_TEMPLATE[1]) == 1.0
    # shift +-5, jitter +-3, scale and rotation: the extent varies by several pixels, not by tens.
    assert 6 <= np.ptp(lefts) <= 32 and 6 <= np.ptp(tops) <= 32


def test_deterministic_given_the_generator() -> None:
    first = apply_medical_mask(GRAY, np.random.default_rng(7))
    second = apply_medical_mask(GRAY, np.random.default_rng(7))
    other = apply_medical_mask(GRAY, np.random.default_rng(8))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])
    assert first[1].dtype == np.float32 and set(np.unique(first[1])) <= {0.0, 1.0}


def test_seeded_mask_depends_on_seed_and_index_only() -> None:
    masked, visibility = seeded_mask(GRAY, 3, 7)
    expected, expected_visibility = apply_medical_mask(GRAY, np.random.default_rng((3, 7)))
    assert np.array_equal(masked, expected) and np.array_equal(visibility, expected_visibility)
    assert np.array_equal(seeded_mask(GRAY, 3, 7)[0], masked)
    assert not np.array_equal(seeded_mask(GRAY, 3, 8)[0], masked)
    assert not np.array_equal(seeded_mask(GRAY, 4, 7)[0], masked)


@pytest.mark.parametrize("style", MASK_STYLES)
def test_styles_and_untouched_surroundings(style: str) -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    image[:] = 128
    masked, visibility = apply_medical_mask(image, np.random.default_rng(2), style=style, ear_loops=False)
    covered = masked[visibility == 0].astype(float)
    mean_bgr = covered.mean(axis=0)
    if style == "black":
        assert mean_bgr.max() < 70
    elif style == "white":
        assert mean_bgr.min() > 170
    elif style == "surgical_blue":
        assert mean_bgr[0] > mean_bgr[2] + 40  # blue over red
    elif style == "pink":
        assert mean_bgr[2] > mean_bgr[1] + 30
    elif style == "fabric":  # a pattern: much more fine detail inside the mask than a plain mask has
        assert _detail(masked, visibility) > 2 * _detail(*apply_medical_mask(image, np.random.default_rng(2),
                                                                            style="grey", ear_loops=False))
    near = cv2.dilate((visibility == 0).astype(np.uint8), np.ones((5, 5), np.uint8))
    assert np.array_equal(masked[near == 0], image[near == 0])


def test_ear_loops_are_occluding_pixels() -> None:
    _, without = apply_medical_mask(GRAY, np.random.default_rng(3), ear_loops=False)
    _, with_loops = apply_medical_mask(GRAY, np.random.default_rng(3), ear_loops=True)
    extra = (with_loops == 0) & (without == 1)
    assert extra.sum() > 20
    assert np.array_equal(with_loops[without == 0], without[without == 0])


def test_visibility_grid_gives_area_fractions() -> None:
    visibility = np.ones((112, 112), np.float32)
    visibility[0:8, 0:16] = 0  # half of cell (0, 0)
    visibility[48:64, 64:80] = 0  # all of cell (3, 4)
    visibility[100, 100] = 0  # one pixel of cell (6, 6)
    visibility[20:28, 16:24] = 0.5  # a quarter of cell (1, 1) at half visibility
    grid = visibility_grid(visibility)
    expected = np.ones((7, 7), np.float32)
    expected[0, 0] = 0.5
    expected[3, 4] = 0.0
    expected[6, 6] = 1 - 1 / 256
    expected[1, 1] = 1 - 0.5 * 64 / 256
    assert grid.shape == (7, 7) and grid.dtype == np.float32
    assert np.array_equal(grid, expected)
    batch = visibility_grid(np.stack([visibility, np.zeros_like(visibility)]))
    assert batch.shape == (2, 7, 7) and np.array_equal(batch[0], expected) and batch[1].max() == 0
    with pytest.raises(ValueError, match="100x100"):
        visibility_grid(np.ones((100, 100)))


def _hand_mask() -> torch.Tensor:
    """112 x 112, visible except: cell (0, 0) fully occluded, the left half of cell (0, 1), an 8 x 8
    quarter of cell (3, 3) and 4 x 16 pixels of cell (6, 6)."""
    mask = torch.ones(112, 112)
    mask[0:16, 0:16] = 0
    mask[0:16, 16:24] = 0
    mask[48:56, 48:56] = 0
    mask[96:100, 96:112] = 0
    return mask


def test_visibility_grid_tensor_exact_fractions() -> None:
    expected = torch.ones(7, 7)
    expected[0, 0] = 0.0
    expected[0, 1] = 0.5
    expected[3, 3] = 0.75
    expected[6, 6] = 0.75
    target = visibility_grid(_hand_mask().view(1, 1, 112, 112))
    assert target.shape == (1, 1, 7, 7)
    assert torch.equal(target[0, 0], expected)
    assert torch.equal(visibility_grid(_hand_mask().unsqueeze(0)), target[:, 0])


def test_visibility_grid_tensor_integer_masks_and_all_ones() -> None:
    as_uint8 = visibility_grid(_hand_mask().to(torch.uint8).unsqueeze(0))
    assert as_uint8.dtype == torch.float32 and torch.equal(as_uint8, visibility_grid(_hand_mask().unsqueeze(0)))
    assert torch.equal(visibility_grid(torch.ones(2, 112, 112)), torch.ones(2, 7, 7))


def test_visibility_grid_tensor_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="B x H x W"):
        visibility_grid(torch.ones(2, 3, 112, 112))
    with pytest.raises(ValueError, match="100x100"):
        visibility_grid(torch.ones(1, 100, 100))


def test_visibility_grid_arrays_equal_tensors() -> None:
    mask = _hand_mask().numpy()
    grid = visibility_grid(mask)
    assert isinstance(grid, np.ndarray) and grid.shape == (7, 7) and grid.dtype == np.float32
    assert np.array_equal(grid, visibility_grid(_hand_mask().view(1, 1, 112, 112))[0, 0].numpy())
    assert np.array_equal(visibility_grid(mask.astype(np.float64)), grid)
