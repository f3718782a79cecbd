"""The occluder registry, the landmark-occluder base and the seeded entry point (SPEC §13.2).

An occluder is a callable ``(image, landmarks, rng) -> (occluded, visibility)``. Factories are registered by
name in :data:`OCCLUDERS` (``@OCCLUDERS.register("kn95")``); a parametrised family such as ``rect<percent>``
registers a prefix and a range with :func:`register_family`.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from oaml._registry import Registry
from oaml.data.masks import apply_medical_mask
from oaml.data.occluders._frame import Canvas, FaceFrame, check_image, sample_frame

__all__ = [
    "DEFAULT_JITTER",
    "OCCLUDERS",
    "LandmarkOccluder",
    "Occluder",
    "Painter",
    "build_occluder",
    "occluder_names",
    "register_family",
    "seeded_occlusion",
]

DEFAULT_JITTER = 2.5
"""Per-landmark jitter (pixels of the 112 x 112 template, along each frame axis) of the landmark occluders."""


class Occluder(Protocol):
    """``(image, landmarks, rng) -> (occluded, visibility)``.

    ``image`` is ``H x W x 3`` uint8 BGR (never modified); ``landmarks`` is ``5 x 2`` (x, y) in image pixels
    or ``None`` for the ArcFace template scaled to the image; the result is a new uint8 image and a float32
    ``H x W`` map with 1 = visible and 0 = hidden (blend weight >= 0.5, SPEC §13.2).
    """

    def __call__(self, image: np.ndarray, landmarks: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...


Painter = Callable[[Canvas, FaceFrame, np.random.Generator], None]
"""Paints one occluder on a canvas, placed in a face frame, with its own draws from the generator."""

OCCLUDERS: Registry[Occluder] = Registry("occluder")
"""Occluder factories by name; every factory takes keyword arguments only and has defaults for all."""

_FAMILIES: dict[str, tuple[int, int, Callable[[int], Occluder]]] = {}


class LandmarkOccluder:
    """An occluder placed in the jittered face frame of each sample.

    The generator is used in a fixed order: the :data:`~oaml.data.occluders._frame.JITTER_DRAWS` landmark
    jitters first, then the painter's own draws.

    Args:
        name: the registered name (for ``repr``).
        painter: draws the occluder on a :class:`Canvas`.
        jitter: per-landmark jitter (template pixels); 0 places the occluder on the landmarks as given.
    """

    def __init__(self, name: str, painter: Painter, jitter: float = DEFAULT_JITTER) -> None:
        if not jitter >= 0:
            raise ValueError(f"jitter must be >= 0 pixels, got {jitter}")
        self.name, self.painter, self.jitter = name, painter, float(jitter)

    def __call__(self, image: np.ndarray, landmarks: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        check_image(image)
        frame = sample_frame(landmarks, image.shape, rng, self.jitter)
        canvas = Canvas(image)
        self.painter(canvas, frame, rng)
        return canvas.result()

    def __repr__(self) -> str:
        return f"LandmarkOccluder({self.name!r}, jitter={self.jitter})"


class _MedicalMask:
    """``mask``: exactly :func:`oaml.data.masks.apply_medical_mask` (its own jitter, shift, scale, rotation)."""

    def __call__(self, image: np.ndarray, landmarks: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return apply_medical_mask(image, rng, landmarks)

    def __repr__(self) -> str:
        return "MedicalMask()"


@OCCLUDERS.register("mask")
def _mask() -> Occluder:
    return _MedicalMask()


def register_family(prefix: str, low: int, high: int, factory: Callable[[int], Occluder]) -> None:
    """Register the parametrised names ``<prefix><n>`` for integers ``low <= n <= high``.

    Raises:
        ValueError: if ``prefix`` is already a family.
    """
    if prefix in _FAMILIES:
        raise ValueError(f"occluder family {prefix!r} is already registered")
    _FAMILIES[prefix] = (low, high, factory)


def occluder_names() -> list[str]:
    """The registered occluder names, sorted (a family contributes the members registered by name)."""
    return sorted(OCCLUDERS.names())


def _valid_names() -> str:
    families = [f"{prefix}<{low}-{high}>" for prefix, (low, high, _) in sorted(_FAMILIES.items())]
    return ", ".join(occluder_names() + families)


def build_occluder(name: str, **kwargs: Any) -> Occluder:
    """Build the occluder registered under ``name`` (or a family member such as ``rect33``).

    Args:
        name: an :func:`occluder_names` entry or ``<family prefix><integer>``.
        **kwargs: factory options (e.g. ``jitter=0.0`` for the landmark occluders).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones) or an out-of-range parameter.
    """
    if name in OCCLUDERS:
        return OCCLUDERS.build(name, **kwargs)
    match = re.fullmatch(r"([a-z_]+?)(\d+)", name) if isinstance(name, str) else None
    if match and match.group(1) in _FAMILIES:
        low, high, factory = _FAMILIES[match.group(1)]
        value = int(match.group(2))
        if not low <= value <= high:
            raise ValueError(f"occluder {name!r}: {match.group(1)}<n> needs {low} <= n <= {high}, got {value}")
        return factory(value, **kwargs)
    raise ValueError(f"unknown occluder {name!r}; choose one of: {_valid_names()}")


@functools.cache
def _cached_occluder(name: str) -> Occluder:
    return build_occluder(name)


def occluder_stream(name: str) -> int:
    """The stable integer mixed into the seed of ``name`` (CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(name.encode("utf-8"))


def seeded_occlusion(image: np.ndarray, name: str, seed: int, index: int,
                     landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic occluder ``name`` of image ``index`` under ``seed``.

    ``mask`` is driven by ``default_rng((seed, index))``, exactly as :func:`oaml.data.masks.seeded_mask`, so
    every masked protocol keeps its numbers; any other occluder by ``default_rng((seed, index, crc32(name)))``.
    The result depends only on (image, landmarks, name, seed, index), never on batch size or order.

    Raises:
        ValueError: for an unknown ``name`` (listing the valid ones).
    """
    occluder = _cached_occluder(name)
    key = (seed, index) if name == "mask" else (seed, index, occluder_stream(name))
    return occluder(image, landmarks, np.random.default_rng(key))
