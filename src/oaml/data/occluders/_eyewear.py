"""Sunglasses and clear glasses on the eyes of the face frame (SPEC §13.2).

Both are a pair of lenses of one of six shapes (round, oval, rectangle, wayfarer, aviator, cat-eye) centred
just outside and below each (jittered) eye point, joined by a bridge (aviators also get a brow bar), with
temple arms running out toward the ears. Sizes are in face-frame units; the lenses' horizontal extent is
scaled by the frame's inter-ocular distance, so on a turned face the pair is foreshortened with the eyes.

- ``sunglasses``: tinted lenses (black, grey, brown, green, blue, pink, silver or gold mirror) with an opacity
  of 0.8-0.95, a vertical gradient and a specular streak, in a frame 1.2-2.6 px thick (at 112 x 112). The
  lenses' blend weight is >= 0.5 wherever they cover more than 0.63 of a pixel, so the eyes are hidden under
  the lenses and the frame.
- ``glasses``: clear lenses, which are not painted; only the frame (1.6-3.5 px thick, black, tortoiseshell,
  gold, silver, navy, red or grey) hides anything.
"""

from __future__ import annotations

import functools

import numpy as np

from oaml.data.occluders._api import (
    DEFAULT_JITTER,
    OCCLUDERS,
    LandmarkOccluder,
    Occluder,
)
from oaml.data.occluders._fabric import pick, pick_colour
from oaml.data.occluders._frame import (
    Box,
    Canvas,
    FaceFrame,
    bounding_box,
    coverage,
    grain,
    paint_shaded,
    smooth_closed,
    stroke,
)

__all__ = ["LENS_SHAPES", "eyewear_polygons"]

LENS_SHAPES: tuple[str, ...] = ("round", "oval", "rectangle", "wayfarer", "aviator", "cat_eye")
"""Lens outlines of :func:`eyewear_polygons`."""

# Right-lens control points in units of the lens half-width; +x points to the temple, +y down.
_LENS_POINTS: dict[str, list[tuple[float, float]]] = {
    "round": [(np.cos(a), 0.92 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)],
    "oval": [(np.cos(a), 0.7 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)],
    "rectangle": [(-1.0, -0.58), (0.0, -0.62), (1.0, -0.6), (1.03, 0.0), (0.95, 0.55), (0.0, 0.6), (-0.95, 0.55),
                  (-1.02, 0.0)],
    "wayfarer": [(-1.0, -0.62), (0.0, -0.7), (1.05, -0.72), (0.92, 0.2), (0.6, 0.6), (-0.3, 0.62), (-0.85, 0.48),
                 (-1.0, 0.0)],
    "aviator": [(-0.95, -0.62), (0.0, -0.72), (0.9, -0.7), (1.05, -0.25), (0.9, 0.35), (0.45, 0.8), (-0.2, 0.85),
                (-0.7, 0.55), (-1.0, 0.0)],
    "cat_eye": [(-1.0, -0.45), (0.1, -0.62), (1.1, -0.82), (0.95, 0.05), (0.55, 0.55), (-0.4, 0.58), (-0.9, 0.35)],
}
_TINTS_BGR = np.array([[22, 22, 22], [48, 48, 50], [30, 55, 85], [45, 66, 48], [105, 62, 30], [115, 90, 165],
                       [150, 130, 110], [50, 120, 170]], np.float32)
_TINT_WEIGHTS = (0.3, 0.18, 0.16, 0.1, 0.08, 0.04, 0.08, 0.06)  # ..., silver mirror, gold mirror
_FRAME_BGR = np.array([[18, 18, 18], [35, 55, 95], [80, 165, 205], [185, 185, 185], [90, 40, 20], [40, 40, 150],
                       [120, 120, 120]], np.float32)
_FRAME_WEIGHTS = (0.4, 0.18, 0.12, 0.12, 0.08, 0.04, 0.06)  # black, tortoise, gold, silver, navy, red, grey

Parts = dict[str, list[np.ndarray]]
"""Named polygon lists: ``lenses``, ``rims`` and ``bars``."""


