"""Random identities and random images of them (the RNG draws behind :mod:`oaml.data.synthetic`).

Each identity is a random :class:`~oaml.data.synthetic.params.FaceParams` (face shape, skin tone, eyes, brows,
nose, lips, hair, beard, glasses, moles, freckles); each image draws it with fresh pose, expression, lighting,
blur, noise and a random background, so identity is carried by the face and never by the background or a
global colour. Landmarks sit on the ArcFace 112x112 template (SPEC §8) up to the identity offset and the
per-image pose, so synthetic occluders land where they would on real aligned faces.

The order of the draws is part of the output: changing it changes every image (bump
:data:`oaml.data.synthetic.dataset.FORMAT_VERSION`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from oaml.constants import ARCFACE_TEMPLATE, FACE_SIZE
from oaml.data.synthetic.drawing import draw_background, draw_face
from oaml.data.synthetic.params import BeardStyle, Color, Expression, FaceParams, GlassesStyle, HairStyle, shade
from oaml.data.synthetic.pen import SUPERSAMPLE

__all__ = ["render_face", "render_identity_params"]

_SKIN_RGB = np.array([(255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 96), (161, 102, 68),
                      (120, 78, 52), (85, 55, 38)], dtype=np.float64)
_HAIR_RGB = np.array([(22, 18, 18), (58, 40, 30), (98, 66, 42), (150, 110, 70), (218, 185, 128), (152, 72, 40),
                      (150, 150, 150), (226, 226, 220)], dtype=np.float64)
_HAIR_P = np.array([0.24, 0.2, 0.15, 0.1, 0.1, 0.07, 0.08, 0.06])
_IRIS_RGB = np.array([(70, 45, 25), (110, 75, 40), (125, 110, 60), (80, 120, 90), (70, 110, 175), (120, 130, 140)],
                     dtype=np.float64)
_HAIR_STYLE_P = np.array([0.08, 0.25, 0.2, 0.15, 0.12, 0.1, 0.1])  # in HairStyle order
_CORNERS = np.array([[[-1, -1], [-1, 1]], [[1, -1], [1, 1]]], dtype=np.float64)  # 2x2 image corners as (y, x)


def _bgr(rgb: np.ndarray, rng: np.random.Generator, spread: float) -> Color:
    return shade(rgb[::-1] + rng.normal(0.0, spread, 3))


def _landmarks(rng: np.random.Generator) -> tuple[tuple[float, float], ...]:
    offset = np.clip(rng.normal(0.0, 0.8, (5, 2)), -2.0, 2.0)
    eye_dx = rng.uniform(-1.5, 1.5)  # eye spacing, symmetric about the midline
    offset[0, 0] -= eye_dx
    offset[1, 0] += eye_dx
    points = ARCFACE_TEMPLATE.astype(np.float64) + offset
    return tuple((float(x), float(y)) for x, y in points)


def _marks(rng: np.random.Generator, cx: float) -> tuple[tuple[float, float, float, float], ...]:
    marks = [(cx + rng.uniform(-30, 30), rng.uniform(28, 104), rng.uniform(0.7, 1.5), rng.uniform(0.6, 0.95))
             for _ in range(int(rng.poisson(1.0)))]
    if rng.random() < 0.2:  # freckles across nose and cheeks
        for _ in range(int(rng.integers(15, 35))):
            marks.append((cx + rng.choice([-1, 1]) * rng.uniform(3, 28), rng.uniform(58, 80),
                          rng.uniform(0.45, 0.8), rng.uniform(0.25, 0.45)))
    return tuple((float(a), float(b), float(c), float(d)) for a, b, c, d in marks)


def _face_colors(rng: np.random.Generator) -> dict[str, Color]:
    t = rng.uniform(0, len(_SKIN_RGB) - 1)
    i = min(int(t), len(_SKIN_RGB) - 2)
    skin = _bgr(_SKIN_RGB[i] + (t - i) * (_SKIN_RGB[i + 1] - _SKIN_RGB[i]), rng, 6.0)
    hair = _bgr(_HAIR_RGB[rng.choice(len(_HAIR_RGB), p=_HAIR_P)], rng, 10.0)
    lips = shade(skin, 0.78, np.array([5.0, -8.0, 35.0]) + rng.normal(0, 8, 3))
    brow = shade(np.minimum(np.array(hair) * 0.7, 120.0))
    beard = shade(hair, 0.85)
    glasses = (30.0, 30.0, 30.0) if rng.random() < 0.5 else _bgr(rng.uniform(0, 255, 3), rng, 0.0)
    return {"skin": skin, "hair": hair, "lips": lips, "brow": brow, "beard": beard, "glasses": glasses,
            "iris": _bgr(_IRIS_RGB[rng.integers(len(_IRIS_RGB))], rng, 8.0)}


def render_identity_params(rng: np.random.Generator) -> FaceParams:
    """Draw one random identity.

    Args:
        rng: the identity's generator (``default_rng([seed, identity, 2**32 - 1])`` in :func:`make_synthetic`).

    Returns:
        The identity's :class:`FaceParams`, in canonical 112-frame pixels.
    """
    lm = _landmarks(rng)
    colors = _face_colors(rng)
    hair_style = HairStyle(int(rng.choice(len(_HAIR_STYLE_P), p=_HAIR_STYLE_P)))
    beard_style = BeardStyle(int(rng.integers(1, 5)) if rng.random() < 0.35 else 0)
    glasses_style = GlassesStyle(int(rng.integers(1, 3)) if rng.random() < 0.3 else 0)
    u = rng.uniform
    return FaceParams(
        landmarks=lm, face_cy=u(58, 64), face_ax=u(37, 45), face_ay=u(49, 57), jaw_taper=u(0.15, 0.5),
        jaw_power=u(1.2, 3.5), skin=colors["skin"], ear_size=u(8, 12), eye_width=u(11, 15),
        eye_height=u(5.0, 7.0), eye_tilt=u(-8, 10), iris=colors["iris"], iris_ratio=u(0.42, 0.6),
        lash=u(0.6, 1.6), brow=colors["brow"], brow_thickness=u(1.5, 4.5), brow_arch=u(0, 3.5),
        brow_slope=u(-2, 2.5), brow_length=u(15, 21), brow_gap=u(8, 12), nose_length=u(12, 20),
        nose_width=u(8, 14), lips=colors["lips"], upper_lip=u(1.8, 3.8), lower_lip=u(2.5, 5.0),
        hair_style=hair_style, hair=colors["hair"], hairline=u(16, 26),
        hair_volume=u(8, 14) if hair_style == HairStyle.CURLY else u(2, 8), beard_style=beard_style,
        beard=colors["beard"], glasses_style=glasses_style, glasses=colors["glasses"],
        glasses_tint=u(0.2, 0.6) if rng.random() < 0.2 else 0.0, glasses_size=u(9, 12),
        marks=_marks(rng, 0.5 * (lm[0][0] + lm[1][0])), blush=u(0.1, 0.35) if rng.random() < 0.4 else 0.0)


def _expression(rng: np.random.Generator) -> Expression:
    eye_open = 0.1 if rng.random() < 0.04 else rng.uniform(0.7, 1.1)
    return Expression(
        smile=rng.uniform(-0.5, 1.2), mouth_open=0.0 if rng.random() < 0.6 else rng.uniform(0.2, 1.0),
        brow_raise=rng.uniform(-1.5, 3.0), eye_open=eye_open,
        gaze=(float(np.clip(rng.normal(0, 0.8), -1.5, 1.5)), float(np.clip(rng.normal(0, 0.3), -0.6, 0.6))),
        shirt=_bgr(rng.uniform(0, 255, 3), rng, 0.0), glasses_on=bool(rng.random() > 0.1))


def _pose(rng: np.random.Generator) -> np.ndarray:
    """Similarity jitter about the landmarks' centroid; normal, clipped to rotation ±8°, scale ±5 %, shift ±3 px."""
    angle = float(np.clip(rng.normal(0, 4.0), -8, 8))
    scale = 1.0 + float(np.clip(rng.normal(0, 0.025), -0.05, 0.05))
    shift = np.clip(rng.normal(0, 1.5, 2), -3, 3)
    center = ARCFACE_TEMPLATE.mean(axis=0)
    matrix = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), angle, scale)
    matrix[:, 2] += shift
    return matrix


