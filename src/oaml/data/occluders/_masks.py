"""Face masks besides the surgical one: KN95/N95 respirators and cloth masks (SPEC §8, §13.2).

Both are outlines in the jittered face frame (``u`` along the eye line, ``v`` down, one unit = the face
scale), anchored on the nose tip, the mouth corners and the mouth centre, so they follow turned faces; on a
turned face the far side is pulled in toward the nose.

- ``kn95``: the folded respirator seen from the front. A pointed top on the nose bridge (0.42 of the way
  from the eye line to the nose tip), straight-ish edges out to the cheeks, a point below the chin, and a
  vertical centre seam between the two panels, which are lit differently (the fold faces the light on one
  side). No pleats; a darker welded border; white, grey, black or a colour; optional thin ear loops.
- ``cloth_mask``: rounder and larger than the surgical mask (top 0.38 of the way to the nose tip, sides 0.5
  beyond the mouth corners, a round bottom below the chin), in a fabric pattern (:mod:`._fabric`) with
  cylinder shading, soft wrinkles, a hem and, for most, a vertical centre seam.

``mask`` (the surgical mask) is :func:`oaml.data.masks.apply_medical_mask` itself (see :mod:`._api`).
"""

from __future__ import annotations

import cv2
import numpy as np

from oaml.data.occluders._api import (
    DEFAULT_JITTER,
    OCCLUDERS,
    LandmarkOccluder,
    Occluder,
)
from oaml.data.occluders._fabric import (
    FABRIC_PATTERNS,
    fabric_colour,
    pick,
    pick_colour,
)
from oaml.data.occluders._frame import (
    Box,
    Canvas,
    FaceFrame,
    bounding_box,
    coverage,
    grain,
    paint_shaded,
)

__all__ = ["cloth_mask_outline", "kn95_outline"]

_KN95_BGR = np.array([[242, 242, 240], [232, 236, 238], [175, 175, 172], [95, 95, 95], [38, 38, 40],
                      [200, 180, 245], [235, 205, 160], [110, 60, 35], [150, 195, 215], [190, 150, 190]], np.float32)
_KN95_WEIGHTS = (0.3, 0.15, 0.1, 0.08, 0.17, 0.06, 0.05, 0.04, 0.03, 0.02)  # white, off-white, grey, ..., colours
_CLOTH_BGR = np.array([[110, 60, 30], [40, 40, 40], [150, 150, 150], [150, 110, 70], [50, 50, 150],
                       [60, 40, 110], [60, 100, 80], [140, 170, 190], [190, 160, 230], [230, 230, 230],
                       [80, 140, 200], [120, 80, 140]], np.float32)
_PATTERN_WEIGHTS = (0.25, 0.15, 0.12, 0.12, 0.12, 0.08, 0.08, 0.08)  # in FABRIC_PATTERNS order
_CLOTH_SAMPLES = 64
_CLOTH_ANGLES = np.linspace(0.0, 2 * np.pi, _CLOTH_SAMPLES, endpoint=False)  # v down: angle > pi is the top


def _extents(frame: FaceFrame, margin: float, reach: float) -> tuple[float, float]:
    """Left and right edge ``u``: ``margin`` past the mouth corners and at least ``reach`` from the centre,
    both pulled in on the side a turned face's nose points to (down to a quarter of the margin), but always
    0.15 past the nose tip (which a near-profile face shows at its edge)."""
    p, nose_u = frame.points, float(frame.nose[0])
    # On a turned face the far cheek's contour comes close to the mouth corner on that side.
    far_right, far_left = min(max(1.0 - 2.5 * nose_u, 0.25), 1.0), min(max(1.0 + 2.5 * nose_u, 0.25), 1.0)
    right = max(float(p[4, 0]) + margin * far_right, reach - 1.2 * max(nose_u, 0.0), nose_u + 0.15)
    left = min(float(p[3, 0]) - margin * far_left, -reach + 1.2 * max(-nose_u, 0.0), nose_u - 0.15)
    return left, right


def _landmarks(frame: FaceFrame) -> tuple[float, float, float, float, float]:
    nose_u, nose_v = (float(x) for x in frame.nose)
    mouth_u, mouth_v = (float(x) for x in frame.mouth)
    return min(max(0.8 * nose_u, -0.45), 0.45), nose_v, mouth_u, mouth_v, max(mouth_v - nose_v, 0.25)


