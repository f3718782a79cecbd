"""A procedural hand over the mouth or the eyes (SPEC §13.2).

The hand is seen from the back: a forearm, a palm, four fingers with rounded tips, knuckle creases and nails,
and a thumb (spread out or tucked along the index finger). Four variants (fingers together or slightly
spread, thumb out or tucked) are rendered once per process on a canonical grid, in hand units (palm width 1,
fingers along +x): coverage, a shade map (each part rounded by its own distance transform, so the fingers are
separated by dark seams) and a nail map. Each sample warps one variant into the image with a similarity
(optionally mirrored, which moves the thumb to the other side) placed in the jittered face frame, and colours
it with a skin tone from a palette of eight, lit like the face under it.

- ``hand_mouth``: the palm or the knuckles over the mouth centre, fingers pointing across the face toward
  either side and up to 30 degrees upward, the forearm leaving the image on the other side, the thumb spread
  out only when it points down; palm width 1.1-1.3 face units.
- ``hand_eyes``: the fingers across both eyes, the palm over one of them, the thumb tucked; palm width
  1.05-1.25.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import cv2
import numpy as np

from oaml.data.occluders._api import (
    DEFAULT_JITTER,
    OCCLUDERS,
    LandmarkOccluder,
    Occluder,
)
from oaml.data.occluders._fabric import pick_colour
from oaml.data.masks import face_light
from oaml.data.occluders._frame import Canvas, FaceFrame, bounding_box

__all__ = ["SKIN_BGR", "hand_sprite"]

SKIN_BGR = np.array([[196, 224, 255], [167, 194, 241], [138, 172, 224], [96, 134, 198], [68, 102, 161],
                     [52, 78, 120], [38, 55, 85], [160, 190, 234]], np.float32)
"""The eight skin tones of the hands (BGR), from very light to very dark, plus a light olive."""

_PER_UNIT = 48.0  # sprite pixels per hand unit
_SUPER = 4  # supersampling of the sprite rendering
_X0, _X1, _Y0, _Y1 = -2.6, 2.25, -1.0, 1.0  # sprite extent in hand units (a long forearm leaves the image)
_SHADE_SCALE = 200.0
_NAIL_BGR = np.array([190, 195, 235], np.float32)


class Finger(NamedTuple):
    """A finger (or the thumb) in hand units."""

    base: np.ndarray
    direction: np.ndarray
    width: float
    length: float


# Fingers: knuckle (x, y), width, length, spread angle (degrees at full spread); index to little.
_FINGERS = (((0.98, -0.365), 0.25, 0.95, -3.0), ((1.03, -0.12), 0.26, 1.05, -0.5),
            ((1.0, 0.125), 0.25, 0.98, 2.0), ((0.9, 0.36), 0.215, 0.78, 5.0))


def _to_super(points: np.ndarray) -> np.ndarray:
    scale = _PER_UNIT * _SUPER
    return np.round((np.asarray(points) - (_X0, _Y0)) * scale * 16).astype(np.int32)


def _capsule(shape: tuple[int, int], base: np.ndarray, direction: np.ndarray, width: float,
             length: float) -> np.ndarray:
    """A tapered finger (uint8 mask at sprite supersampling) from ``base`` along ``direction``."""
    normal = np.array([-direction[1], direction[0]])
    tip = base + direction * (length - 0.46 * width)
    polygon = np.array([base - 0.5 * width * normal, tip - 0.46 * width * normal,
                        tip + 0.46 * width * normal, base + 0.5 * width * normal])
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [_to_super(polygon)], 255, cv2.LINE_AA, 4)
    cv2.circle(mask, tuple(int(c) for c in _to_super(tip)), int(0.46 * width * _PER_UNIT * _SUPER * 16), 255, -1,
               cv2.LINE_AA, 4)
    cv2.fillPoly(mask, [_to_super(np.array([base - 0.5 * width * normal - 0.2 * direction,
                                            base + 0.5 * width * normal - 0.2 * direction,
                                            base + 0.5 * width * normal, base - 0.5 * width * normal]))],
                 255, cv2.LINE_AA, 4)
    return mask


def _rounded(mask: np.ndarray, radius: float) -> np.ndarray:
    """A shade in [0.8, 1] that rises from the part's edge to its middle (``radius`` in hand units)."""
    distance = cv2.distanceTransform((mask > 127).astype(np.uint8), cv2.DIST_L2, 3)
    depth = np.clip(distance / (radius * _PER_UNIT * _SUPER), 0.0, 1.0)
    return 0.8 + 0.2 * np.sqrt(depth)


