"""Procedural face drawing behind :mod:`oaml.data.synthetic` (private).

Geometry lives in the canonical 112x112 ArcFace frame (SPEC §8): an identity's five landmarks are the
template plus a small per-identity offset, and every part is placed relative to them. A per-image similarity
transform (the pose jitter) is applied to the geometry itself, so ellipses and polygons are drawn directly
where they land on a 2x supersampled canvas, with anti-aliased, sub-pixel (``shift``) OpenCV primitives.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["SUPERSAMPLE", "Color", "Expression", "FaceParams", "draw_background", "draw_face", "shade"]

Color = tuple[float, float, float]
"""A BGR colour with components in 0..255."""

SUPERSAMPLE = 2
"""Drawing happens at this multiple of 112 and is reduced with ``INTER_AREA``."""

_SHIFT = 4  # fractional bits of OpenCV's fixed-point coordinates (1/16 px)
_LINE = cv2.LINE_AA


@dataclass(frozen=True)
class FaceParams:
    """One identity: everything that stays fixed across its images. Lengths are in 112-frame pixels.

    ``landmarks`` are the identity's canonical eye centres, nose tip and mouth corners (template plus a
    small offset); ``*_style`` fields are small integers selecting a discrete variant (0 = none).
    """

    landmarks: tuple[tuple[float, float], ...]
    face_cy: float  # head: centre y, half-width, half-height; jaw narrowing below the ears and its exponent
    face_ax: float
    face_ay: float
    jaw_taper: float
    jaw_power: float
    skin: Color  # colours are BGR 0..255
    ear_size: float
    eye_width: float  # eyes: size, outer-corner tilt (degrees), iris radius / half-width, lid line width
    eye_height: float
    eye_tilt: float
    iris: Color
    iris_ratio: float
    lash: float
    brow: Color  # brows: colour, thickness, arch height, outer-end rise, length, gap above the eye
    brow_thickness: float
    brow_arch: float
    brow_slope: float
    brow_length: float
    brow_gap: float
    nose_length: float  # bridge length above the tip, nostril spread
    nose_width: float
    lips: Color
    upper_lip: float
    lower_lip: float
    hair_style: int  # 0 bald, 1 short, 2 long, 3 fringe, 4 swept, 5 curly, 6 buzz; hairline y; volume
    hair: Color
    hairline: float
    hair_volume: float
    beard_style: int  # 0 none, 1 stubble, 2 goatee, 3 full, 4 moustache
    beard: Color
    glasses_style: int  # 0 none, 1 round, 2 rectangular; frame colour, lens tint opacity, lens half-width
    glasses: Color
    glasses_tint: float
    glasses_size: float
    marks: tuple[tuple[float, float, float, float], ...]  # moles and freckles: x, y, radius, opacity
    blush: float  # cheek blush opacity (0 = none)


@dataclass(frozen=True)
class Expression:
    """Per-image, non-identity state of the face: expression, gaze, clothing, accessories."""

    smile: float
    mouth_open: float
    brow_raise: float
    eye_open: float
    gaze: tuple[float, float]
    shirt: Color
    glasses_on: bool


def shade(color: Color | np.ndarray, factor: float = 1.0, tint: Color | np.ndarray = (0.0, 0.0, 0.0)) -> Color:
    """``color * factor + tint``, clipped to 0..255, as a BGR tuple."""
    b, g, r = (float(min(255.0, max(0.0, c * factor + t))) for c, t in zip(color, tint, strict=True))
    return (b, g, r)


class Pen:
    """Draws canonical-frame geometry onto a supersampled canvas through a 2x3 similarity ``matrix``."""

    def __init__(self, canvas: np.ndarray, matrix: np.ndarray) -> None:
        self.canvas = canvas
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.scale = math.hypot(self.matrix[0, 0], self.matrix[1, 0])
        self.angle = math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0]))
        # Output pixel j of the 2x reduction averages canvas pixels 2j and 2j+1, centred at 2j + 0.5.
        self._fixed = self.matrix * (SUPERSAMPLE << _SHIFT)
        self._fixed[:, 2] += (SUPERSAMPLE - 1) / 2 * (1 << _SHIFT)
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
            x0, y0 = max(0, (box[0] >> _SHIFT) - pad), max(0, (box[1] >> _SHIFT) - pad)
            x1, y1 = min(size, (box[2] >> _SHIFT) + pad), min(size, (box[3] >> _SHIFT) + pad)
            if x1 > x0 and y1 > y0:
                roi = base[y0:y1, x0:x1]
                cv2.addWeighted(layer[y0:y1, x0:x1], alpha, roi, 1.0 - alpha, 0.0, dst=roi)

    def poly(self, points: np.ndarray, color: Color) -> None:
        """Fill a polygon."""
        cv2.fillPoly(self.canvas, [self._fix(points)], color, _LINE, _SHIFT)

    def line(self, points: np.ndarray, color: Color, width: float, closed: bool = False) -> None:
        """Stroke a polyline ``width`` pixels wide."""
        cv2.polylines(self.canvas, [self._fix(points)], closed, color, self._px(width), _LINE, _SHIFT)

    def ellipse(self, center: tuple[float, float], axes: tuple[float, float], color: Color, angle: float = 0.0,
                width: float = -1.0, arc: tuple[float, float] = (0.0, 360.0)) -> None:
        """Fill (``width < 0``) or stroke an ellipse or elliptic arc; ``angle`` in degrees, canonical frame."""
        m = self._fixed
        x, y = float(center[0]), float(center[1])
        c = (round(m[0, 0] * x + m[0, 1] * y + m[0, 2]), round(m[1, 0] * x + m[1, 1] * y + m[1, 2]))
        unit = self.scale * (SUPERSAMPLE << _SHIFT)
        ax = (max(1, round(axes[0] * unit)), max(1, round(axes[1] * unit)))
        thickness = -1 if width < 0 else self._px(width)
        reach = max(ax) + (thickness << _SHIFT)
        self._grow_box((c[0] - reach, c[1] - reach), (c[0] + reach, c[1] + reach))
        cv2.ellipse(self.canvas, c, ax, angle + self.angle, arc[0], arc[1], color, thickness, _LINE, _SHIFT)


def _outline(p: FaceParams, t: np.ndarray, grow: float = 0.0) -> np.ndarray:
    """Head outline at angles ``t`` (0 = right, pi/2 = chin, 3pi/2 = crown), pushed out by ``grow``."""
    cx = 0.5 * (p.landmarks[0][0] + p.landmarks[1][0])
    sin, cos = np.sin(t), np.cos(t)
    narrow = 1.0 - p.jaw_taper * np.clip(sin, 0.0, None) ** p.jaw_power
    return np.stack([cx + (p.face_ax + grow) * cos * narrow, p.face_cy + (p.face_ay + grow) * sin], axis=1)


def _angle_at(p: FaceParams, y: float) -> float:
    """Outline angle on the right side whose height is ``y``."""
    return math.asin(float(np.clip((y - p.face_cy) / p.face_ay, -1.0, 1.0)))


def draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random per-image background: gradient, blotchy texture or clutter, ``size x size x 3`` uint8."""
    base = rng.uniform(25, 230) + rng.normal(0.0, rng.uniform(5, 45), 3)  # grey level plus a muted hue
    kind = rng.integers(3)
    cells = 2 if kind == 0 else int(rng.integers(3, 12))
    spread = rng.uniform(5, 40)
    small = np.clip(base + rng.normal(0.0, spread, (cells, cells, 3)), 0, 255).astype(np.uint8)
    if kind > 0:  # cubic to a quarter size first: a direct cubic upscale costs ~1 ms
        small = cv2.resize(small, (size // 4, size // 4), interpolation=cv2.INTER_CUBIC)
    image = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    if kind == 2:
        for _ in range(int(rng.integers(2, 7))):
            color = tuple(float(v) for v in np.clip(base + rng.normal(0, 50, 3), 0, 255))
            x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
            if rng.random() < 0.5:
                cv2.rectangle(image, (x0, y0), (x1, y1), color, -1, _LINE)
            else:
                cv2.line(image, (x0, y0), (x1, y1), color, int(rng.integers(2, 12)), _LINE)
    return image


def _draw_body(pen: Pen, p: FaceParams, e: Expression) -> None:
    cx = 0.5 * (p.landmarks[0][0] + p.landmarks[1][0])
    neck = 0.52 * p.face_ax
    top = p.face_cy + 0.5 * p.face_ay
    pen.poly(np.array([[cx - neck, top], [cx + neck, top], [cx + neck + 6, 140], [cx - neck - 6, 140]]),
             shade(p.skin, 0.72))
    pen.ellipse((cx, p.face_cy + p.face_ay + 42), (p.face_ax + 36, 34), e.shirt)


def _draw_hair_back(pen: Pen, p: FaceParams) -> None:
    if p.hair_style not in (2, 5):
        return
    if p.hair_style == 5:  # curly: a rounded mass with a bumpy rim
        t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
        r = 1.0 + 0.035 * np.sin(15 * t)
        cx = 0.5 * (p.landmarks[0][0] + p.landmarks[1][0])
        ax, ay = p.face_ax + p.hair_volume, 0.8 * p.face_ay + p.hair_volume
        mass = np.stack([cx + ax * r * np.cos(t), p.face_cy - 8 + ay * r * np.sin(t)], 1)
        pen.poly(mass, shade(p.hair, 0.8))
        return
    arc = _outline(p, np.linspace(math.pi, 2 * math.pi, 24), p.hair_volume + 3)
    sides = np.array([[arc[-1, 0] + 5, 130.0], [arc[0, 0] - 5, 130.0]])
    pen.poly(np.vstack([arc, sides]), shade(p.hair, 0.8))


def _draw_head(pen: Pen, p: FaceParams) -> None:
    for side in (-1.0, 1.0) if p.hair_style not in (2, 5) else ():  # long and curly hair hide the ears
        x, y = _outline(p, np.array([math.pi if side < 0 else 0.0]))[0]
        pen.ellipse((x + side * 0.8, y + 4), (0.5 * p.ear_size, p.ear_size), shade(p.skin, 0.88), side * 8)
        pen.ellipse((x + side * 1.5, y + 4), (0.22 * p.ear_size, 0.6 * p.ear_size), shade(p.skin, 0.7))
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    pen.poly(_outline(p, t), shade(p.skin, 0.84))
    pen.poly(_outline(p, t, -2.5) - [0, 1.0], shade(p.skin, 0.93))
    pen.poly(_outline(p, t, -6.0) - [0, 2.0], p.skin)
    if p.blush > 0:
        with pen.blend(p.blush):
            for k in (0, 1):
                ex, ey = p.landmarks[k]
                pen.ellipse((ex + (2 if k == 0 else -2), ey + 22), (8, 5), shade(p.skin, 0.95, (0, -12, 25)))
    for strength, group in ((0.85, [m for m in p.marks if m[3] >= 0.5]), (0.4, [m for m in p.marks if m[3] < 0.5])):
        if group:
            with pen.blend(strength):
                for x, y, r, _ in group:
                    pen.ellipse((x, y), (r, r), shade(p.skin, 0.45, (0, 0, 10)))


def _beard_region(p: FaceParams) -> np.ndarray:
    (lx, ly), (rx, ry) = p.landmarks[3], p.landmarks[4]
    tip_y = p.landmarks[2][1]
    cx = 0.5 * (lx + rx)
    a = _angle_at(p, tip_y - 2)
    jaw = _outline(p, np.linspace(a, math.pi - a, 20), 0.5)
    inner = np.array([[lx - 7, ly - 7], [cx, tip_y + 4.5], [rx + 7, ry - 7]])
    return np.vstack([jaw, inner])


def _moustache(p: FaceParams) -> np.ndarray:
    (lx, ly), (rx, ry) = p.landmarks[3], p.landmarks[4]
    tip_y = p.landmarks[2][1]
    cx, my = 0.5 * (lx + rx), 0.5 * (ly + ry)
    return np.array([[lx - 2, ly + 2], [lx + 3, tip_y + 9], [cx, tip_y + 5], [rx - 3, tip_y + 9], [rx + 2, ry + 2],
                     [rx - 2, ry - 2], [cx, my - p.upper_lip - 1.0], [lx + 2, ly - 2]])


def _draw_beard(pen: Pen, p: FaceParams) -> None:
    if p.beard_style == 0:
        return
    if p.beard_style in (1, 3):  # 1 stubble, 3 full
        with pen.blend(0.3 if p.beard_style == 1 else 0.95):
            pen.poly(_beard_region(p), p.beard)
    if p.beard_style == 2:  # goatee
        (lx, ly), rx = p.landmarks[3], p.landmarks[4][0]
        chin = p.face_cy + p.face_ay
        pen.ellipse((0.5 * (lx + rx), 0.5 * (ly + chin) + 2), (0.33 * (rx - lx), 0.5 * (chin - ly) + 1), p.beard)
    if p.beard_style >= 2:  # goatee, full and moustache styles all have a moustache
        with pen.blend(0.95):
            pen.poly(_moustache(p), p.beard)


def _draw_nose(pen: Pen, p: FaceParams) -> None:
    tx, ty = p.landmarks[2]
    w = p.nose_width
    shadow = shade(p.skin, 0.72)
    with pen.blend(0.5):
        for s in (-1.0, 1.0):
            bridge = np.array([[tx + s * 3.5, ty - p.nose_length], [tx + s * 3.0, ty - 0.5 * p.nose_length],
                               [tx + s * 0.75 * w, ty - 2.0]])
            pen.line(bridge, shadow, 1.2)
        pen.ellipse((tx, ty - 1.5), (2.4, 2.0), shade(p.skin, 1.0, (30, 30, 30)))
    for s in (-1.0, 1.0):
        arc = (-80.0, 80.0) if s > 0 else (100.0, 260.0)
        pen.ellipse((tx + s * 0.62 * w, ty + 0.8), (2.6, 2.6), shade(p.skin, 0.78), width=1.0, arc=arc)
        pen.ellipse((tx + s * 0.36 * w, ty + 2.4), (1.9, 1.0), shade(p.skin, 0.45), s * 15)


def _lip_curves(p: FaceParams, e: Expression, left: np.ndarray, right: np.ndarray) -> dict[str, np.ndarray]:
    u = np.linspace(-1.0, 1.0, 15)[:, None]
    bulge = np.sqrt(1.0 - u**2)
    chord = right - left
    normal = np.array([-chord[1], chord[0]]) / np.linalg.norm(chord)
    base = 0.5 * (left + right) + 0.5 * u * chord
    center = 2.2 * e.smile * (1.0 - u**2)
    half_open = 2.6 * e.mouth_open * bulge
    bow = 1.0 - 0.3 * np.exp(-((u / 0.18) ** 2))
    offsets = {"upper_top": center - half_open - p.upper_lip * bulge**0.8 * bow,
               "upper_bottom": center - half_open, "lower_top": center + half_open,
               "lower_bottom": center + half_open + p.lower_lip * bulge**0.7}
    return {k: base + v * normal for k, v in offsets.items()}


def _draw_mouth(pen: Pen, p: FaceParams, e: Expression, left: np.ndarray, right: np.ndarray) -> None:
    c = _lip_curves(p, e, left, right)
    if e.mouth_open > 0.12:
        pen.poly(np.vstack([c["upper_bottom"], c["lower_top"][::-1]]), (45, 35, 70))
        teeth = c["upper_bottom"][3:12]
        pen.poly(np.vstack([teeth, teeth[::-1] + [0, min(2.2, 2.6 * e.mouth_open)]]), (215, 225, 232))
    pen.poly(np.vstack([c["upper_top"], c["upper_bottom"][::-1]]), shade(p.lips, 0.88))
    pen.poly(np.vstack([c["lower_top"], c["lower_bottom"][::-1]]), p.lips)
    pen.line(c["upper_bottom"] if e.mouth_open > 0.12 else 0.5 * (c["upper_bottom"] + c["lower_top"]),
             shade(p.lips, 0.5), 0.8)


def _draw_eyes(pen: Pen, p: FaceParams, e: Expression) -> None:
    socket = shade(p.skin, 0.9)
    for k, side in ((0, -1.0), (1, 1.0)):
        cx, cy = p.landmarks[k]
        a, b = 0.5 * p.eye_width, max(0.3, 0.5 * p.eye_height * e.eye_open)
        tilt = -side * p.eye_tilt
        pen.ellipse((cx, cy - 0.5), (a + 3.5, 0.5 * p.eye_height + 3.5), socket, tilt)
        pen.ellipse((cx, cy), (a, b), (228, 232, 236), tilt)
        r = p.iris_ratio * a
        ix, iy = cx + e.gaze[0], cy + e.gaze[1]
        pen.ellipse((ix, iy), (r, r), p.iris)
        pen.ellipse((ix, iy), (0.45 * r, 0.45 * r), (20, 18, 18))
        pen.ellipse((ix - 0.35 * r, iy - 0.35 * r), (0.2 * r, 0.2 * r), (245, 245, 245))
        lid = r + 1.5
        pen.ellipse((cx, cy), (a + 0.5 * lid, b + 0.5 * lid), socket, tilt, width=lid)
        pen.ellipse((cx, cy), (a, b), (30, 25, 25), tilt, width=p.lash, arc=(180, 360))
        pen.ellipse((cx, cy - 1.0), (a + 0.5, b + 2.2), shade(p.skin, 0.78), tilt, width=0.6, arc=(200, 340))


def _draw_brows(pen: Pen, p: FaceParams, e: Expression) -> None:
    u = np.linspace(-1.0, 1.0, 11)
    shapes = []
    for k, side in ((0, -1.0), (1, 1.0)):
        cx, cy = p.landmarks[k]
        y = cy - p.brow_gap - e.brow_raise - p.brow_arch * (1 - u**2) - p.brow_slope * u
        x = cx + side * (0.5 * p.brow_length * u + 1.5)
        half = 0.5 * p.brow_thickness * (1.0 - 0.5 * np.clip(u, 0, None)) * np.minimum(1.0, 3.0 * (1.0 - u) + 0.2)
        upper, lower = np.stack([x, y - half], 1), np.stack([x, y + half], 1)
        shapes.append(np.vstack([upper, lower[::-1]]))
    with pen.blend(0.92):
        for shape in shapes:
            pen.poly(shape, p.brow)


def _hair_cap(p: FaceParams) -> np.ndarray:
    """Polygon of the hair on top of the face: outer head arc, then the hairline back across."""
    bottom = {2: p.landmarks[3][1] + 8, 5: p.face_cy + 6}.get(p.hair_style, p.landmarks[0][1] + 2)
    curtain = {2: 4.0, 5: 2.5}.get(p.hair_style, 1.0)
    b = _angle_at(p, bottom)
    g = _angle_at(p, p.hairline + 15)
    outer = _outline(p, np.linspace(math.pi - b, 2 * math.pi + b, 40), p.hair_volume)
    right = _outline(p, np.linspace(2 * math.pi + b, 2 * math.pi + g, 6), -curtain)
    left = _outline(p, np.linspace(math.pi - g, math.pi - b, 6), -curtain)
    u = np.linspace(1.0, -1.0, 17)
    x = right[-1, 0] + (left[0, 0] - right[-1, 0]) * (1 - u) / 2
    y = p.hairline + (right[-1, 1] - p.hairline) * np.abs(u) ** 3
    if p.hair_style == 3:  # fringe: low, slightly jagged
        y = np.maximum(y, p.hairline + 14 - 1.8 * (np.arange(u.size) % 2))
    elif p.hair_style == 4:  # side-swept
        y = y + 9.0 * np.clip(u, 0, None) ** 0.7
    return np.vstack([outer, right, np.stack([x, y], 1), left])


def _draw_hair_front(pen: Pen, p: FaceParams) -> None:
    if p.hair_style == 0:
        return
    cap = _hair_cap(p)
    if p.hair_style == 6:  # buzz cut: the scalp shows through
        with pen.blend(0.6):
            pen.poly(cap, p.hair)
        return
    pen.poly(cap, p.hair)
    if p.hair_style == 5:  # curls along the edge
        for i, (x, y) in enumerate(cap):
            pen.ellipse((x, y), (3.0, 3.0), shade(p.hair, 0.85 if i % 2 else 1.12))
        return
    with pen.blend(0.35):  # strands give the mass some texture
        for x, y in cap[8:33:4]:
            strand = np.array([[x, y + 2], [0.7 * x + 0.3 * cap[:, 0].mean(), p.hairline - 2]])
            pen.line(strand, shade(p.hair, 1.35, (10, 10, 10)), 0.8)


def _draw_glasses(pen: Pen, p: FaceParams, e: Expression) -> None:
    if p.glasses_style == 0 or not e.glasses_on:
        return
    a, b = p.glasses_size, 0.76 * p.glasses_size
    n = 2.0 if p.glasses_style == 1 else 5.0
    t = np.linspace(0, 2 * math.pi, 28, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    lens = np.stack([a * np.sign(c) * np.abs(c) ** (2 / n), b * np.sign(s) * np.abs(s) ** (2 / n)], 1)
    (lx, ly), (rx, ry) = p.landmarks[0], p.landmarks[1]
    cx = 0.5 * (lx + rx)
    if p.glasses_tint > 0:
        with pen.blend(p.glasses_tint):
            pen.poly(lens + [lx, ly + 1], (40, 35, 30))
            pen.poly(lens + [rx, ry + 1], (40, 35, 30))
    for ex, ey, side in ((lx, ly, -1.0), (rx, ry, 1.0)):
        pen.line(lens + [ex, ey + 1], p.glasses, 1.3, closed=True)
        edge = _outline(p, np.array([math.pi if side < 0 else 0.0]))[0, 0]
        pen.line(np.array([[ex + side * a, ey - 1], [edge - side * 0.5, ey - 2]]), p.glasses, 1.3)
    bridge = np.array([[lx + a, ly - 1], [cx, 0.5 * (ly + ry) - 2.5], [rx - a, ry - 1]])
    pen.line(bridge, p.glasses, 1.3)


def _mouth_corners(p: FaceParams, e: Expression) -> tuple[np.ndarray, np.ndarray]:
    # A smile pulls the corners up and out; the returned landmarks follow them.
    left = np.array(p.landmarks[3]) + [-0.8 * max(e.smile, 0.0), -1.2 * e.smile]
    right = np.array(p.landmarks[4]) + [0.8 * max(e.smile, 0.0), -1.2 * e.smile]
    return left, right


def draw_face(canvas: np.ndarray, matrix: np.ndarray, p: FaceParams, e: Expression) -> np.ndarray:
    """Draw the face ``p`` with expression ``e`` onto ``canvas`` (modified in place).

    Args:
        canvas: the supersampled background, ``112*SUPERSAMPLE`` square, BGR uint8.
        matrix: 2x3 similarity from the canonical 112 frame to the output 112 frame (the pose).
        p: the identity.
        e: the per-image expression.

    Returns:
        5 x 2 float32 landmarks (eyes, nose tip, mouth corners) in output 112-frame pixels.
    """
    pen = Pen(canvas, matrix)
    left, right = _mouth_corners(p, e)
    _draw_body(pen, p, e)
    _draw_hair_back(pen, p)
    _draw_head(pen, p)
    _draw_beard(pen, p)
    _draw_nose(pen, p)
    _draw_mouth(pen, p, e, left, right)
    _draw_eyes(pen, p, e)
    _draw_brows(pen, p, e)
    _draw_hair_front(pen, p)
    _draw_glasses(pen, p, e)
    points = np.array([p.landmarks[0], p.landmarks[1], p.landmarks[2], left, right])
    return pen.map(points).astype(np.float32)
