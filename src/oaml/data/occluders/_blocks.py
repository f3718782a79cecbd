"""OCFR-2022-style landmark blocks and random rectangles (SPEC §13.2).

Every block is filled, with probability 1/2 each, with one solid colour (uniform over the 24-bit BGR cube)
or with per-pixel uniform noise, both drawn from the sample's generator after the landmark jitter.

Block geometry, in the jittered face frame with ``d`` the inter-ocular distance (sizes scale with it, and the
boxes turn with the eye line):

- ``eyes``: both eye points, 0.45 d beyond each eye along the eye line, 0.3 d above and below it;
- ``nose``: 0.3 d either side of the nose tip, from 0.4 d above it to 0.2 d below it;
- ``mouth``: 0.25 d beyond each mouth corner, from 0.25 d above the higher corner to 0.3 d below the lower;
- ``upper_half`` / ``lower_half``: every pixel above / below the line through the midpoints of each eye and
  the mouth corner under it, i.e. halfway between the eye line and the mouth line;
- ``left_half`` / ``right_half``: every pixel on the image-left / image-right side (the side of the first /
  second eye landmark) of the line through the nose tip perpendicular to the eye line.

``rect<p>`` (``1 <= p <= 90``) hides a rectangle of p % of the aligned crop's area: its aspect ratio is
log-uniform in [1/2, 2] (narrowed so that it fits), its position uniform inside the crop, both in the
template's coordinates mapped onto the face by the least-squares similarity of the template to the landmarks
(the alignment of SPEC §8), so it is exactly p % of an aligned 112 x 112 image. A rectangle's position is
random anyway, so it takes no landmark jitter.
"""

from __future__ import annotations

import math

import numpy as np

from oaml.constants import ARCFACE_TEMPLATE, FACE_SIZE
from oaml.data.landmarks import similarity_transform, transform_points
from oaml.data.occluders._api import (
    DEFAULT_JITTER,
    OCCLUDERS,
    LandmarkOccluder,
    Occluder,
    Painter,
    register_family,
)
from oaml.data.occluders._frame import (
    Box,
    Canvas,
    FaceFrame,
    bounding_box,
    check_image,
    coverage,
    default_landmarks,
)

__all__ = ["BLOCK_NAMES", "RECT_PERCENTS", "RectOccluder", "block_polygon"]

BLOCK_NAMES: tuple[str, ...] = ("eyes", "nose", "mouth", "upper_half", "lower_half", "left_half", "right_half")
"""The landmark blocks (SPEC §13.2)."""

RECT_PERCENTS: tuple[int, ...] = (10, 25, 40)
"""The ``rect<p>`` members registered by name (any 1-90 builds)."""

_FAR = 50.0  # frame units: far enough past any image edge for the half-plane polygons


def _box(u0: float, v0: float, u1: float, v1: float) -> np.ndarray:
    return np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]])


def _half_plane(point: np.ndarray, direction: np.ndarray, side: np.ndarray) -> np.ndarray:
    """A huge quadrilateral: the half-plane bounded by the line ``point + t direction``, on ``side``."""
    direction = direction / np.hypot(*direction)
    along, away = _FAR * direction, _FAR * side / np.hypot(*side)
    return np.array([point - along, point + along, point + along + away, point - along + away])


def block_polygon(name: str, frame: FaceFrame) -> np.ndarray:
    """The polygon of block ``name`` in frame units (see the module docstring).

    Raises:
        ValueError: for a name not in :data:`BLOCK_NAMES`.
    """
    p, d = frame.points, frame.eye / frame.scale
    if name == "eyes":
        return _box(p[0, 0] - 0.45 * d, -0.3 * d, p[1, 0] + 0.45 * d, 0.3 * d)
    if name == "nose":
        return _box(p[2, 0] - 0.3 * d, p[2, 1] - 0.4 * d, p[2, 0] + 0.3 * d, p[2, 1] + 0.2 * d)
    if name == "mouth":
        return _box(p[3, 0] - 0.25 * d, min(p[3, 1], p[4, 1]) - 0.25 * d, p[4, 0] + 0.25 * d,
                    max(p[3, 1], p[4, 1]) + 0.3 * d)
    if name in ("upper_half", "lower_half"):
        left, right = (p[0] + p[3]) / 2, (p[1] + p[4]) / 2
        direction = right - left
        down = np.array([-direction[1], direction[0]])  # u to v: points down the face
        return _half_plane(left, direction, -down if name == "upper_half" else down)
    if name in ("left_half", "right_half"):
        return _half_plane(p[2], np.array([0.0, 1.0]), np.array([-1.0 if name == "left_half" else 1.0, 0.0]))
    raise ValueError(f"unknown block {name!r}; expected one of {', '.join(BLOCK_NAMES)}")


