"""Fabric colours and patterns for the cloth masks and scarves, computed in face-frame units (SPEC §13.2).

Patterns are functions of the frame coordinates ``(u, v)`` of each pixel, so they turn and scale with the face.
Camouflage samples a smooth noise texture rendered once per process on a canonical frame grid and warped
into the sample's frame. Everything is drawn from the sample's generator.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from oaml.data.occluders._frame import Box, FaceFrame

__all__ = ["FABRIC_PATTERNS", "fabric_colour", "pick", "pick_colour"]

FABRIC_PATTERNS: tuple[str, ...] = ("plain", "stripes", "gingham", "dots", "floral", "camouflage", "plaid", "knit")
"""The fabric patterns :func:`fabric_colour` draws."""

# Canonical noise grid: 20 px per frame unit over u in [-3, 3), v in [-1.5, 4.5).
_NOISE_PER_UNIT, _NOISE_U0, _NOISE_V0, _NOISE_SIDE = 20.0, -3.0, -1.5, 120


def pick(rng: np.random.Generator, weights: tuple[float, ...]) -> int:
    """An index drawn with the given (unnormalised) weights, from one uniform draw."""
    cumulative = np.cumsum(weights)
    return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))


def pick_colour(rng: np.random.Generator, palette: np.ndarray, spread: float = 10.0) -> np.ndarray:
    """A palette row (BGR float32) with a uniform ``±spread`` per channel; four draws."""
    index = int(rng.integers(0, len(palette)))
    return np.clip(palette[index] + rng.uniform(-spread, spread, size=3), 0, 255).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _noise_texture(seed: int) -> np.ndarray:
    """Smooth noise in [0, 1] (float32) on the canonical grid: a sum of three blurred octaves."""
    rng = np.random.default_rng(seed)
    total = np.zeros((_NOISE_SIDE, _NOISE_SIDE), np.float32)
    for sigma, weight in ((6.0, 0.6), (3.0, 0.3), (1.5, 0.1)):
        layer = cv2.GaussianBlur(rng.random((_NOISE_SIDE, _NOISE_SIDE)).astype(np.float32), (0, 0), sigma)
        total += weight * (layer - layer.mean()) / max(float(layer.std()), 1e-6)
    return ((total - total.min()) / (total.max() - total.min())).astype(np.float32)


def _sample_noise(frame: FaceFrame, box: Box, seed: int, offset: tuple[float, float], zoom: float) -> np.ndarray:
    """The canonical noise of ``seed`` in ``box``: image pixel -> frame (u, v) -> noise pixel."""
    x0, y0, x1, y1 = box
    (a, b, ox), (c, d, oy) = frame.matrix
    det = a * d - b * c
    inverse = np.array([[d, -b], [-c, a]]) / det  # image offset -> frame units
    k = _NOISE_PER_UNIT * zoom
    linear = k * inverse
    shift = linear @ np.array([x0 - ox, y0 - oy]) + np.array([-_NOISE_U0 * k + offset[0], -_NOISE_V0 * k + offset[1]])
    warp = np.column_stack([linear, shift])
    return cv2.warpAffine(_noise_texture(seed), warp, (x1 - x0, y1 - y0),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)


def _mix(first: np.ndarray, second: np.ndarray, select: np.ndarray) -> np.ndarray:
    select = select.astype(np.float32)[..., None]
    return first + (second - first) * select


def fabric_colour(pattern: str, u: np.ndarray, v: np.ndarray, colours: np.ndarray, period: float,
                  rng: np.random.Generator, frame: FaceFrame, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """The colour field (``h x w x 3`` BGR float32) and relief shade (``h x w``, about 1) of a fabric pattern.

    Args:
        pattern: one of :data:`FABRIC_PATTERNS`.
        u, v: frame coordinates of the pixels (``h x w``).
        colours: ``3 x 3`` BGR: base, second and third colour.
        period: the pattern period in frame units.
        rng: draws the pattern's phase and orientation (three draws, whatever the pattern).
        frame, box: where the pixels are (for the noise textures).
    """
    phase, turn, seed_draw = rng.random(3).tolist()
    base, second, third = (c.astype(np.float32) for c in colours)
    relief = np.ones_like(u)
    if pattern == "plain":
        field = np.broadcast_to(base, u.shape + (3,)).astype(np.float32)
    elif pattern == "stripes":
        angle = (0.0, np.pi / 2, np.pi / 4, -np.pi / 4)[int(turn * 4)]
        along = u * np.cos(angle) + v * np.sin(angle)
        field = _mix(base, second, np.sin(2 * np.pi * (along / period + phase)) > 0.3)
    elif pattern == "gingham":
        su = np.sin(2 * np.pi * (u / period + phase)) > 0
        sv = np.sin(2 * np.pi * (v / period + turn)) > 0
        field = _mix(_mix(base, (base + second) / 2, su ^ sv), second, su & sv)
    elif pattern == "dots":
        du = np.mod(u / period + phase, 1.0) - 0.5
        dv = np.mod(v / period + turn + 0.5 * np.floor(u / period + phase), 1.0) - 0.5
        field = _mix(base, second, du * du + dv * dv < 0.07)
    elif pattern == "floral":  # five-petal flowers on a staggered lattice, with a centre of the third colour
        cell_u = u / (1.6 * period) + phase
        row = np.floor(v / (1.6 * period) + turn)
        du = np.mod(cell_u + 0.5 * row, 1.0) - 0.5
        dv = np.mod(v / (1.6 * period) + turn, 1.0) - 0.5
        radius = np.hypot(du, dv)
        petals = radius < 0.2 + 0.14 * np.cos(5.0 * np.arctan2(dv, du) + 6.0 * seed_draw)
        field = _mix(_mix(base, second, petals), third, radius < 0.09)
    elif pattern == "camouflage":
        noise = _sample_noise(frame, box, 4, (phase * 40, turn * 40), 0.5 / period)
        field = _mix(_mix(base, second, noise > 0.45), third, noise > 0.62)
    elif pattern == "plaid":
        bands_u = np.cos(2 * np.pi * (u / (2 * period) + phase)) > 0.55
        bands_v = np.cos(2 * np.pi * (v / (2 * period) + turn)) > 0.55
        thin = (np.cos(2 * np.pi * (u / (2 * period) + phase + 0.5)) > 0.97) | \
               (np.cos(2 * np.pi * (v / (2 * period) + turn + 0.5)) > 0.97)
        field = _mix(_mix(_mix(base, second, bands_u), (base + 2 * second) / 3, bands_u & bands_v), third, thin)
    elif pattern == "knit":
        rib = np.abs(np.sin(np.pi * (u / (0.5 * period) + phase)))
        chevron = 2.0 * np.abs(np.mod(u / (0.5 * period) + phase, 1.0) - 0.5)  # V-shaped stitches along each rib
        stitch = np.abs(np.sin(np.pi * (v / (0.35 * period) + chevron)))
        relief = (0.82 + 0.12 * rib + 0.06 * stitch).astype(np.float32)
        field = np.broadcast_to(base, u.shape + (3,)).astype(np.float32)
    else:
        raise ValueError(f"unknown fabric pattern {pattern!r}; expected one of {', '.join(FABRIC_PATTERNS)}")
    return field.astype(np.float32, copy=False), relief.astype(np.float32, copy=False)
