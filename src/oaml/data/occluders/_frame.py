"""The face frame every occluder is placed in, and the canvas it paints on (SPEC §4, §8, §13.2).

The frame is built from the five landmarks: the origin is the eye centre, ``u`` runs along the eye line (image
left to right), ``v`` points down the face, perpendicular to it, and one unit is the face scale in pixels.
The face scale is the inter-ocular distance, raised for turned faces (whose eye distance is foreshortened)
to 0.9 x the eye-to-mouth height, rescaled by the template's ratio of the two; on the template itself it is
the eye distance (35.2 px at 112 x 112). The per-sample landmark jitter is drawn in frame units along the
frame's own axes, so an occluder of an image and of its similarity-warped copy drawn from the same
generator state agree exactly after warping (up to rasterisation).

The canvas composites layers "over" each other with their blend weights (shape coverage times opacity) and
keeps the occluder's total weight per pixel, ``1 - prod(1 - alpha)``; a pixel is hidden when that weight is
>= 0.5 (SPEC §13.2), so anti-aliased edge pixels with a smaller weight are visible.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from oaml.constants import ARCFACE_TEMPLATE, FACE_SIZE
from oaml.data.masks import catmull_rom_basis, face_light

__all__ = [
    "JITTER_DRAWS",
    "Box",
    "Canvas",
    "FaceFrame",
    "bounding_box",
    "check_image",
    "coverage",
    "default_landmarks",
    "grain",
    "paint_shaded",
    "sample_frame",
    "smooth_closed",
    "stroke",
]

Box = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)``: a region of the image, ``x1``/``y1`` exclusive."""

JITTER_DRAWS = 10
"""Uniform draws every landmark occluder takes first (two per landmark), also when its jitter is 0."""

_TEMPLATE = ARCFACE_TEMPLATE.astype(np.float64)
_TEMPLATE_EYE = float(np.hypot(*(_TEMPLATE[1] - _TEMPLATE[0])))
_TEMPLATE_HEIGHT = float((_TEMPLATE[3:].mean(0) - _TEMPLATE[:2].mean(0))[1])  # eye line to mouth line, px
_SUBPIXEL_BITS = 4
_SUBPIXEL = float(1 << _SUBPIXEL_BITS)
_SUPERSAMPLE = 4  # coverage is rendered on a 4 x 4 sub-pixel grid


def check_image(image: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``image`` is an ``H x W x 3`` uint8 array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be an H x W x 3 uint8 array, got shape {shape} and dtype "
                         f"{getattr(image, 'dtype', type(image).__name__)}")


def default_landmarks(height: int, width: int) -> np.ndarray:
    """The ArcFace template (SPEC §8) scaled to a ``height x width`` image: ``5 x 2`` float64."""
    return _TEMPLATE * np.array([width / FACE_SIZE, height / FACE_SIZE])


