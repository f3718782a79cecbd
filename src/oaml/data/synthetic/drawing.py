"""Procedural face drawing: a random background, then the face of :class:`FaceParams` part by part.

Every part is placed relative to the identity's five landmarks in the canonical 112 frame (SPEC §8) and
drawn through the :class:`~oaml.data.synthetic.pen.Pen`, which applies the pose.
"""

from __future__ import annotations

import math
from enum import IntEnum

import cv2
import numpy as np

from oaml.data.synthetic.params import BeardStyle, Expression, FaceParams, GlassesStyle, HairStyle, shade
from oaml.data.synthetic.pen import LINE, Pen

__all__ = ["Background", "draw_background", "draw_face"]

_HAIR_AROUND_HEAD = (HairStyle.LONG, HairStyle.CURLY)  # drawn behind the head too; they hide the ears


class Background(IntEnum):
    """The kind of a per-image background."""

    GRADIENT = 0  # a smooth 2x2 colour gradient
    BLOTCHES = 1  # a blotchy texture of 3..11 cells
    CLUTTER = 2  # blotches plus random rectangles and lines


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
    kind = Background(int(rng.integers(3)))
    cells = 2 if kind == Background.GRADIENT else int(rng.integers(3, 12))
    spread = rng.uniform(5, 40)
    small = np.clip(base + rng.normal(0.0, spread, (cells, cells, 3)), 0, 255).astype(np.uint8)
    if kind != Background.GRADIENT:  # cubic to a quarter size first: a direct cubic upscale costs ~1 ms
        small = cv2.resize(small, (size // 4, size // 4), interpolation=cv2.INTER_CUBIC)
    image = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    if kind == Background.CLUTTER:
        for _ in range(int(rng.integers(2, 7))):
            color = tuple(float(v) for v in np.clip(base + rng.normal(0, 50, 3), 0, 255))
            x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
            if rng.random() < 0.5:
                cv2.rectangle(image, (x0, y0), (x1, y1), color, -1, LINE)
            else:
                cv2.line(image, (x0, y0), (x1, y1), color, int(rng.integers(2, 12)), LINE)
    return image


def _draw_body(pen: Pen, p: FaceParams, e: Expression) -> None:
    cx = 0.5 * (p.landmarks[0][0] + p.landmarks[1][0])
    neck = 0.52 * p.face_ax
    top = p.face_cy + 0.5 * p.face_ay
    pen.poly(np.array([[cx - neck, top], [cx + neck, top], [cx + neck + 6, 140], [cx - neck - 6, 140]]),
             shade(p.skin, 0.72))
    pen.ellipse((cx, p.face_cy + p.face_ay + 42), (p.face_ax + 36, 34), e.shirt)


def _draw_hair_back(pen: Pen, p: FaceParams) -> None:
    if p.hair_style not in _HAIR_AROUND_HEAD:
        return
    if p.hair_style == HairStyle.CURLY:  # curly: a rounded mass with a bumpy rim
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
    for side in (-1.0, 1.0) if p.hair_style not in _HAIR_AROUND_HEAD else ():  # long and curly hair hide the ears
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
    if p.beard_style == BeardStyle.NONE:
        return
    if p.beard_style in (BeardStyle.STUBBLE, BeardStyle.FULL):
        with pen.blend(0.3 if p.beard_style == BeardStyle.STUBBLE else 0.95):
            pen.poly(_beard_region(p), p.beard)
    if p.beard_style == BeardStyle.GOATEE:
        (lx, ly), rx = p.landmarks[3], p.landmarks[4][0]
        chin = p.face_cy + p.face_ay
        pen.ellipse((0.5 * (lx + rx), 0.5 * (ly + chin) + 2), (0.33 * (rx - lx), 0.5 * (chin - ly) + 1), p.beard)
    if p.beard_style in (BeardStyle.GOATEE, BeardStyle.FULL, BeardStyle.MOUSTACHE):
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
    bottom = {HairStyle.LONG: p.landmarks[3][1] + 8, HairStyle.CURLY: p.face_cy + 6}.get(p.hair_style,
                                                                                    p.landmarks[0][1] + 2)
    curtain = {HairStyle.LONG: 4.0, HairStyle.CURLY: 2.5}.get(p.hair_style, 1.0)
    b = _angle_at(p, bottom)
    g = _angle_at(p, p.hairline + 15)
    outer = _outline(p, np.linspace(math.pi - b, 2 * math.pi + b, 40), p.hair_volume)
    right = _outline(p, np.linspace(2 * math.pi + b, 2 * math.pi + g, 6), -curtain)
    left = _outline(p, np.linspace(math.pi - g, math.pi - b, 6), -curtain)
    u = np.linspace(1.0, -1.0, 17)
    x = right[-1, 0] + (left[0, 0] - right[-1, 0]) * (1 - u) / 2
    y = p.hairline + (right[-1, 1] - p.hairline) * np.abs(u) ** 3
    if p.hair_style == HairStyle.FRINGE:  # low, slightly jagged
        y = np.maximum(y, p.hairline + 14 - 1.8 * (np.arange(u.size) % 2))
    elif p.hair_style == HairStyle.SWEPT:
        y = y + 9.0 * np.clip(u, 0, None) ** 0.7
    return np.vstack([outer, right, np.stack([x, y], 1), left])


def _draw_hair_front(pen: Pen, p: FaceParams) -> None:
    if p.hair_style == HairStyle.BALD:
        return
    cap = _hair_cap(p)
    if p.hair_style == HairStyle.BUZZ:  # the scalp shows through
        with pen.blend(0.6):
            pen.poly(cap, p.hair)
        return
    pen.poly(cap, p.hair)
    if p.hair_style == HairStyle.CURLY:  # curls along the edge
        for i, (x, y) in enumerate(cap):
            pen.ellipse((x, y), (3.0, 3.0), shade(p.hair, 0.85 if i % 2 else 1.12))
        return
    with pen.blend(0.35):  # strands give the mass some texture
        for x, y in cap[8:33:4]:
            strand = np.array([[x, y + 2], [0.7 * x + 0.3 * cap[:, 0].mean(), p.hairline - 2]])
            pen.line(strand, shade(p.hair, 1.35, (10, 10, 10)), 0.8)


def _draw_glasses(pen: Pen, p: FaceParams, e: Expression) -> None:
    if p.glasses_style == GlassesStyle.NONE or not e.glasses_on:
        return
    a, b = p.glasses_size, 0.76 * p.glasses_size
    n = 2.0 if p.glasses_style == GlassesStyle.ROUND else 5.0
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
