"""A scarf pulled up over the lower face (SPEC §13.2).

The top edge runs across the whole image in the jittered face frame, crossing the face centre between 0.15 and
0.85 of the way from the nose tip down to the mouth line (so the mouth is covered and the nose tip is not); it
rises toward the cheeks, where the scarf wraps round the face, and waves a little. Everything below the edge,
down to the bottom of the image, is covered. The fabric is knitted (ribs and stitches), plaid, striped,
dotted, gingham, camouflage or plain wool (:mod:`._fabric`), with a rolled rim along the top edge (a highlight
over a dark crease), sagging folds, cylinder shading and grain, lit like the face.
"""
from __future__ import annotations

import math

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
    Canvas,
    FaceFrame,
    bounding_box,
    coverage,
    grain,
    paint_shaded,
)

__all__ = ["scarf_outline"]

_SCARF_BGR = np.array([[40, 40, 150], [30, 30, 100], [120, 70, 30], [60, 40, 20], [40, 40, 40], [140, 140, 140],
                       [210, 215, 220], [50, 100, 60], [60, 130, 190], [90, 150, 220], [130, 80, 130],
                       [80, 120, 160]], np.float32)
_PATTERN_WEIGHTS = (0.18, 0.14, 0.08, 0.04, 0.0, 0.04, 0.22, 0.3)  # FABRIC_PATTERNS order; no florals
_U = np.linspace(-3.0, 3.0, 61)


def scarf_outline(frame: FaceFrame, level: float, rise: float, wave: float, phase: float,
                  far: float = 6.0) -> np.ndarray:
    """The covered polygon in frame units: the top edge (``len(_U)`` points, then flat out to ``±far``), then
    down to ``v = far``.

    Args:
        frame: the face frame.
        level: 0-1, where the top edge crosses the face centre: from 0.15 (0) to 0.85 (1) of the way from
            the nose tip to the mouth line.
        rise: 0-1, how far the edge rises toward the cheeks (0.05-0.2 units at 1 unit from the centre).
        wave: 0-1, the waviness amplitude (up to 0.04 units).
        phase: 0-1, the wave's phase.
        far: frame units beyond which nothing is in the image.
    """
    nose_v, mouth_v = float(frame.nose[1]), float(frame.mouth[1])
    centre = float(frame.mouth[0])
    lower = max(mouth_v - nose_v, 0.25)
    top = nose_v + (0.15 + 0.7 * level) * lower
    rel = _U - centre
    edge = top - (0.05 + 0.15 * rise) * np.minimum(rel * rel, 2.0) + 0.04 * wave * np.sin(
        2 * math.pi * (rel / 0.7 + phase))
    edge = np.maximum(edge, nose_v + 0.08 - 0.25 * np.minimum(np.abs(rel), 1.5) ** 2)  # never over the nose tip
    far = max(far, 4.0)
    return np.vstack([np.column_stack([_U, edge]), [[far, edge[-1]], [far, far], [-far, far], [-far, edge[0]]]])


def _paint_scarf(canvas: Canvas, frame: FaceFrame, rng: np.random.Generator) -> None:
    pattern = FABRIC_PATTERNS[pick(rng, _PATTERN_WEIGHTS)]
    colours = np.stack([pick_colour(rng, _SCARF_BGR, 12.0) for _ in range(3)])
    level, rise, wave, phase, period, folds, angle = rng.random(7).tolist()
    outline = scarf_outline(frame, level, rise, wave, phase, 2.0 * max(canvas.shape[:2]) / frame.scale)
    polygon = frame.to_image(outline)
    box = bounding_box(polygon, canvas.shape)
    if box is None:
        return
    mask = coverage(box, [polygon])
    u, v = frame.grid(box)
    field, relief = fabric_colour(pattern, u, v, colours, 0.16 + 0.14 * period, rng, frame, box)
    edge = np.interp(u, _U, outline[: len(_U), 1]).astype(np.float32)
    below = v - edge  # frame units under the top edge
    sag = v - 0.25 * (u - float(frame.mouth[0])) ** 2
    shade = (1.0 + 0.1 * np.exp(-((below - 0.06) / 0.045) ** 2) - 0.2 * np.exp(-((below - 0.16) / 0.035) ** 2)
             + (0.05 + 0.04 * folds) * np.sin(2 * math.pi * (sag / 0.22 + folds))
             - 0.22 * np.minimum(((u - float(frame.mouth[0])) / 1.3) ** 2, 1.0)
             + 0.05 * (math.cos(2 * math.pi * angle) * u + math.sin(2 * math.pi * angle) * v))
    shade = shade * relief + 0.03 * grain(box, canvas.shape)
    paint_shaded(canvas, box, mask, field, shade.astype(np.float32))


@OCCLUDERS.register("scarf")
def scarf(jitter: float = DEFAULT_JITTER) -> Occluder:
    """A scarf over the mouth and chin (see the module docstring)."""
    return LandmarkOccluder("scarf", _paint_scarf, jitter)
