"""Procedural synthetic medical masks and their visibility targets (SPEC §4, §8).

The mask outline is built from the five face landmarks (by default the ArcFace 112x112 template,
:data:`oaml.constants.ARCFACE_TEMPLATE`) in a face frame whose x axis runs along the eye line and whose y axis
points down the face:

- the top edge crosses the nose bridge halfway between the eye line and the nose tip and slopes down under
  the eyes toward the cheeks;
- the sides reach at least 0.86 eye-distances from the eye centre and 0.3 beyond each mouth corner;
- the bottom ends about one nose-to-mouth distance below the mouth, i.e. below the chin.

Every sample is randomised (±3 px per landmark, a shift of ±5 px, scale 0.95-1.10 and rotation ±7° about the
nose tip). If an extreme draw on a short or turned face would uncover the nose tip or a mouth corner, or
touch an eye, the perturbation is halved (up to three times) so the mask stays correctly worn. Styles:
light-blue surgical, white, black, grey, pink and patterned fabric, with pleats, cylinder shading, grain, a
hem and optional ear loops, lit like the face under it. The shading maps are rendered once per process on a
canonical grid and warped into each sample's face frame. Everything is numpy/OpenCV and deterministic given
the ``numpy.random.Generator``.

The predecessor anchored its mask on 96x112 coordinates, about 8 px left of centre (SPEC §8, §11).
"""

from __future__ import annotations

import functools
import math
from typing import TypeVar

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from oaml.constants import ARCFACE_TEMPLATE, FEATURE_MAP_SIZE

__all__ = ["MASK_STYLES", "apply_medical_mask", "catmull_rom_basis", "face_light", "medical_mask_outline",
           "seeded_mask", "visibility_grid"]

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)

MASK_STYLES: tuple[str, ...] = ("surgical_blue", "white", "black", "grey", "pink", "fabric")
"""Mask styles, drawn with probabilities 0.35, 0.15, 0.12, 0.1, 0.1 and 0.18."""

_STYLE_CDF = np.cumsum([0.35, 0.15, 0.12, 0.1, 0.1, 0.18])[:-1]
_BASE_BGR: dict[str, tuple[float, float, float]] = {
    "surgical_blue": (225.0, 195.0, 140.0),  # RGB (140, 195, 225)
    "white": (238.0, 240.0, 240.0),
    "black": (38.0, 36.0, 35.0),
    "grey": (150.0, 150.0, 150.0),
    "pink": (200.0, 175.0, 240.0),  # RGB (240, 175, 200)
}
_FABRIC_BGR = np.array([[120, 70, 30], [40, 40, 140], [60, 110, 60], [200, 200, 200], [30, 30, 30],
                        [90, 160, 220], [170, 120, 180], [50, 80, 110]], dtype=np.float32)
_FABRIC_PERIODS = (4.0, 5.5, 7.0, 8.5)  # pattern periods in pixels at the template's eye distance
_PLEATED = frozenset({"surgical_blue", "white", "pink", "grey"})
_SUBPIXEL_BITS = 4
_SUBPIXEL = float(1 << _SUBPIXEL_BITS)

Affine = tuple[float, float, float, float, float, float]
"""A 2x3 affine ``[[a, b, c], [d, e, f]]`` as six floats (tiny geometry is faster in plain Python)."""


@functools.cache
def catmull_rom_basis(count: int, samples: int) -> np.ndarray:
    """The ``(count * samples) x count`` matrix of a closed uniform Catmull-Rom curve (linear in its points)."""
    t = np.linspace(0, 1, samples, endpoint=False)
    weights = 0.5 * np.stack([-t + 2 * t ** 2 - t ** 3, 2 - 5 * t ** 2 + 3 * t ** 3,
                              t + 4 * t ** 2 - 3 * t ** 3, -t ** 2 + t ** 3], axis=1)  # p[i-1], p[i], p[i+1], p[i+2]
    basis = np.zeros((count * samples, count))
    for i in range(count):
        for j, offset in enumerate((-1, 0, 1, 2)):
            basis[i * samples:(i + 1) * samples, (i + offset) % count] += weights[:, j]
    return basis