@dataclass(frozen=True)
class FaceFrame:
    """A face frame: ``image = origin + scale * (u * x_axis + v * y_axis)``.

    Attributes:
        matrix: ``2 x 3`` affine from frame units to image pixels.
        scale: pixels per frame unit (the face scale).
        eye: inter-ocular distance in pixels.
        points: the five (jittered) landmarks in frame units, ArcFace order (eyes, nose, mouth corners).
    """

    matrix: np.ndarray
    scale: float
    eye: float
    points: np.ndarray

    @property
    def nose(self) -> np.ndarray:
        """The nose tip ``(u, v)``."""
        return self.points[2]

    @property
    def mouth(self) -> np.ndarray:
        """The mouth centre ``(u, v)`` (mean of the corners)."""
        return (self.points[3] + self.points[4]) / 2

    def to_image(self, uv: np.ndarray) -> np.ndarray:
        """Map ``N x 2`` frame points to image pixels."""
        uv = np.asarray(uv, np.float64)
        return uv @ self.matrix[:, :2].T + self.matrix[:, 2]

    def compose(self, local: np.ndarray) -> np.ndarray:
        """The ``2 x 3`` affine image <- ``local`` coordinates, for ``local``: ``2 x 3`` frame <- local."""
        translation = np.array([[0.0, 0.0, self.matrix[0, 2]], [0.0, 0.0, self.matrix[1, 2]]])
        return self.matrix[:, :2] @ local + translation

    def grid(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """Frame coordinates ``(u, v)`` of the pixel centres of ``box``, each ``h x w`` float32."""
        x0, y0, x1, y1 = box
        (a, b, ox), (c, d, oy) = self.matrix
        det = a * d - b * c
        xs = np.arange(x0, x1, dtype=np.float32) - np.float32(ox)
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(oy)
        u = xs * np.float32(d / det) + ys * np.float32(-b / det)
        v = xs * np.float32(-c / det) + ys * np.float32(a / det)
        return u, v


def _frame(points: np.ndarray) -> FaceFrame:
    left, right = points[0], points[1]
    axis = right - left
    eye = float(np.hypot(*axis))
    if eye < 1e-3:
        raise ValueError(f"landmarks are degenerate: both eyes at ({left[0]:.2f}, {left[1]:.2f})")
    ex = axis / eye
    ey = np.array([-ex[1], ex[0]])
    origin = (left + right) / 2
    height = float((points[3:].mean(0) - origin) @ ey)
    scale = max(eye, 0.9 * height * _TEMPLATE_EYE / _TEMPLATE_HEIGHT)
    matrix = np.column_stack([scale * ex, scale * ey, origin])
    local = (points - origin) @ np.column_stack([ex, ey]) / scale
    return FaceFrame(matrix, scale, eye, local)


def sample_frame(landmarks: np.ndarray | None, shape: tuple[int, ...], rng: np.random.Generator,
                 jitter: float) -> FaceFrame:
    """The face frame of one sample, with landmark jitter.

    Args:
        landmarks: ``5 x 2`` (x, y) landmarks in image pixels; ``None`` uses :func:`default_landmarks`.
        shape: the image shape ``(H, W, ...)``.
        rng: draws :data:`JITTER_DRAWS` uniforms in [-1, 1) (always, so a jitter of 0 keeps the stream).
        jitter: the largest per-landmark offset along each frame axis, in pixels of the 112 x 112 template
            (scaled with the inter-ocular distance, so that the eye line turns by the same few degrees on any
            face).

    Raises:
        ValueError: if ``landmarks`` is not ``5 x 2`` and finite, or both eyes coincide.
    """
    if landmarks is None:
        points = default_landmarks(shape[0], shape[1])
    else:
        points = np.asarray(landmarks, np.float64)
        if points.shape != (5, 2) or not np.isfinite(points).all():
            raise ValueError(f"landmarks must be a finite 5 x 2 array of (x, y), got shape {points.shape}")
    draws = rng.random(JITTER_DRAWS) * 2.0 - 1.0
    frame = _frame(points)
    if jitter > 0:
        offsets = draws.reshape(5, 2) * (jitter * frame.eye / _TEMPLATE_EYE)
        points = points + offsets @ (frame.matrix[:, :2] / frame.scale).T
        frame = _frame(points)
    return frame


def bounding_box(points: np.ndarray, shape: tuple[int, ...], pad: int = 2) -> Box | None:
    """The pixel box around image ``points`` (``N x 2``), padded and clipped; ``None`` if it is empty."""
    x0 = max(math.floor(float(points[:, 0].min())) - pad, 0)
    y0 = max(math.floor(float(points[:, 1].min())) - pad, 0)
    x1 = min(math.ceil(float(points[:, 0].max())) + pad + 1, shape[1])
    y1 = min(math.ceil(float(points[:, 1].max())) + pad + 1, shape[0])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def coverage(box: Box, polygons: list[np.ndarray], holes: list[np.ndarray | None] | None = None) -> np.ndarray:
    """Area coverage (uint8, 255 = covered) of the union of image ``polygons`` minus ``holes`` in ``box``.

    The polygons are filled without anti-aliasing on a 4x supersampled grid, which is then averaged, so a pixel's
    value is the fraction of its area inside the shape (in steps of 1/16); OpenCV's own anti-aliased fill
    widens a shape by about half a pixel. Each polygon is filled on its own (``cv2.fillPoly`` fills the
    overlaps of one call by parity), and hole ``i`` is cut right after polygon ``i``, so a ring is
    ``[outer], holes=[inner]``.
    """
    x0, y0, x1, y1 = box
    pad = _SUPERSAMPLE  # fillPoly clamps spans that lie past the canvas onto its border: fill a margin, cut it
    big = np.zeros(((y1 - y0) * _SUPERSAMPLE + 2 * pad, (x1 - x0) * _SUPERSAMPLE + 2 * pad), np.uint8)
    offset = np.array([x0, y0], np.float64)
    holes = holes or []

    def fixed(polygon: np.ndarray) -> list[np.ndarray]:
        # Sub-pixel k of pixel x has its centre at x - 0.5 + (k + 0.5) / 4, i.e. big coordinate 4 x + 1.5.
        return [np.round(((polygon - offset) * _SUPERSAMPLE + 1.5 + pad) * _SUBPIXEL).astype(np.int32)]

    for i, polygon in enumerate(polygons):
        cv2.fillPoly(big, fixed(polygon), 255, cv2.LINE_8, _SUBPIXEL_BITS)
        if i < len(holes) and holes[i] is not None:
            cv2.fillPoly(big, fixed(holes[i]), 0, cv2.LINE_8, _SUBPIXEL_BITS)
    return cv2.resize(big[pad:-pad, pad:-pad], (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)


def stroke(points: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """The outline of a thick open polyline (``N x 2``, N >= 2) of ``width`` (scalar or per point)."""
    points = np.asarray(points, np.float64)
    tangent = np.empty_like(points)
    tangent[1:-1] = points[2:] - points[:-2]
    tangent[0], tangent[-1] = points[1] - points[0], points[-1] - points[-2]
    tangent /= np.maximum(np.hypot(tangent[:, 0], tangent[:, 1]), 1e-9)[:, None]
    normal = np.column_stack([-tangent[:, 1], tangent[:, 0]]) * (np.asarray(width, np.float64) / 2).reshape(-1, 1)
    return np.vstack([points + normal, (points - normal)[::-1]])


def smooth_closed(points: np.ndarray, samples: int = 6) -> np.ndarray:
    """A closed Catmull-Rom curve through ``points`` (``N x 2``), ``samples`` points per span."""
    points = np.asarray(points, np.float64)
    return catmull_rom_basis(len(points), samples) @ points


@functools.lru_cache(maxsize=8)
def _grain_field(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(20240613).normal(0.0, 1.0, size=(height, width)).astype(np.float32)


def grain(box: Box, shape: tuple[int, ...]) -> np.ndarray:
    """A fixed unit-variance noise field (rendered once per process and image size), cut to ``box``."""
    x0, y0, x1, y1 = box
    return _grain_field(int(shape[0]), int(shape[1]))[y0:y1, x0:x1]


class Canvas:
    """Composites occluder layers over a copy of an image and tracks the occluder's total blend weight.

    Args:
        image: ``H x W x 3`` uint8 BGR; never modified.
    """

    def __init__(self, image: np.ndarray) -> None:
        self.source = image
        self.shape = image.shape
        self._pixels: np.ndarray | None = None
        self._weight: np.ndarray | None = None

    def paint(self, box: Box, alpha: np.ndarray, colour: np.ndarray | tuple[float, float, float]) -> None:
        """Blend ``colour`` (``h x w x 3`` or one BGR triple) over ``box`` with weight ``alpha`` (``h x w``, 0-1)."""
        if self._pixels is None or self._weight is None:
            self._pixels = self.source.astype(np.float32)
            self._weight = np.zeros(self.shape[:2], np.float32)
        x0, y0, x1, y1 = box
        region = self._pixels[y0:y1, x0:x1]
        colour = np.asarray(colour, np.float32)
        region += (colour - region) * alpha[..., None]
        weight = self._weight[y0:y1, x0:x1]
        weight += (1.0 - weight) * alpha

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image, visibility)``: the occluded uint8 image and the float32 map (0 where the weight is >= 0.5)."""
        if self._pixels is None or self._weight is None:
            return self.source.copy(), np.ones(self.shape[:2], np.float32)
        image = np.clip(np.rint(self._pixels), 0, 255).astype(np.uint8)
        return image, (self._weight < 0.5).astype(np.float32)


def paint_shaded(canvas: Canvas, box: Box, mask: np.ndarray, field: np.ndarray | tuple[float, float, float],
                 shade: np.ndarray, lit: bool = True) -> None:
    """Paint ``field * shade`` (BGR, ``h x w x 3`` or a triple; shade ``h x w``) where ``mask`` (uint8 coverage).

    With ``lit`` the colours are scaled by :func:`face_light` of the covered face.
    """
    x0, y0, x1, y1 = box
    light = face_light(canvas.source[y0:y1, x0:x1], (mask >= 128).view(np.uint8)) if lit else 1.0
    colour = np.asarray(field, np.float32) * (shade * np.float32(light))[..., None]
    np.clip(colour, 0.0, 255.0, out=colour)
    canvas.paint(box, mask.astype(np.float32) * np.float32(1 / 255), colour)