def _bezier_chain(corners: np.ndarray, bulges: tuple[float, ...], samples: int = 8) -> np.ndarray:
    """A closed outline through ``corners`` whose edges bow outward by ``bulge`` x their length (sharp corners)."""
    centre = corners.mean(axis=0)
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[:, None]
    pieces = []
    for i, bulge in enumerate(bulges):
        start, end = corners[i], corners[(i + 1) % len(corners)]
        edge = end - start
        normal = np.array([-edge[1], edge[0]])
        mid = (start + end) / 2
        if normal @ (mid - centre) < 0:
            normal = -normal
        control = mid + bulge * normal
        pieces.append((1 - t) ** 2 * start + 2 * (1 - t) * t * control + t ** 2 * end)
    return np.vstack(pieces)


def kn95_outline(frame: FaceFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(outline, corners)`` of the KN95 in frame units; corners: top, right cheek, right low, chin, left low,
    left cheek."""
    top_u, nose_v, mouth_u, mouth_v, lower = _landmarks(frame)
    left, right = _extents(frame, 0.45, 0.95)
    corners = np.array([[top_u, 0.42 * nose_v], [right, 0.85 * nose_v + 0.05],
                        [0.92 * right + 0.08 * mouth_u, mouth_v + 0.15 * lower],
                        [mouth_u, mouth_v + max(1.05 * lower, 0.58)],
                        [0.92 * left + 0.08 * mouth_u, mouth_v + 0.15 * lower], [left, 0.85 * nose_v + 0.05]])
    return _bezier_chain(corners, (0.04, 0.08, 0.06, 0.06, 0.08, 0.04)), corners


def cloth_mask_outline(frame: FaceFrame) -> np.ndarray:
    """The cloth mask outline in frame units: a superellipse (exponent 2.6) from 0.62 of the way to the nose tip
    down to below the chin, between :func:`_extents` (0.5 past the mouth corners), whose top is raised to 0.38
    of the way to the nose tip over the nose bridge. ``_CLOTH_SAMPLES`` points, clockwise from the image right.
    """
    top_u, nose_v, _, mouth_v, lower = _landmarks(frame)
    left, right = _extents(frame, 0.5, 1.02)
    top, bottom = 0.62 * nose_v, mouth_v + max(1.15 * lower, 0.62)
    centre_u, centre_v = (left + right) / 2, (top + bottom) / 2
    cos, sin = np.cos(_CLOTH_ANGLES), np.sin(_CLOTH_ANGLES)
    u = centre_u + np.where(cos > 0, right - centre_u, centre_u - left) * np.sign(cos) * np.abs(cos) ** (2 / 2.6)
    v = centre_v + (bottom - centre_v) * np.sign(sin) * np.abs(sin) ** (2 / 2.6)
    bridge = np.exp(-(((u - top_u) / 0.4) ** 2)) * (sin < 0) * np.abs(sin) ** 2
    return np.column_stack([u, v - 0.24 * nose_v * bridge])


def _seam_distance(u: np.ndarray, v: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Signed distance (frame units, positive to the right) of each pixel from the line ``top``-``bottom``."""
    du, dv = bottom - top
    length = float(np.hypot(du, dv))
    return ((u - top[0]) * dv - (v - top[1]) * du) / length


def _hem(mask: np.ndarray, width_px: float) -> np.ndarray:
    """1 inside a band of ``width_px`` along the inner edge of ``mask``, fading to 0 (float32)."""
    inside = (mask >= 128).astype(np.uint8)
    distance = cv2.distanceTransform(cv2.copyMakeBorder(inside, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0),
                                     cv2.DIST_L2, 3)[1:-1, 1:-1]
    return np.clip(1.0 - distance / max(width_px, 1.0), 0.0, 1.0)


def _ear_loops(canvas: Canvas, frame: FaceFrame, starts: np.ndarray, colour: np.ndarray, width: int) -> None:
    """Loops from the mask's side corners (``4 x 2`` frame points: right high, right low, left high, left low)
    to the ears, as anti-aliased lines of ``width`` pixels."""
    ears = np.array([[max(starts[0, 0] + 0.45, 1.4), 0.45], [min(starts[2, 0] - 0.45, -1.4), 0.45]])
    t = np.linspace(0.0, 1.0, 10)[:, None]
    curves = []
    nose_u = float(frame.nose[0])
    for start, ear, side in zip(starts, ears[[0, 0, 1, 1]], (1.0, 1.0, -1.0, -1.0)):
        if side * nose_u > 0.1:  # a turned face hides the far ear and its loop
            continue
        control = (start + ear) / 2 + np.array([0.0, -0.12])
        curves.append(frame.to_image((1 - t) ** 2 * start + 2 * (1 - t) * t * control + t ** 2 * ear))
    box = bounding_box(np.vstack(curves), canvas.shape, pad=width + 1) if curves else None
    if box is None:
        return
    mask = np.zeros((box[3] - box[1], box[2] - box[0]), np.uint8)
    offset = np.array(box[:2], np.float64)
    lines = [np.round((c - offset) * 16).astype(np.int32) for c in curves]
    cv2.polylines(mask, lines, False, 255, width, cv2.LINE_AA, 4)
    canvas.paint(box, mask.astype(np.float32) * np.float32(1 / 255), colour)


def _outline_region(canvas: Canvas, frame: FaceFrame, outline: np.ndarray) -> tuple[Box, np.ndarray] | None:
    polygon = frame.to_image(outline)
    box = bounding_box(polygon, canvas.shape)
    return None if box is None else (box, coverage(box, [polygon]))


def _paint_kn95(canvas: Canvas, frame: FaceFrame, rng: np.random.Generator) -> None:
    colour = pick_colour(rng, _KN95_BGR[pick(rng, _KN95_WEIGHTS)][None], spread=6.0)
    side, strength, loops, angle = rng.random(4).tolist()
    outline, corners = kn95_outline(frame)
    region = _outline_region(canvas, frame, outline)
    if region is not None:
        box, mask = region
        u, v = frame.grid(box)
        light_side = 1.0 if side < 0.5 else -1.0
        s = _seam_distance(u, v, corners[0], corners[3])
        half_width = np.where(s > 0, corners[1, 0] - corners[0, 0], corners[0, 0] - corners[5, 0])
        shade = (1.0 + light_side * (0.05 + 0.08 * strength) * np.tanh(s / 0.04)
                 - 0.2 * np.minimum(np.abs(s) / half_width, 1.0) ** 2
                 - 0.22 * np.exp(-(s / 0.018) ** 2) + 0.07 * np.exp(-((s - 0.04 * light_side) / 0.025) ** 2)
                 + 0.06 * (np.cos(2 * np.pi * angle) * u + np.sin(2 * np.pi * angle) * (v - 1.0)))
        shade -= 0.07 * _hem(mask, 0.07 * frame.scale)
        shade += 0.015 * grain(box, canvas.shape)
        paint_shaded(canvas, box, mask, colour, shade.astype(np.float32))
    if loops < 0.5:
        width = max(round(0.035 * frame.scale), 1)  # 1 px at 112 x 112, thicker on larger faces
        _ear_loops(canvas, frame, corners[[1, 2, 5, 4]], 0.92 * colour, width)


def _paint_cloth(canvas: Canvas, frame: FaceFrame, rng: np.random.Generator) -> None:
    pattern = FABRIC_PATTERNS[pick(rng, _PATTERN_WEIGHTS)]
    colours = np.stack([pick_colour(rng, _CLOTH_BGR, 12.0) for _ in range(3)])
    period, seam, phase, angle = rng.random(4).tolist()
    outline = cloth_mask_outline(frame)
    region = _outline_region(canvas, frame, outline)
    if region is not None:
        box, mask = region
        u, v = frame.grid(box)
        field, relief = fabric_colour(pattern, u, v, colours, 0.14 + 0.12 * period, rng, frame, box)
        bottom, top = outline[_CLOTH_SAMPLES // 4], outline[3 * _CLOTH_SAMPLES // 4]
        half_width = max(float(outline[:, 0].max() - outline[:, 0].min()) / 2, 0.5)
        centre_v = (top[1] + bottom[1]) / 2
        shade = (1.0 - 0.26 * np.minimum(((u - (top[0] + bottom[0]) / 2) / half_width) ** 2, 1.0)
                 - 0.1 * np.minimum(((v - centre_v) / (bottom[1] - centre_v)) ** 2, 1.0)
                 + 0.035 * np.sin(2 * np.pi * (3.2 * v + 0.5 * u * u + phase))
                 + 0.05 * (np.cos(2 * np.pi * angle) * u + np.sin(2 * np.pi * angle) * (v - 1.0)))
        if seam < 0.65:
            s = _seam_distance(u, v, top, bottom)
            shade += -0.2 * np.exp(-(s / 0.02) ** 2) + 0.05 * np.tanh(s / 0.05)
        shade -= 0.08 * _hem(mask, 0.06 * frame.scale)
        shade = shade * relief + 0.02 * grain(box, canvas.shape)
        paint_shaded(canvas, box, mask, field, shade.astype(np.float32))


@OCCLUDERS.register("kn95")
def kn95(jitter: float = DEFAULT_JITTER) -> Occluder:
    """The KN95/N95 respirator (see the module docstring)."""
    return LandmarkOccluder("kn95", _paint_kn95, jitter)


@OCCLUDERS.register("cloth_mask")
def cloth_mask(jitter: float = DEFAULT_JITTER) -> Occluder:
    """The cloth mask (see the module docstring)."""
    return LandmarkOccluder("cloth_mask", _paint_cloth, jitter)
