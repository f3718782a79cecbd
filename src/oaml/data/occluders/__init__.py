"""Procedural occluders on aligned faces, with their per-pixel visibility (SPEC §4, §8, §13.2).

An occluder is a callable ``(image, landmarks, rng) -> (occluded, visibility)``: ``image`` is ``H x W x 3``
uint8 BGR (never modified), ``landmarks`` the five points (default: the ArcFace template scaled to the image),
``rng`` a ``numpy.random.Generator``; ``visibility`` is float32 ``H x W`` with 1 = visible and 0 = hidden, a
pixel being hidden when the occluder's blend weight in it is >= 0.5 (SPEC §13.2). Occluders are built by
name (:func:`build_occluder`, :data:`OCCLUDERS`), driven deterministically per (seed, image index) by
:func:`seeded_occlusion`, mixed for training by :class:`OccluderMixture` and assigned to the two images of
verification pairs by an :class:`OcclusionProtocol` (``sunglasses``, ``mask+sunglasses``).

Names: ``mask`` (exactly :func:`oaml.data.masks.apply_medical_mask`), ``kn95``, ``cloth_mask``,
``sunglasses``, ``glasses``, ``scarf``, ``hand_mouth``, ``hand_eyes``, the landmark blocks ``eyes``, ``nose``,
``mouth``, ``upper_half``, ``lower_half``, ``left_half``, ``right_half``, and ``rect<percent>`` for any
percent in 1-90 (``rect10``, ``rect25`` and ``rect40`` are listed). Everything is numpy/OpenCV.
"""

from __future__ import annotations

from oaml.data.occluders import _blocks, _eyewear, _hands, _masks, _scarf  # noqa: F401  (register them)
from oaml.data.occluders._api import (
    OCCLUDERS,
    LandmarkOccluder,
    Occluder,
    build_occluder,
    occluder_names,
    seeded_occlusion,
)
from oaml.data.occluders._blocks import BLOCK_NAMES, RectOccluder, block_polygon
from oaml.data.occluders._mixture import OccluderMixture, parse_occluder_mixture
from oaml.data.occluders._protocol import MASK_PROTOCOL, OcclusionProtocol, occlude_pairs, parse_protocols

__all__ = [
    "BLOCK_NAMES",
    "MASK_PROTOCOL",
    "OCCLUDERS",
    "LandmarkOccluder",
    "Occluder",
    "OccluderMixture",
    "OcclusionProtocol",
    "RectOccluder",
    "block_polygon",
    "build_occluder",
    "occlude_pairs",
    "occluder_names",
    "parse_occluder_mixture",
    "parse_protocols",
    "seeded_occlusion",
]