@functools.cache
def _lens(shape: str) -> tuple[np.ndarray, np.ndarray]:
    """The closed right-lens outline of ``shape`` in half-width units and its (central difference) tangents,
    computed once per process."""
    outline = smooth_closed(np.array(_LENS_POINTS[shape]), 5)
    return outline, np.roll(outline, -1, axis=0) - np.roll(outline, 1, axis=0)


def _lens_and_rim(shape: str, centre: np.ndarray, scale: np.ndarray, thickness: float) -> tuple[np.ndarray, ...]:
    """The lens outline scaled by ``scale`` (per axis, may mirror) about ``centre``, and that outline moved
    outward along its normals by ``thickness``."""
    outline, tangent = _lens(shape)
    lens = centre + outline * scale
    tangent = tangent * scale
    normal = np.column_stack([tangent[:, 1], -tangent[:, 0]])
    normal /= np.maximum(np.hypot(normal[:, 0], normal[:, 1]), 1e-9)[:, None]
    if float(np.sum((lens - centre) * normal)) < 0:  # the normals point inward
        normal = -normal
    return lens, lens + thickness * normal


def eyewear_polygons(frame: FaceFrame, shape: str, half_width: float, thickness: float,
                     brow_bar: bool) -> Parts:
    """Frame-unit polygons of a pair of glasses: ``lenses`` (2), ``rims`` (2 outer outlines) and ``bars``
    (bridge, optional brow bar, two temples).

    Args:
        frame: the face frame.
        shape: one of :data:`LENS_SHAPES`.
        half_width: lens half-width in units of the inter-ocular distance.
        thickness: rim thickness in frame units.
        brow_bar: add a straight bar over the bridge (aviators).
    """
    d = frame.eye / frame.scale
    lenses, rims, tops = [], [], []
    for eye, sign in ((frame.points[1], 1.0), (frame.points[0], -1.0)):
        centre = np.array([eye[0] + sign * 0.06 * d, eye[1] + 0.04])
        lens, rim = _lens_and_rim(shape, centre, half_width * np.array([sign * d, 1.0]), thickness)
        lenses.append(lens)
        rims.append(rim)
        inner = lens[np.argmin(sign * lens[:, 0] + 0.6 * lens[:, 1])]  # inner-upper point
        outer = lens[np.argmax(sign * lens[:, 0] - 0.5 * lens[:, 1])]  # outer-upper point (the hinge)
        tops.append((inner, outer, float(lens[:, 1].min())))
    (inner_r, hinge_r, top_r), (inner_l, hinge_l, top_l) = tops
    t = np.linspace(0.0, 1.0, 9)[:, None]
    lift = np.array([0.0, -0.06])
    control = (inner_r + inner_l) / 2 + lift
    bridge = (1 - t) ** 2 * inner_r + 2 * (1 - t) * t * control + t ** 2 * inner_l
    bars = [stroke(bridge, 1.1 * thickness)]
    if brow_bar:
        level = min(top_r, top_l) + 0.5 * thickness
        bars.append(stroke(np.array([[inner_r[0] + 0.15 * d, level], [inner_l[0] - 0.15 * d, level]]), thickness))
    nose_u = float(frame.nose[0])
    for hinge, sign in ((hinge_r, 1.0), (hinge_l, -1.0)):
        # The temple runs back to the ear; on a turned face the far one is mostly hidden by the head.
        length = 0.5 * d * min(max(1.0 - 2.5 * max(sign * nose_u, 0.0) / d, 0.15), 1.0)
        end = np.array([hinge[0] + sign * length, hinge[1] + 0.03])
        bars.append(stroke(np.vstack([hinge - np.array([sign * thickness, 0.0]), end]),
                           np.array([1.2, 0.8]) * thickness))
    return {"lenses": lenses, "rims": rims, "bars": bars}


def _region(canvas: Canvas, frame: FaceFrame, parts: Parts) -> tuple[Box, Parts] | None:
    image_parts = {key: [frame.to_image(p) for p in polygons] for key, polygons in parts.items()}
    box = bounding_box(np.vstack([p for polygons in image_parts.values() for p in polygons]), canvas.shape)
    return None if box is None else (box, image_parts)


