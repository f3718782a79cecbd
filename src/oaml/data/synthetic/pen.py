"""The :class:`Pen`: canonical-frame geometry drawn through the pose onto a supersampled canvas.

A per-image similarity transform (the pose jitter) is applied to the geometry itself, so ellipses and
polygons are drawn directly where they land on a 2x supersampled canvas, with anti-aliased, sub-pixel
(``shift``) OpenCV primitives.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from oaml.data.synthetic.params import Color

__all__ = ["SUPERSAMPLE", "Pen"]

SUPERSAMPLE = 2
"""Drawing happens at this multiple of 112 and is reduced with ``INTER_AREA``."""

SHIFT = 4
"""Fractional bits of OpenCV's fixed-point coordinates (1/16 px)."""

LINE = cv2.LINE_AA


class Pen:
    """Draws canonical-frame geometry onto a supersampled canvas through a 2x3 similarity ``matrix``."""

    def __init__(self, canvas: np.ndarray, matrix: np.ndarray) -> None:
        self.canvas = canvas
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.scale = math.hypot(self.matrix[0, 0], self.matrix[1, 0])
        self.angle = math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0]))
        # Output pixel j of the 2x reduction averages canvas pixels 2j and 2j+1, centred at 2j + 0.5.
        self._fixed = self.matrix * (SUPERSAMPLE << SHIFT)
        self._fixed[:, 2] += (SUPERSAMPLE - 1) / 2 * (1 << SHIFT)
        self._box: list[int] | None = None

    def map(self, points: np.ndarray) -> np.ndarray:
        """Canonical 112-frame points (N x 2) to output 112-frame points."""
        return np.asarray(points, dtype=np.float64) @ self.matrix[:, :2].T + self.matrix[:, 2]

    def _fix(self, points: np.ndarray) -> np.ndarray:
        fixed = np.rint(points @ self._fixed[:, :2].T + self._fixed[:, 2]).astype(np.int32)
        if self._box is not None:
            self._grow_box(fixed.min(axis=0), fixed.max(axis=0))
        return fixed

    def _grow_box(self, low: Sequence[int], high: Sequence[int]) -> None:
        box = self._box
        if box is not None:
            box[0], box[1] = min(box[0], int(low[0])), min(box[1], int(low[1]))
            box[2], box[3] = max(box[2], int(high[0])), max(box[3], int(high[1]))

    def _px(self, length: float) -> int:
        return max(1, round(length * self.scale * SUPERSAMPLE))

    @contextlib.contextmanager
    def blend(self, alpha: float) -> Iterator[None]:
        """Everything drawn inside the block is composited over the canvas with opacity ``alpha``."""
        base, self.canvas = self.canvas, self.canvas.copy()
        self._box = [1 << 30, 1 << 30, -(1 << 30), -(1 << 30)]
        try:
            yield
        finally:
            layer, self.canvas, box = self.canvas, base, self._box
            self._box = None
            pad, size = 4, base.shape[0]
            x0, y0 = max(0, (box[0] >> SHIFT) - pad), max(0, (box[1] >> SHIFT) - pad)
            x1, y1 = min(size, (box[2] >> SHIFT) + pad), min(size, (box[3] >> SHIFT) + pad)
            if x1 > x0 and y1 > y0:
                roi = base[y0:y1, x0:x1]
                cv2.addWeighted(layer[y0:y1, x0:x1], alpha, roi, 1.0 - alpha, 0.0, dst=roi)

    def poly(self, points: np.ndarray, color: Color) -> None:
        """Fill a polygon."""
        cv2.fillPoly(self.canvas, [self._fix(points)], color, LINE, SHIFT)

    def line(self, points: np.ndarray, color: Color, width: float, closed: bool = False) -> None:
        """Stroke a polyline ``width`` pixels wide."""
        cv2.polylines(self.canvas, [self._fix(points)], closed, color, self._px(width), LINE, SHIFT)

    def ellipse(self, center: tuple[float, float], axes: tuple[float, float], color: Color, angle: float = 0.0,
                width: float = -1.0, arc: tuple[float, float] = (0.0, 360.0)) -> None:
        """Fill (``width < 0``) or stroke an ellipse or elliptic arc; ``angle`` in degrees, canonical frame."""
        m = self._fixed
        x, y = float(center[0]), float(center[1])
        c = (round(m[0, 0] * x + m[0, 1] * y + m[0, 2]), round(m[1, 0] * x + m[1, 1] * y + m[1, 2]))
        unit = self.scale * (SUPERSAMPLE << SHIFT)
        ax = (max(1, round(axes[0] * unit)), max(1, round(axes[1] * unit)))
        thickness = -1 if width < 0 else self._px(width)
        reach = max(ax) + (thickness << SHIFT)
        self._grow_box((c[0] - reach, c[1] - reach), (c[0] + reach, c[1] + reach))
        cv2.ellipse(self.canvas, c, ax, angle + self.angle, arc[0], arc[1], color, thickness, LINE, SHIFT)
