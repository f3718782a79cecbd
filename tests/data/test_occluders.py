"""Procedural occluders (SPEC §4, §13.2): registry, visibility semantics, geometry, determinism, mixtures.

Every expectation here is computed independently of the occluder code: pixel differences against the input
image, hand-written template geometry, explicit mean pooling and a separately warped copy of the face.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np
import pytest

from oaml.constants import ARCFACE_TEMPLATE
from oaml.data.augment import crop_in_place, hflip
from oaml.data.masks import apply_medical_mask, seeded_mask, visibility_grid
from oaml.data.occluders import (
    OCCLUDERS,
    OccluderMixture,
    build_occluder,
    occluder_names,
    parse_occluder_mixture,
    seeded_occlusion,
)
from oaml.data.synthetic import render_face, render_identity_params

NAMES = occluder_names()
REQUIRED = {"mask", "kn95", "cloth_mask", "sunglasses", "glasses", "scarf", "hand_mouth", "hand_eyes", "eyes",
            "nose", "mouth", "upper_half", "lower_half", "left_half", "right_half", "rect10", "rect25", "rect40"}
NOISE = np.random.default_rng(12345).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
TEMPLATE = ARCFACE_TEMPLATE.astype(np.float64)
EYE = float(np.hypot(*(TEMPLATE[1] - TEMPLATE[0])))  # 35.24 px


def synthetic_face(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return render_face(render_identity_params(rng), rng)


def check_visibility_marks_changes(original: np.ndarray, occluded: np.ndarray, visibility: np.ndarray,
                                   region: np.ndarray | None = None) -> None:
    """Hidden pixels are changed (a counted tolerance for equal colours); changed visible pixels hug the edge.

    ``region`` limits the first check to the pixels that an occluder may have changed (a crop blacks out the
    rest, which is hidden but unchanged).
    """
    assert visibility.dtype == np.float32 and visibility.shape == original.shape[:2]
    assert set(np.unique(visibility).tolist()) <= {0.0, 1.0}
    changed = (occluded != original).any(axis=2)
    hidden = visibility == 0
    inside = hidden if region is None else hidden & region
    assert int((inside & ~changed).sum()) <= 2 + 0.002 * inside.sum()
    edge = changed & ~hidden
    near = cv2.dilate(hidden.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # within 2 px
    assert int((edge & ~near).sum()) <= 5, "changed visible pixels away from any hidden pixel"
    contours, _ = cv2.findContours(hidden.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    assert edge.sum() <= 1.5 * perimeter + 10, (int(edge.sum()), perimeter)


def at(visibility: np.ndarray, point: np.ndarray) -> float:
    return float(visibility[round(float(point[1])), round(float(point[0]))])


# ---------------------------------------------------------------- registry and errors


def test_registry_holds_the_required_names() -> None:
    assert REQUIRED <= set(NAMES)
    assert NAMES == sorted(NAMES) and all(name in OCCLUDERS for name in NAMES)


def test_unknown_name_is_a_one_line_error_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        build_occluder("balaclava")
    message = str(info.value)
    assert "\n" not in message and "'balaclava'" in message
    assert all(name in message for name in REQUIRED) and "rect<1-90>" in message
    with pytest.raises(ValueError, match="1 <= n <= 90"):
        build_occluder("rect91")
    with pytest.raises(ValueError, match="1 <= n <= 90"):
        build_occluder("rect0")
    with pytest.raises(ValueError, match="unknown occluder"):
        seeded_occlusion(NOISE, "rectangle", 0, 0)


@pytest.mark.parametrize("percent", [1, 7, 33, 50, 90])
def test_rect_family_hides_its_area_fraction(percent: int) -> None:
    occluder = build_occluder(f"rect{percent}")
    for seed in range(3):
        _, visibility = occluder(NOISE, None, np.random.default_rng(seed))
        hidden = visibility == 0
        ys, xs = np.nonzero(hidden)
        box_area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert abs(hidden.mean() - percent / 100) <= 2 * (hidden.shape[0] + hidden.shape[1]) / hidden.size
        assert hidden.sum() >= 0.95 * box_area  # a filled, upright rectangle on the template


def test_bad_inputs_name_the_argument() -> None:
    occluder = build_occluder("kn95")
    with pytest.raises(ValueError, match="image"):
        occluder(NOISE[..., 0], None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="image"):
        occluder(NOISE.astype(np.float32), None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="landmarks"):
        occluder(NOISE, np.zeros((4, 2)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="landmarks"):
        build_occluder("rect25")(NOISE, np.full((5, 2), np.nan), np.random.default_rng(0))
    with pytest.raises(ValueError, match="jitter"):
        build_occluder("sunglasses", jitter=-1.0)


# ---------------------------------------------------------------- visibility semantics


@pytest.mark.parametrize("name", NAMES)
def test_visibility_marks_exactly_the_hidden_pixels(name: str) -> None:
    occluder = build_occluder(name)
    face, landmarks = synthetic_face(7)
    for seed in range(6):
        for image, points in ((NOISE, None), (face, landmarks)):
            before = image.copy()
            occluded, visibility = occluder(image, points, np.random.default_rng(seed))
            assert np.array_equal(image, before), "the input was modified"
            assert occluded.dtype == np.uint8 and occluded.shape == image.shape and occluded is not image
            assert (visibility == 0).sum() >= 30, "nothing hidden"
            check_visibility_marks_changes(image, occluded, visibility)


@pytest.mark.parametrize("name", NAMES)
def test_maps_follow_flips_and_crops(name: str) -> None:
    occluded, visibility = seeded_occlusion(NOISE, name, 3, 11)
    flipped, flipped_vis = hflip(occluded, visibility)
    check_visibility_marks_changes(cv2.flip(NOISE, 1), flipped, flipped_vis)
    box = (20, 10, 70, 80)  # top, left, h, w
    cropped, cropped_vis = crop_in_place(occluded, visibility, box)
    reference = np.zeros_like(NOISE)
    reference[20:90, 10:90] = NOISE[20:90, 10:90]
    outside = np.ones(NOISE.shape[:2], bool)
    outside[20:90, 10:90] = False
    assert (cropped_vis[outside] == 0).all() and (cropped[outside] == 0).all()
    check_visibility_marks_changes(reference, cropped, cropped_vis, region=~outside)
    assert np.array_equal(cropped_vis[20:90, 10:90], visibility[20:90, 10:90])


@pytest.mark.parametrize("name", NAMES)
def test_grid_is_the_mean_of_each_16_px_cell(name: str) -> None:
    _, visibility = seeded_occlusion(NOISE, name, 1, 2)
    grid = visibility_grid(visibility)
    expected = np.array([[visibility[16 * i:16 * i + 16, 16 * j:16 * j + 16].sum() / 256.0 for j in range(7)]
                         for i in range(7)])
    assert grid.shape == (7, 7) and np.allclose(grid, expected, atol=1e-6)
    assert (grid < 1).any()


# ---------------------------------------------------------------- placement on the template


def _box_mask(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    ys, xs = np.mgrid[0:112, 0:112]
    return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_landmark_blocks_match_hand_computed_template_boxes() -> None:
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = TEMPLATE
    expected = {
        "eyes": _box_mask(lx - 0.45 * EYE, ly - 0.3 * EYE, rx + 0.45 * EYE, ly + 0.3 * EYE),
        "nose": _box_mask(nx - 0.3 * EYE, ny - 0.4 * EYE, nx + 0.3 * EYE, ny + 0.2 * EYE),
        "mouth": _box_mask(mlx - 0.25 * EYE, min(mly, mry) - 0.25 * EYE, mrx + 0.25 * EYE, max(mly, mry) + 0.3 * EYE),
    }
    ys, xs = np.mgrid[0:112, 0:112]
    line_y = ((ly + mly) / 2 + (ry + mry) / 2) / 2  # the line halfway between eye line and mouth line (~72 px)
    expected["upper_half"] = ys < line_y
    expected["lower_half"] = ys > line_y
    expected["left_half"] = xs < nx
    expected["right_half"] = xs > nx
    for name, box in expected.items():
        _, visibility = build_occluder(name, jitter=0.0)(NOISE, None, np.random.default_rng(0))
        assert iou(visibility == 0, box) >= 0.95, name


def test_a_pixel_is_hidden_when_at_least_half_of_it_is_covered() -> None:
    # Level eyes and mouth: the eyes block is an upright box whose exact area coverage is a product of overlaps.
    points = TEMPLATE.copy()
    points[:2, 1] = 51.6
    points[3:, 1] = 92.3
    eye = points[1, 0] - points[0, 0]
    x0, x1 = points[0, 0] - 0.45 * eye, points[1, 0] + 0.45 * eye
    y0, y1 = 51.6 - 0.3 * eye, 51.6 + 0.3 * eye
    centres = np.arange(112.0)
    cover_x = np.clip(np.minimum(centres + 0.5, x1) - np.maximum(centres - 0.5, x0), 0, 1)
    cover_y = np.clip(np.minimum(centres + 0.5, y1) - np.maximum(centres - 0.5, y0), 0, 1)
    area = cover_y[:, None] * cover_x[None, :]
    _, visibility = build_occluder("eyes", jitter=0.0)(NOISE, points, np.random.default_rng(0))
    # Coverage is rendered on a 4 x 4 sub-pixel grid: along an edge it is exact to 1/8 of a pixel.
    edge = (cover_x == 1) | (cover_y == 1)
    decisive = edge & (np.abs(area - 0.5) > 0.13)
    assert np.array_equal((visibility == 0)[decisive], (area >= 0.5)[decisive])
    assert decisive.sum() > 100 and (visibility == 0)[area == 1].all() and (visibility == 1)[area == 0].all()
    assert area[(visibility == 1) & edge].max() < 0.63 and area[(visibility == 0) & edge].min() > 0.37


@pytest.mark.parametrize("name,hidden,visible", [
    ("kn95", ["nose", "left_mouth", "right_mouth", "chin"], ["left_eye", "right_eye"]),
    ("cloth_mask", ["nose", "left_mouth", "right_mouth", "chin"], ["left_eye", "right_eye"]),
    ("mask", ["nose", "left_mouth", "right_mouth"], ["left_eye", "right_eye"]),
    ("scarf", ["left_mouth", "right_mouth", "chin"], ["left_eye", "right_eye", "nose"]),
    ("hand_mouth", ["left_mouth", "right_mouth"], ["left_eye", "right_eye"]),
    ("sunglasses", ["left_eye", "right_eye"], ["nose", "left_mouth", "right_mouth"]),
    ("hand_eyes", ["left_eye", "right_eye"], ["left_mouth", "right_mouth"]),
    ("glasses", [], ["left_eye", "right_eye", "nose", "left_mouth", "right_mouth"]),
    ("eyes", ["left_eye", "right_eye"], ["nose", "left_mouth", "right_mouth"]),
    ("nose", ["nose"], ["left_eye", "right_eye", "left_mouth", "right_mouth"]),
    ("mouth", ["left_mouth", "right_mouth"], ["left_eye", "right_eye", "nose"]),
])
def test_occluders_cover_their_landmarks(name: str, hidden: list[str], visible: list[str]) -> None:
    face, landmarks = synthetic_face(21)
    eye = float(np.hypot(*(landmarks[1] - landmarks[0])))
    points = dict(zip(("left_eye", "right_eye", "nose", "left_mouth", "right_mouth"), landmarks))
    points["chin"] = (landmarks[3] + landmarks[4]) / 2 + np.array([0.0, 0.45 * eye])
    for seed in range(8):
        _, visibility = build_occluder(name)(face, landmarks, np.random.default_rng(seed))
        for key in hidden:
            assert at(visibility, points[key]) == 0.0, (name, seed, key, "visible")
        for key in visible:
            assert at(visibility, points[key]) == 1.0, (name, seed, key, "hidden")


def test_glasses_hide_only_a_thin_frame_around_the_eyes() -> None:
    for seed in range(8):
        _, visibility = build_occluder("glasses")(NOISE, None, np.random.default_rng(seed))
        hidden = visibility == 0
        ys, _ = np.nonzero(hidden)
        assert ys.min() > TEMPLATE[0, 1] - 0.6 * EYE and ys.max() < TEMPLATE[2, 1]
        thin = cv2.erode(hidden.astype(np.uint8), np.ones((5, 5), np.uint8))
        assert thin.sum() < 0.05 * hidden.sum(), "glasses should hide strokes, not areas"


# ---------------------------------------------------------------- the similarity-warped face


def _similarity() -> np.ndarray:
    matrix = cv2.getRotationMatrix2D((56.0, 56.0), 15.0, 0.9)
    matrix[:, 2] += (4.0, -3.0)
    return matrix


@pytest.mark.parametrize("name", NAMES)
def test_placement_follows_a_similarity_warp(name: str) -> None:
    matrix = _similarity()
    face, landmarks = synthetic_face(5)
    warped = cv2.warpAffine(face, matrix, (112, 112))
    warped_landmarks = landmarks.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]
    valid = cv2.warpAffine(np.ones((112, 112), np.float32), matrix, (112, 112)) > 0.999
    scores = []
    for seed in range(5):
        _, first = seeded_occlusion(face, name, seed, 0, landmarks)
        _, second = seeded_occlusion(warped, name, seed, 0, warped_landmarks)
        moved = cv2.warpAffine(1.0 - first, matrix, (112, 112)) >= 0.5
        hidden = second == 0
        if name == "glasses":  # 2-3 px strokes: a half-pixel raster shift changes a third of their pixels
            grow = np.ones((3, 3), np.uint8)
            near_moved = cv2.dilate(moved.astype(np.uint8), grow).astype(bool)
            near_hidden = cv2.dilate(hidden.astype(np.uint8), grow).astype(bool)
            matched = (moved & near_hidden & valid).sum() + (hidden & near_moved & valid).sum()
            scores.append(matched / max((moved & valid).sum() + (hidden & valid).sum(), 1))
        else:
            scores.append(iou(moved & valid, hidden & valid))
    if name == "mask":  # masks.py draws its jitter, shift and rotation in image axes, not the face's
        assert np.mean(scores) >= 0.9, scores
    else:
        assert min(scores) >= 0.9, scores


# ---------------------------------------------------------------- determinism and seeding


@pytest.mark.parametrize("name", NAMES)
def test_seeded_occlusion_is_deterministic_and_seed_dependent(name: str) -> None:
    image, visibility = seeded_occlusion(NOISE, name, 7, 3)
    again, again_vis = seeded_occlusion(NOISE.copy(), name, 7, 3)
    assert image.tobytes() == again.tobytes() and visibility.tobytes() == again_vis.tobytes()
    other_seed, _ = seeded_occlusion(NOISE, name, 8, 3)
    other_index, _ = seeded_occlusion(NOISE, name, 7, 4)
    assert not np.array_equal(image, other_seed) and not np.array_equal(image, other_index)
    if name != "mask":
        stream = np.random.default_rng((7, 3, zlib.crc32(name.encode())))
        direct, direct_vis = build_occluder(name)(NOISE, None, stream)
        assert np.array_equal(direct, image) and np.array_equal(direct_vis, visibility)


def test_mask_is_exactly_the_existing_medical_mask() -> None:
    face, landmarks = synthetic_face(2)
    for seed, index in ((0, 0), (1, 17), (123, 4567)):
        ours, our_vis = seeded_occlusion(face, "mask", seed, index)
        theirs, their_vis = seeded_mask(face, seed, index)
        assert ours.tobytes() == theirs.tobytes() and our_vis.tobytes() == their_vis.tobytes()
        with_points, points_vis = build_occluder("mask")(face, landmarks, np.random.default_rng(seed))
        reference, reference_vis = apply_medical_mask(face, np.random.default_rng(seed), landmarks)
        assert np.array_equal(with_points, reference) and np.array_equal(points_vis, reference_vis)


def test_jitter_moves_the_occluder_by_a_few_pixels() -> None:
    _, fixed = build_occluder("eyes", jitter=0.0)(NOISE, None, np.random.default_rng(0))
    shifts = []
    for seed in range(20):
        _, moved = build_occluder("eyes")(NOISE, None, np.random.default_rng(seed))
        ys, xs = np.nonzero(moved == 0)
        ys0, xs0 = np.nonzero(fixed == 0)
        shifts.append(np.hypot(xs.mean() - xs0.mean(), ys.mean() - ys0.mean()))
    assert 0.2 < float(np.mean(shifts)) and max(shifts) < 4.0


# ---------------------------------------------------------------- mixtures


def test_parse_mixture() -> None:
    assert parse_occluder_mixture("mask:0.5,sunglasses:0.2,eyes:0.1") == {"mask": 0.5, "sunglasses": 0.2,
                                                                         "eyes": 0.1}
    assert parse_occluder_mixture(" rect33 : 1 ") == {"rect33": 1.0}
    assert parse_occluder_mixture("") == {}


@pytest.mark.parametrize("text,fragment", [
    ("mask0.5", "'mask0.5'"), ("mask:half", "'mask:half'"), ("mask:1.5", "'mask:1.5'"),
    ("mask:-0.1", "'mask:-0.1'"), ("visor:0.2", "'visor:0.2'"), ("mask:0.2,mask:0.3", "twice"),
    ("mask:0.6,eyes:0.5", "sum to 1.1"), ("mask:0.5,", "''"), ("rect95:0.1", "'rect95:0.1'"), ("eyes:nan", "nan"),
])
def test_bad_mixtures_are_one_line_errors_naming_the_entry(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_occluder_mixture(text)
    assert "\n" not in str(info.value) and fragment in str(info.value)


def test_mixture_draws_one_uniform_before_the_occluder() -> None:
    mixture = OccluderMixture({"eyes": 0.4, "kn95": 0.4})
    for seed in range(10):
        image, visibility = mixture(NOISE, np.random.default_rng(seed))
        reference_rng = np.random.default_rng(seed)
        draw = reference_rng.random()
        if draw < 0.4:
            expected = build_occluder("eyes")(NOISE, None, reference_rng)
        elif draw < 0.8:
            expected = build_occluder("kn95")(NOISE, None, reference_rng)
        else:
            expected = (NOISE, np.ones((112, 112), np.float32))
        assert np.array_equal(image, expected[0]) and np.array_equal(visibility, expected[1])


def test_mixture_frequencies_match_the_probabilities() -> None:
    small = cv2.resize(NOISE, (56, 56), interpolation=cv2.INTER_AREA)
    mixture = OccluderMixture.from_text("upper_half:0.3,lower_half:0.2")
    rng = np.random.default_rng(99)
    counts = {"upper": 0, "lower": 0, "none": 0}
    trials = 2000
    for _ in range(trials):
        _, visibility = mixture(small, rng)
        top, bottom = visibility[8, 28] == 0, visibility[52, 28] == 0
        counts["upper" if top else "lower" if bottom else "none"] += 1
        assert not (top and bottom)
    tolerance = 3.5 * np.sqrt(0.25 / trials)
    assert abs(counts["upper"] / trials - 0.3) < tolerance
    assert abs(counts["lower"] / trials - 0.2) < tolerance
    assert abs(counts["none"] / trials - 0.5) < tolerance
