"""Constants shared by every sub-package: face geometry, normalisation, channel order, validation sets.

SPEC §1 (input convention), §8 (ArcFace template) and §9 (validation set order and sizes).
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = [
    "ARCFACE_TEMPLATE",
    "ChannelOrder",
    "FACE_SIZE",
    "FEATURE_MAP_SIZE",
    "NORM_MEAN",
    "NORM_STD",
    "PAIRS_FORMATS",
    "VAL_PAIR_COUNTS",
    "VAL_SET_NAMES",
]

FACE_SIZE = 112
"""Side of an aligned face crop, in pixels."""

FEATURE_MAP_SIZE = 7
"""Side of the backbone's last feature map for a 112x112 input (112 / 2**4)."""

NORM_MEAN = 0.5
NORM_STD = 0.5
"""Input normalisation: (x / 255 - 0.5) / 0.5, the same for all three channels."""

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],  # left eye (image left)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float32,
)
"""insightface's ``arcface_dst``: the five (x, y) landmarks of a 112x112 aligned crop (SPEC §8)."""

PAIRS_FORMATS: tuple[str, ...] = ("auto", "lfw", "list")
"""Formats of a pairs file: detected from its first data line, LFW ``pairs.txt``, or "path_a path_b label" rows
(:mod:`oaml.data.pairs`)."""

VAL_SET_NAMES: tuple[str, ...] = ("agedb_30", "cfp_fp", "lfw", "cplfw", "calfw")
"""The five verification sets, in the order they are concatenated (SPEC §9)."""

VAL_PAIR_COUNTS: dict[str, int] = {"agedb_30": 6000, "cfp_fp": 7000, "lfw": 6000, "cplfw": 6000, "calfw": 6000}
"""Pair counts of the released verification sets."""


class ChannelOrder(str, enum.Enum):
    """Channel order a model expects. Released AdaFace weights expect BGR, insightface weights RGB."""

    BGR = "bgr"
    RGB = "rgb"