_OUTLINE_POINTS, _OUTLINE_SAMPLES = 12, 6
_CURVE = catmull_rom_basis(_OUTLINE_POINTS, _OUTLINE_SAMPLES)
_LOOP_T = np.linspace(0.0, 1.0, 12)[:, None]
_BEZIER = np.hstack([(1 - _LOOP_T) ** 2, 2 * (1 - _LOOP_T) * _LOOP_T, _LOOP_T ** 2])  # quadratic Bezier weights
_LOOP_CORNERS = [i * _OUTLINE_SAMPLES for i in (3, 5, 9, 7)]  # right cheek, right jaw, left cheek, left jaw


def _frame(points: list[list[float]]) -> tuple[Affine, dict[str, float]]:
    """The face frame (x along the eye line, y down the face, origin at the eye centre) and the landmark
    coordinates in it, in pixels."""
    (lx, ly), (rx, ry), (nx, ny), (lmx, lmy), (rmx, rmy) = points
    ox, oy = (lx + rx) / 2, (ly + ry) / 2
    eye = math.hypot(rx - lx, ry - ly)
    if eye < 1e-3:
        raise ValueError(f"degenerate landmarks: both eyes at ({lx}, {ly})")
    ax, ay = (rx - lx) / eye, (ry - ly) / eye

    def local(px: float, py: float) -> tuple[float, float]:
        return (px - ox) * ax + (py - oy) * ay, (py - oy) * ax - (px - ox) * ay

    (nose_x, nose_y), (left_x, left_y), (right_x, right_y) = local(nx, ny), local(lmx, lmy), local(rmx, rmy)
    mouth_y = (left_y + right_y) / 2
    dims = {"eye": eye, "nose_x": nose_x, "nose_y": nose_y, "left_mouth": left_x, "right_mouth": right_x,
            "mouth_x": (left_x + right_x) / 2, "mouth_y": mouth_y, "lower": max(mouth_y - nose_y, 0.25 * eye)}
    return (ax, -ay, ox, ay, ax, oy), dims


def _control_points(dims: dict[str, float]) -> list[tuple[float, float]]:
    """Outline control points (x, y) in the face frame, clockwise from the nose bridge."""
    w, ny, mx, my, lower = (dims[k] for k in ("eye", "nose_y", "mouth_x", "mouth_y", "lower"))
    nx = min(max(dims["nose_x"], -0.3 * w), 0.3 * w)
    right = max(0.86 * w, dims["right_mouth"] + 0.3 * w)  # past the mouth corners, toward the cheeks
    left = min(-0.86 * w, dims["left_mouth"] - 0.3 * w)
    jaw = my + max(0.5 * lower, 0.27 * w)
    chin = my + max(1.05 * lower, 0.55 * w)  # below the chin, also for short nose-to-mouth projections
    return [(nx, 0.5 * ny),  # nose bridge: halfway between the eye line and the nose tip
            (min(nx + 0.3 * w, 0.45 * w), 0.58 * ny), (0.55 * w, 0.8 * ny), (right - 0.01 * w, ny + 0.1 * lower),
            (right, my), (mx + 0.7 * w, jaw), (mx, chin), (mx - 0.7 * w, jaw), (left, my),
            (left + 0.01 * w, ny + 0.1 * lower), (-0.55 * w, 0.8 * ny), (max(nx - 0.3 * w, -0.45 * w), 0.58 * ny)]


def _compose(outer: Affine, inner: Affine) -> Affine:
    a, b, c, d, e, f = outer
    p, q, r, s, t, u = inner
    return (a * p + b * s, a * q + b * t, a * r + b * u + c, d * p + e * s, d * q + e * t, d * r + e * u + f)


def _polygon(dims: dict[str, float], frame: Affine) -> np.ndarray:
    a, b, c, d, e, f = frame
    return (_CURVE @ np.array(_control_points(dims))) @ np.array([[a, d], [b, e]]) + (c, f)