def _paint_frame(canvas: Canvas, frame: FaceFrame, box: Box, parts: Parts, colour: np.ndarray,
                 tortoise: bool) -> None:
    """The rims and bars, opaque, with a little shading (and a mottle for tortoiseshell)."""
    mask = coverage(box, parts["rims"] + parts["bars"], holes=parts["lenses"])
    u, v = frame.grid(box)
    shade = 1.0 + 0.12 * np.clip(-(v - 0.04) * 4.0, -1.0, 1.0) + 0.04 * grain(box, canvas.shape)
    if tortoise:  # amber and dark-brown mottle
        mottle = np.sin(u * 23.0 + 2.0 * np.sin(v * 17.0)) * np.sin(v * 19.0 - 1.5 * np.sin(u * 13.0))
        shade = shade * (0.8 + 0.45 * np.clip(mottle * 2.0, 0.0, 1.0))
    paint_shaded(canvas, box, mask, colour, shade.astype(np.float32), lit=False)


def _paint_sunglasses(canvas: Canvas, frame: FaceFrame, rng: np.random.Generator) -> None:
    shape = LENS_SHAPES[int(rng.integers(0, len(LENS_SHAPES)))]
    tint_index = pick(rng, _TINT_WEIGHTS)
    tint = pick_colour(rng, _TINTS_BGR[tint_index][None], 6.0)
    frame_colour = pick_colour(rng, _FRAME_BGR[[0, 0, 2, 3, 0, 1]], 6.0)  # black (1/2), gold, silver, tortoise
    size, thick, opacity, streak = rng.random(4).tolist()
    half_width = 0.37 + 0.07 * size
    parts = eyewear_polygons(frame, shape, half_width, 0.035 + 0.04 * thick, shape == "aviator")
    region = _region(canvas, frame, parts)
    if region is None:
        return
    box, image_parts = region
    lens = coverage(box, image_parts["lenses"]).astype(np.float32) * np.float32(1 / 255)
    u, v = frame.grid(box)
    rel = v - 0.04  # below (+) / above (-) the lens centres
    weight = np.clip(0.8 + 0.15 * opacity - 0.12 * rel, 0.78, 0.97)
    mirror = tint_index >= 6
    across = (np.abs(u - float(frame.nose[0])) - 0.55 * frame.eye / frame.scale) / half_width  # lens-local x
    gloss = np.exp(-((across + 1.2 * rel / half_width - 0.6 * streak + 0.1) / 0.3) ** 2) * (rel < 0.05)
    colour = tint * (1.0 - (0.9 if mirror else 0.45) * rel)[..., None] + (38.0 * gloss)[..., None]
    canvas.paint(box, lens * weight.astype(np.float32), np.clip(colour, 0, 255))
    _paint_frame(canvas, frame, box, image_parts, frame_colour, tortoise=False)


def _paint_glasses(canvas: Canvas, frame: FaceFrame, rng: np.random.Generator) -> None:
    shape = LENS_SHAPES[int(rng.integers(0, len(LENS_SHAPES)))]
    colour_index = pick(rng, _FRAME_WEIGHTS)
    colour = pick_colour(rng, _FRAME_BGR[colour_index][None], 8.0)
    size, thick = rng.random(2).tolist()
    parts = eyewear_polygons(frame, shape, 0.33 + 0.07 * size, 0.045 + 0.055 * thick, shape == "aviator")
    region = _region(canvas, frame, parts)
    if region is not None:
        box, image_parts = region
        _paint_frame(canvas, frame, box, image_parts, colour, tortoise=colour_index == 1)


@OCCLUDERS.register("sunglasses")
def sunglasses(jitter: float = DEFAULT_JITTER) -> Occluder:
    """Tinted sunglasses (see the module docstring)."""
    return LandmarkOccluder("sunglasses", _paint_sunglasses, jitter)


@OCCLUDERS.register("glasses")
def glasses(jitter: float = DEFAULT_JITTER) -> Occluder:
    """Clear glasses: only the frame hides (see the module docstring)."""
    return LandmarkOccluder("glasses", _paint_glasses, jitter)