def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Directional light, brightness, colour cast, gamma, blur and noise on a 112x112 BGR uint8 image."""
    theta = rng.uniform(0, 2 * math.pi)
    direction = rng.uniform(0, 0.4) * (math.cos(theta) * _CORNERS[..., 1] + math.sin(theta) * _CORNERS[..., 0])
    gain = (1.0 + direction)[..., None] * rng.uniform(0.8, 1.15) * (1.0 + rng.normal(0, 0.04, 3))
    gain_map = cv2.resize(gain.astype(np.float32), (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LINEAR)
    lit = cv2.multiply(image, gain_map, dtype=cv2.CV_8U)  # saturating
    gamma = rng.uniform(0.8, 1.25)
    out = cv2.LUT(lit, (255.0 * (np.arange(256) / 255.0) ** gamma + 0.5).astype(np.uint8))
    if rng.random() < 0.35:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.1))
    # Uniform noise (cheaper to draw than Gaussian); 73.6 is the standard deviation of uniform bytes.
    scale = rng.uniform(0, 5.0) / 73.6
    noise = np.frombuffer(rng.bytes(out.size), dtype=np.uint8).reshape(out.shape)
    return cv2.addWeighted(out, 1.0, noise, scale, 0.5 - 127.5 * scale)  # saturating uint8


def render_face(params: FaceParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image of an identity with random pose, expression, lighting, blur, noise and background.

    Args:
        params: the identity.
        rng: the image's generator (``default_rng([seed, identity, n])`` in :func:`make_synthetic`).

    Returns:
        ``(image, landmarks)``: a 112x112x3 BGR uint8 image and the 5x2 float32 landmarks (eye centres, nose
        tip, mouth corners; ArcFace template order) in its pixel coordinates.
    """
    matrix = _pose(rng)
    expression = _expression(rng)
    canvas = draw_background(rng, FACE_SIZE * SUPERSAMPLE)
    landmarks = draw_face(canvas, matrix, params, expression)
    image = cv2.resize(canvas, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    return _photometric(image, rng), landmarks