def _worn_properly(polygon: np.ndarray, points: list[list[float]]) -> bool:
    """Nose tip and mouth corners inside (>= 1.5 / 3 px), both eyes outside (>= 4 px)."""
    contour = polygon.astype(np.float32)
    inside = [cv2.pointPolygonTest(contour, (x, y), True) for x, y in points]
    return inside[2] >= 1.5 and min(inside[3], inside[4]) >= 3.0 and max(inside[0], inside[1]) <= -4.0


def _sample_outline(landmarks: np.ndarray | None, rng: np.random.Generator | None, jitter: float = 3.0,
                    shift: float = 5.0, scale_range: tuple[float, float] = (0.95, 1.10),
                    max_rotation: float = 7.0) -> tuple[np.ndarray, Affine, dict[str, float]]:
    points = np.asarray(ARCFACE_TEMPLATE if landmarks is None else landmarks, np.float64).reshape(5, 2).tolist()
    if rng is None:
        frame, dims = _frame(points)
        return _polygon(dims, frame), frame, dims
    # Draw once (a fixed number of draws per sample), then shrink the perturbation until the mask is worn
    # properly on the true landmarks: extreme draws on short or turned faces would otherwise uncover the
    # nose or hide an eye, which no correctly worn mask does.
    draws = (2.0 * rng.random(14) - 1.0).tolist()  # 10 landmark jitters, rotation, scale, 2 shifts in [-1, 1)
    for strength in (1.0, 0.5, 0.25, 0.0):
        step = strength * jitter
        jittered = [[x + step * draws[2 * i], y + step * draws[2 * i + 1]] for i, (x, y) in enumerate(points)]
        frame, dims = _frame(jittered)
        unit_scale = (draws[11] + 1.0) / 2
        scale = 1.0 + strength * (scale_range[0] + unit_scale * (scale_range[1] - scale_range[0]) - 1.0)
        angle = math.radians(strength * max_rotation * draws[10])
        alpha, beta = scale * math.cos(angle), scale * math.sin(angle)
        px, py = jittered[2]  # rotate and scale about the (jittered) nose tip, as cv2.getRotationMatrix2D does
        similarity = (alpha, beta, (1 - alpha) * px - beta * py + strength * shift * draws[12],
                      -beta, alpha, beta * px + (1 - alpha) * py + strength * shift * draws[13])
        frame = _compose(similarity, frame)
        polygon = _polygon(dims, frame)
        if _worn_properly(polygon, points):
            break
    return polygon, frame, dims


def medical_mask_outline(landmarks: np.ndarray | None = None, rng: np.random.Generator | None = None, *,
                         jitter: float = 3.0, shift: float = 5.0, scale_range: tuple[float, float] = (0.95, 1.10),
                         max_rotation: float = 7.0) -> tuple[np.ndarray, np.ndarray]:
    """The mask polygon and the frame-to-image affine for one sample.

    Args:
        landmarks: ``5 x 2`` (x, y) points (eyes, nose, mouth corners); defaults to the ArcFace template.
        rng: source of the per-sample randomisation; ``None`` draws the unrandomised outline.
        jitter: per-landmark uniform jitter (px).
        shift: uniform shift of the whole mask (px).
        scale_range: uniform scale range about the nose tip.
        max_rotation: uniform rotation range (degrees) about the nose tip.

    Returns:
        ``(polygon, frame)``: ``M x 2`` image coordinates, and a ``2 x 3`` affine mapping face-frame
        coordinates (x along the eyes, y down, in pixels from the eye centre) to the image.
    """
    polygon, frame, _ = _sample_outline(landmarks, rng, jitter, shift, scale_range, max_rotation)
    return polygon, np.array(frame).reshape(2, 3)


# Canonical texture grid, in eye-distance units of the face frame: u across, v down from the eye line.
_TEX_PER_EYE, _TEX_U0, _TEX_V0 = 40.0, -1.4, -0.2
_TEX_SHAPE = (100, 112)  # v in [-0.2, 2.3), u in [-1.4, 1.4)
_SHADE_SCALE = 200.0  # shade 1.0 is stored as 200: room for highlights, 0.5 % steps