def _fill(canvas: Canvas, box: Box, alpha: np.ndarray, rng: np.random.Generator) -> None:
    """Solid colour or uniform noise (p 1/2 each), drawn from ``rng``."""
    if rng.random() < 0.5:
        colour: np.ndarray = rng.integers(0, 256, size=3).astype(np.float32)
    else:
        colour = rng.integers(0, 256, size=(box[3] - box[1], box[2] - box[0], 3), dtype=np.uint8).astype(np.float32)
    canvas.paint(box, alpha, colour)


def _paint_polygon(canvas: Canvas, polygon: np.ndarray, rng: np.random.Generator) -> None:
    box = bounding_box(polygon, canvas.shape, pad=1)
    clipped = None if box is None else _clip(polygon, box)
    if box is None or clipped is None:
        return
    alpha = coverage(box, [clipped]).astype(np.float32) * np.float32(1 / 255)
    _fill(canvas, box, alpha, rng)


def _clip(polygon: np.ndarray, box: Box) -> np.ndarray | None:
    """Clip a convex polygon to ``box`` grown by 2 px (Sutherland-Hodgman), keeping fixed-point coordinates small."""
    x0, y0, x1, y1 = box[0] - 2.0, box[1] - 2.0, box[2] + 2.0, box[3] + 2.0
    points = [tuple(p) for p in polygon.tolist()]
    for axis, bound, keep_low in ((0, x0, False), (0, x1, True), (1, y0, False), (1, y1, True)):
        out: list[tuple[float, float]] = []
        for i, current in enumerate(points):
            previous = points[i - 1]
            inside_c = current[axis] <= bound if keep_low else current[axis] >= bound
            inside_p = previous[axis] <= bound if keep_low else previous[axis] >= bound
            if inside_c != inside_p:
                t = (bound - previous[axis]) / (current[axis] - previous[axis])
                out.append((previous[0] + t * (current[0] - previous[0]),
                            previous[1] + t * (current[1] - previous[1])))
            if inside_c:
                out.append(current)
        points = out
        if not points:
            return None
    return np.array(points)


def _block_painter(name: str) -> Painter:
    def paint(canvas: Canvas, frame: FaceFrame, rng: np.random.Generator) -> None:
        _paint_polygon(canvas, frame.to_image(block_polygon(name, frame)), rng)

    return paint


def _register_block(name: str) -> None:
    painter = _block_painter(name)

    def factory(jitter: float = DEFAULT_JITTER) -> Occluder:
        """The landmark block (see the module docstring), filled with a solid colour or noise."""
        return LandmarkOccluder(name, painter, jitter)

    OCCLUDERS.register(name)(factory)


for _name in BLOCK_NAMES:
    _register_block(_name)


class RectOccluder:
    """``rect<percent>``: a random rectangle of ``percent`` % of the aligned crop (see the module docstring).

    Args:
        percent: the area fraction in percent, 1-90.

    Raises:
        ValueError: if ``percent`` is not an integer in [1, 90].
    """

    def __init__(self, percent: int) -> None:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 90:
            raise ValueError(f"percent must be an integer in [1, 90], got {percent!r}")
        self.percent = percent

    def __call__(self, image: np.ndarray, landmarks: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        check_image(image)
        points = default_landmarks(*image.shape[:2]) if landmarks is None else np.asarray(landmarks, np.float64)
        if points.shape != (5, 2) or not np.isfinite(points).all():
            raise ValueError(f"landmarks must be a finite 5 x 2 array of (x, y), got shape {points.shape}")
        to_image = similarity_transform(ARCFACE_TEMPLATE, points)
        fraction, side = self.percent / 100.0, float(FACE_SIZE)
        low, high = math.log(max(0.5, fraction)), math.log(min(2.0, 1.0 / fraction))
        ratio_draw, x_draw, y_draw = rng.random(3).tolist()
        ratio = math.exp(low + ratio_draw * (high - low))
        width = min(math.sqrt(fraction * ratio) * side, side)
        height = min(fraction * side * side / width, side)
        x0, y0 = x_draw * (side - width), y_draw * (side - height)
        corners = transform_points(to_image, _box(x0, y0, x0 + width, y0 + height))
        canvas = Canvas(image)
        _paint_polygon(canvas, corners, rng)
        return canvas.result()

    def __repr__(self) -> str:
        return f"RectOccluder({self.percent})"


def _rect(percent: int) -> Occluder:
    return RectOccluder(percent)


register_family("rect", 1, 90, _rect)
for _percent in RECT_PERCENTS:
    OCCLUDERS.register(f"rect{_percent}")(lambda percent=_percent: RectOccluder(percent))