def _parts(spread: bool, tucked: bool) -> list[tuple[np.ndarray, float, Finger | None]]:
    """``(mask, rounding radius, finger geometry or None)`` of every part, back to front."""
    shape = (int((_Y1 - _Y0) * _PER_UNIT * _SUPER), int((_X1 - _X0) * _PER_UNIT * _SUPER))
    arm = np.array([[-2.7, -0.5], [-0.6, -0.41], [0.05, -0.38], [0.05, 0.38], [-0.6, 0.42], [-2.7, 0.52]])
    palm = np.array([[0.0, -0.38], [0.3, -0.48], [0.85, -0.5], [1.05, -0.46], [1.1, 0.0], [0.98, 0.47],
                     [0.75, 0.5], [0.2, 0.45], [0.0, 0.38]])
    parts: list[tuple[np.ndarray, float, Finger | None]] = []
    for polygon, radius in ((arm, 0.4), (palm, 0.35)):
        mask = np.zeros(shape, np.uint8)
        cv2.fillPoly(mask, [_to_super(polygon)], 255, cv2.LINE_AA, 4)
        parts.append((mask, radius, None))
    thumb_angle, thumb_base = (-12.0, (0.4, -0.42)) if tucked else (-42.0, (0.3, -0.4))
    fingers = [(np.array(thumb_base), 0.3, 0.78, thumb_angle)]
    fingers += [(np.array(base), width, length, angle * (1.0 if spread else 0.0))
                for base, width, length, angle in _FINGERS]
    for base, width, length, angle in fingers:
        direction = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
        geometry = Finger(base, direction, width, length)
        parts.append((_capsule(shape, base, direction, width, length), 0.5 * width, geometry))
    return parts


def _creases(shade: np.ndarray, nail: np.ndarray, geometry: Finger, mask: np.ndarray) -> None:
    """Knuckle creases (dark arcs) and the nail (lighter, with a rim) of one finger, in place."""
    base, direction, width, length = geometry
    normal = np.array([-direction[1], direction[0]])
    layer = np.zeros_like(mask)
    for frac, depth in ((0.4, 0.08), (0.68, 0.06)):
        centre = base + direction * (frac * length)
        arc = np.array([centre + normal * (s * 0.38 * width) - direction * (0.03 * (s * s) * width)
                        for s in np.linspace(-1.0, 1.0, 7)])
        cv2.polylines(layer, [_to_super(arc)], False, 255, max(int(0.025 * _PER_UNIT * _SUPER), 1), cv2.LINE_AA, 4)
        shade -= depth * (layer.astype(np.float32) / 255.0) * (mask > 0)
        layer[...] = 0
    centre = base + direction * (length - 0.46 * width - 0.01)
    axes = (int(0.12 * length * _PER_UNIT * _SUPER * 16), int(0.3 * width * _PER_UNIT * _SUPER * 16))
    angle = math.degrees(math.atan2(direction[1], direction[0]))
    cv2.ellipse(layer, tuple(int(c) for c in _to_super(centre)), axes, angle, 0, 360, 255, -1, cv2.LINE_AA, 4)
    nail[...] = np.maximum(nail, layer.astype(np.float32) / 255.0 * (mask > 127))
    cv2.ellipse(shade, tuple(int(c) for c in _to_super(centre)), axes, angle, 0, 360, 0.9, 2, cv2.LINE_AA, 4)