@functools.lru_cache(maxsize=None)
def _canonical_texture(kind: str, pattern: int = 0, period: float = 0.0) -> np.ndarray:
    """``(shade, shade * selector)`` as uint8 ``H x W x 2`` (scaled by 200) on the canonical grid, rendered
    once per process.

    ``kind`` is ``"pleated"`` (three folds, each a dark crease with a highlight above it), ``"plain"`` or
    ``"fabric"`` (with ``pattern`` 0-3: stripes, checks, dots, weave). All kinds get cylinder shading (the
    mask's sides turn away from the light) and a fine grain.
    """
    _, dims = _frame(ARCFACE_TEMPLATE.astype(np.float64).tolist())
    eye = dims["eye"]
    fx = (_TEX_U0 + np.arange(_TEX_SHAPE[1])[None, :] / _TEX_PER_EYE) * eye
    fy = (_TEX_V0 + np.arange(_TEX_SHAPE[0])[:, None] / _TEX_PER_EYE) * eye
    shade = 1.0 - 0.28 * np.clip(fx / (0.9 * eye), -1.0, 1.0) ** 2 + 0.0 * fy
    if kind == "pleated":
        top, bottom = 0.5 * dims["nose_y"], dims["mouth_y"] + dims["lower"]
        for frac in (0.3, 0.5, 0.7):
            fold = top + frac * (bottom - top)
            shade += (np.abs(fx) < 0.8 * eye) * (0.07 * np.exp(-(((fy - fold + 2.2) / 1.6) ** 2))
                                                 - 0.16 * np.exp(-(((fy - fold) / 1.3) ** 2)))
    shade += np.random.default_rng(len(kind) * 31 + pattern).normal(0.0, 0.015, size=shade.shape)
    select = np.zeros_like(shade)
    if kind == "fabric":
        if pattern == 0:  # stripes
            select = np.sin(fx * (2 * np.pi / period) + 0.15 * fy) > 0
        elif pattern == 1:  # checks
            select = (np.floor(fx / period) + np.floor(fy / period)) % 2 > 0
        elif pattern == 2:  # dots
            select = (np.mod(fx, period) - period / 2) ** 2 + (np.mod(fy, period) - period / 2) ** 2 < (period / 4) ** 2
        else:  # plain weave
            select = np.sin(fx * 2.2) * np.sin(fy * 2.2) > 0.2
    stacked = np.dstack([shade, shade * select]) * _SHADE_SCALE
    return np.clip(np.round(stacked), 0, 255).astype(np.uint8)


