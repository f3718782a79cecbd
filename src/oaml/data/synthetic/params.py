"""What a synthetic identity and one of its images are made of: :class:`FaceParams`, :class:`Expression`.

Geometry lives in the canonical 112x112 ArcFace frame (SPEC §8); lengths are in 112-frame pixels and colours
are BGR 0..255.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

__all__ = ["BeardStyle", "Color", "Expression", "FaceParams", "GlassesStyle", "HairStyle", "shade"]

Color = tuple[float, float, float]
"""A BGR colour with components in 0..255."""


class HairStyle(IntEnum):
    """Hair drawn on top of (and, for long and curly, behind) the head."""

    BALD = 0
    SHORT = 1
    LONG = 2
    FRINGE = 3
    SWEPT = 4
    CURLY = 5
    BUZZ = 6


class BeardStyle(IntEnum):
    """Facial hair; goatee, full and moustache styles all draw a moustache."""

    NONE = 0
    STUBBLE = 1
    GOATEE = 2
    FULL = 3
    MOUSTACHE = 4


class GlassesStyle(IntEnum):
    """Spectacle frames (the lens outline is a superellipse of exponent 2 or 5)."""

    NONE = 0
    ROUND = 1
    RECTANGULAR = 2


@dataclass(frozen=True)
class FaceParams:
    """One identity: everything that stays fixed across its images. Lengths are in 112-frame pixels.

    ``landmarks`` are the identity's canonical eye centres, nose tip and mouth corners (template plus a
    small offset).
    """

    landmarks: tuple[tuple[float, float], ...]
    face_cy: float  # head: centre y, half-width, half-height; jaw narrowing below the ears and its exponent
    face_ax: float
    face_ay: float
    jaw_taper: float
    jaw_power: float
    skin: Color
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
    hair_style: HairStyle  # with the hairline y and the volume around the head
    hair: Color
    hairline: float
    hair_volume: float
    beard_style: BeardStyle
    beard: Color
    glasses_style: GlassesStyle  # with the frame colour, lens tint opacity and lens half-width
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