@functools.cache
def hand_sprite(spread: bool, tucked: bool) -> np.ndarray:
    """The canonical hand: uint8 ``H x W x 3`` (coverage, shade x 200, nail), rendered once per process.

    Pixel ``(col, row)`` is the hand point ``(x0 + col / k, y0 + row / k)`` with ``k`` = 48 per palm width.
    """
    parts = _parts(spread, tucked)
    alpha = np.zeros(parts[0][0].shape, np.float32)
    shade = np.ones_like(alpha)
    nail = np.zeros_like(alpha)
    for mask, radius, geometry in parts:
        weight = mask.astype(np.float32) / 255.0
        part_shade = _rounded(mask, radius)
        if geometry is not None:
            _creases(part_shade, nail, geometry, mask)
        shade = shade + (part_shade - shade) * weight
        alpha = np.maximum(alpha, weight)
    knuckles = np.zeros(alpha.shape, np.uint8)
    for (x, y), width, _, _ in _FINGERS:
        cv2.circle(knuckles, tuple(int(c) for c in _to_super(np.array([x + 0.04, y]))),
                   int(0.09 * _PER_UNIT * _SUPER * 16), 255, -1, cv2.LINE_AA, 4)
    shade += 0.08 * cv2.GaussianBlur(knuckles.astype(np.float32) / 255.0, (0, 0), 0.05 * _PER_UNIT * _SUPER)
    stacked = np.dstack([alpha * 255.0, shade * _SHADE_SCALE, nail * 255.0])
    small = cv2.resize(stacked, (stacked.shape[1] // _SUPER, stacked.shape[0] // _SUPER),
                       interpolation=cv2.INTER_AREA)
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


def _paint_hand(canvas: Canvas, frame: FaceFrame, rng: np.random.Generator, anchor: np.ndarray,
                hand_point: tuple[float, float], angle: float, size: float, mirror: bool, variant: int) -> None:
    """Warp the hand so that ``hand_point`` lands on ``anchor`` (frame units), fingers at ``angle`` (radians)."""
    sprite = hand_sprite(bool(variant & 1), bool(variant & 2))
    skin = pick_colour(rng, SKIN_BGR, 8.0)
    light_angle, light_strength = rng.random(2).tolist()
    cos, sin = math.cos(angle) * size, math.sin(angle) * size
    flip = -1.0 if mirror else 1.0
    rotation = np.array([[cos, -sin * flip], [sin, cos * flip]])  # hand -> frame
    grid = np.array([[1.0 / _PER_UNIT, 0.0, _X0 - hand_point[0]], [0.0, 1.0 / _PER_UNIT, _Y0 - hand_point[1]]])
    to_frame = np.column_stack([rotation @ grid[:, :2], rotation @ grid[:, 2] + anchor])
    to_image = frame.compose(to_frame)
    height, width = sprite.shape[:2]
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], np.float64) @ to_image.T
    box = bounding_box(corners, canvas.shape)
    if box is None:
        return
    x0, y0, x1, y1 = box
    shifted = to_image - np.array([[0.0, 0.0, x0], [0.0, 0.0, y0]])
    warped = cv2.warpAffine(sprite, shifted, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float32)
    # Enlarged, the sprite's soft edge would widen: steepen it about 0.5 (which keeps the hidden region) back
    # to about one image pixel.
    steep = max(float(np.sqrt(abs(np.linalg.det(to_image[:, :2])))), 1.0)
    alpha = np.clip((warped[..., 0] * np.float32(1 / 255) - 0.5) * np.float32(steep) + 0.5, 0.0, 1.0)
    u, v = frame.grid(box)
    direction = 2 * math.pi * light_angle
    gradient = (0.1 * light_strength) * (math.cos(direction) * u + math.sin(direction) * v)
    light = face_light(canvas.source[y0:y1, x0:x1], (warped[..., 0] >= 128).astype(np.uint8))
    shade = (warped[..., 1] * np.float32(1 / _SHADE_SCALE) + gradient) * np.float32(light)
    nail = warped[..., 2:3] * np.float32(0.4 / 255)
    colour = skin * shade[..., None]
    colour += (_NAIL_BGR * np.float32(light) - colour) * nail
    canvas.paint(box, alpha, np.clip(colour, 0, 255))


def _paint_hand_mouth(canvas: Canvas, frame: FaceFrame, rng: np.random.Generator) -> None:
    side, tilt, along, size, mirror, variant = rng.random(6).tolist()
    direction = 0.0 if side < 0.5 else math.pi
    angle = direction + (1.0 if side < 0.5 else -1.0) * math.radians(-30.0 + 35.0 * tilt)
    anchor = frame.mouth - np.array([0.0, 0.04])
    thumb_up = (-1.0 if mirror < 0.5 else 1.0) * math.cos(angle) > 0  # the thumb side faces the eyes
    # A thumb spread out upward would reach into an eye: then it is tucked.
    _paint_hand(canvas, frame, rng, anchor, (0.7 + 0.6 * along, 0.0), angle, 1.1 + 0.2 * size, mirror < 0.5,
                int(variant * 4) | (2 if thumb_up else 0))


def _paint_hand_eyes(canvas: Canvas, frame: FaceFrame, rng: np.random.Generator) -> None:
    side, tilt, along, size, mirror, variant = rng.random(6).tolist()
    direction = 0.0 if side < 0.5 else math.pi
    angle = direction + (1.0 if side < 0.5 else -1.0) * math.radians(-28.0 + 28.0 * tilt)
    anchor = np.array([0.0, 0.1 * along - 0.05])
    # The thumb stays tucked: spread out it would reach down to the mouth.
    _paint_hand(canvas, frame, rng, anchor, (1.2 + 0.25 * along, 0.0), angle, 1.05 + 0.2 * size, mirror < 0.5,
                2 + int(variant * 2))


@OCCLUDERS.register("hand_mouth")
def hand_mouth(jitter: float = DEFAULT_JITTER) -> Occluder:
    """A hand over the mouth (see the module docstring)."""
    return LandmarkOccluder("hand_mouth", _paint_hand_mouth, jitter)


@OCCLUDERS.register("hand_eyes")
def hand_eyes(jitter: float = DEFAULT_JITTER) -> Occluder:
    """A hand over the eyes (see the module docstring)."""
    return LandmarkOccluder("hand_eyes", _paint_hand_eyes, jitter)