def _texture(style: str, rng: np.random.Generator, frame: Affine, eye: float,
             box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The canonical shading warped into ``box = (x0, y0, x1, y1)`` of the image, and its colour matrix.

    Returns:
        ``(shading, colours)``: uint8 ``h x w x 2`` (shade, shade * pattern) following the sample's face
        frame (so pleats and patterns take its scale and rotation), and the ``3 x 2`` matrix that turns it
        into BGR: ``colour * shade + (other - colour) * shade * pattern``.
    """
    if style == "fabric":
        first, second, period, pattern = (int(v) for v in rng.integers(0, (8, 7, 4, 4)))
        canonical = _canonical_texture("fabric", pattern, _FABRIC_PERIODS[period])
        colour, other = _FABRIC_BGR[(first + 1 + second) % 8], _FABRIC_BGR[first]
    else:
        colour = np.array(_BASE_BGR[style], np.float32) + rng.uniform(-10, 10, size=3).astype(np.float32)
        other = colour
        canonical = _canonical_texture("pleated" if style in _PLEATED else "plain")
    x0, y0, x1, y1 = box
    # canonical pixel (j, i) -> frame (eye * (u0 + j / k), eye * (v0 + i / k)) -> image -> box
    a, b, c, d, e, f = frame
    k = eye / _TEX_PER_EYE
    u0, v0 = eye * _TEX_U0, eye * _TEX_V0
    warp = np.array([[a * k, b * k, a * u0 + b * v0 + c - x0], [d * k, e * k, d * u0 + e * v0 + f - y0]])
    shading = cv2.warpAffine(canonical, warp, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)
    return shading, np.column_stack([colour, other - colour]) / _SHADE_SCALE


def face_light(region: np.ndarray, covered: np.ndarray) -> float:
    """How bright the face under an occluder is: a factor in [0.6, 1.15] that scales the occluder's colours.

    A dark photo gets a dark mask: BT.601 luma of the ``region`` pixels where the uint8 ``covered`` is non-zero
    (1.0 when nothing is covered).
    """
    if not cv2.countNonZero(covered):
        return 1.0
    blue, green, red, _ = cv2.mean(region, mask=covered)
    return min(max(0.55 + 0.45 * (0.114 * blue + 0.587 * green + 0.299 * red) / 128.0, 0.6), 1.15)


def _composite(region: np.ndarray, covered: np.ndarray, shading: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Paint the coloured shading over ``region`` where ``covered`` (in place), lit like the face under it.

    Returns:
        The mean BGR colour of the painted mask (for the hem).
    """
    if not cv2.countNonZero(covered):
        return colours[:, 0] * (0.85 * _SHADE_SCALE)
    layer = cv2.transform(shading, colours * face_light(region, covered))  # uint8 BGR, saturated
    region[...] = cv2.copyTo(layer, covered, region.copy())  # ~10x faster than np.copyto(where=...)
    return np.array(cv2.mean(layer, mask=covered)[:3])


def _draw_ear_loops(image: np.ndarray, visibility: np.ndarray, polygon: np.ndarray, frame: Affine,
                    colour: tuple[float, ...], eye: float, nose_y: float) -> None:
    """Thin loops from the mask's cheek and jaw corners to where the ears are (drawn in place)."""
    a, b, c, d, e, f = frame
    ears = [(a * x + b * 0.8 * nose_y + c, d * x + e * 0.8 * nose_y + f) for x in (1.45 * eye, -1.45 * eye)]
    lift = (-0.12 * eye * b, -0.12 * eye * e)  # the loops bow upward, toward the top of the ear
    corners = polygon[_LOOP_CORNERS].tolist()
    ends = [ears[0], ears[0], ears[1], ears[1]]
    controls = [((cx + ex) / 2 + lift[0], (cy + ey) / 2 + lift[1]) for (cx, cy), (ex, ey) in zip(corners, ends)]
    curves = _BEZIER @ np.array([corners, controls, ends]).transpose(1, 0, 2)  # 4 x 12 x 2
    points = list(np.round(curves * _SUBPIXEL).astype(np.int32))
    cv2.polylines(image, points, False, colour, 1, cv2.LINE_AA, _SUBPIXEL_BITS)
    cv2.polylines(visibility, points, False, 0.0, 1, cv2.LINE_8, _SUBPIXEL_BITS)


def apply_medical_mask(image: np.ndarray, rng: np.random.Generator, landmarks: np.ndarray | None = None, *,
                       style: str | None = None, ear_loops: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw a randomised synthetic medical mask on an aligned face.

    Args:
        image: ``H x W x 3`` uint8 BGR face (not modified).
        rng: the per-sample generator; the same generator state gives the same mask.
        landmarks: ``5 x 2`` landmarks in ``image`` coordinates; defaults to the ArcFace 112x112 template.
        style: one of :data:`MASK_STYLES`; drawn from ``rng`` when ``None``.
        ear_loops: draw ear loops; drawn from ``rng`` (p 0.5) when ``None``.

    Returns:
        ``(masked, visibility)``: the masked uint8 BGR image, and a float32 ``H x W`` map that is 1 where
        the face is visible and 0 where the mask (or a loop) covers it.

    Raises:
        ValueError: for an unknown ``style`` or an image that is not ``H x W x 3``.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {image.shape}")
    style_draw, loop_draw = rng.random(2).tolist()
    chosen = MASK_STYLES[int(np.searchsorted(_STYLE_CDF, style_draw, side="right"))] if style is None else style
    if chosen not in MASK_STYLES:
        raise ValueError(f"unknown mask style {chosen!r}; expected one of {MASK_STYLES}")
    polygon, frame, dims = _sample_outline(landmarks, rng)
    height, width = image.shape[:2]
    scaled = np.round(polygon * _SUBPIXEL).astype(np.int32)
    covered = np.zeros((height, width), np.uint8)
    cv2.fillPoly(covered, [scaled], 1, cv2.LINE_8, _SUBPIXEL_BITS)
    visibility = np.subtract(1.0, covered, dtype=np.float32)
    out = image.copy()
    left, top, box_w, box_h = cv2.boundingRect(scaled)
    x0, y0 = max((left >> _SUBPIXEL_BITS) - 1, 0), max((top >> _SUBPIXEL_BITS) - 1, 0)
    x1 = min(((left + box_w) >> _SUBPIXEL_BITS) + 2, width)
    y1 = min(((top + box_h) >> _SUBPIXEL_BITS) + 2, height)
    if x1 > x0 and y1 > y0:
        # Shade and paint only inside the mask's bounding box (about a quarter of the crop).
        shading, colours = _texture(chosen, rng, frame, dims["eye"], (x0, y0, x1, y1))
        mean_colour = _composite(out[y0:y1, x0:x1], covered[y0:y1, x0:x1], shading, colours)
        # The anti-aliased hem smooths the painted edge, which lies on the outline.
        cv2.polylines(out, [scaled], True, tuple(float(c) for c in 0.8 * mean_colour), 1, cv2.LINE_AA,
                      _SUBPIXEL_BITS)
    if (loop_draw < 0.5) if ear_loops is None else ear_loops:
        loop_colour = (40.0, 40.0, 40.0) if chosen == "black" else (235.0, 235.0, 235.0)
        _draw_ear_loops(out, visibility, polygon, frame, loop_colour, dims["eye"], dims["nose_y"])
    return out, visibility


def seeded_mask(image: np.ndarray, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic mask of image ``index`` under ``seed``: :func:`apply_medical_mask` driven by
    ``numpy.random.default_rng((seed, index))``.

    Every masked protocol (validation, ``oaml eval --mask-probes``, ``oaml study``) draws its masks here, so
    the same image gets the same mask everywhere, independent of batch size, workers and the other images.
    """
    return apply_medical_mask(image, np.random.default_rng((seed, index)))


def visibility_grid(visibility: ArrayOrTensor, cells: int = FEATURE_MAP_SIZE) -> ArrayOrTensor:
    """Visible fraction of each cell of a per-pixel visibility map (SPEC §4): the occlusion head's target.

    The one implementation of the 7x7 target, used by training (tensors), the study's head calibration and
    the tests (arrays). For a 112 x 112 map and ``cells=7`` each output is the mean over one 16 x 16 cell, i.e.
    the exact visible fraction (no point sampling).

    Args:
        visibility: ``H x W``, ``B x H x W`` or ``B x 1 x H x W`` map, values in [0, 1] (1 = visible); a numpy
            array or a tensor, any real or integer dtype.
        cells: grid side (7 for a 112x112 input: 16x16-pixel cells).

    Returns:
        The same kind (array or tensor) and layout, with ``cells x cells`` in place of ``H x W``; float32.

    Raises:
        ValueError: for another layout, or if H or W is not a multiple of ``cells``.
    """
    is_array = isinstance(visibility, np.ndarray)
    maps = torch.from_numpy(np.ascontiguousarray(visibility)) if is_array else visibility
    shape = tuple(maps.shape)
    if not (maps.dim() in (2, 3) or (maps.dim() == 4 and shape[1] == 1)):
        raise ValueError(f"visibility must be H x W, B x H x W or B x 1 x H x W, got shape {shape}")
    height, width = shape[-2:]
    if height % cells or width % cells:
        raise ValueError(f"visibility map {height}x{width} is not divisible into {cells}x{cells} cells")
    maps = maps.to(torch.float32) if maps.dtype != torch.float32 else maps
    grid = F.adaptive_avg_pool2d(maps.reshape(-1, 1, height, width), cells).reshape(*shape[:-2], cells, cells)
    return grid.numpy() if is_array else grid
