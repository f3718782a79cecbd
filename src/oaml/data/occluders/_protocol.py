"""Occlusion protocols of verification pairs: which occluder each image of a pair gets (SPEC §9, §13.1).

A protocol is written ``NAME`` (occluder ``NAME`` on the second image of every pair, the first stays clean: the
masked protocol generalised) or ``FIRST+SECOND`` (complementary occlusion: ``FIRST`` on the first image and
``SECOND`` on the second, e.g. ``mask+sunglasses``; ``X+X`` occludes both images alike, ``X+none`` the first
image alone). Every image is occluded
by :func:`~oaml.data.occluders.seeded_occlusion` with its own index, so an image gets the same occluder in
validation, ``oaml eval``, ``oaml occlude`` and the study.

Metric names: the medical mask on the second image keeps the names it always had (methods ``<method>_masked``,
validation keys ``val/masked_<key>``); any other protocol is ``<method>_<protocol>`` and ``val/occ_<protocol>_<key>``
(``adaface_sunglasses``, ``val/occ_mask+sunglasses_lfw_combined_acc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oaml.data.occluders._api import build_occluder, seeded_occlusion

__all__ = ["MASK_PROTOCOL", "OcclusionProtocol", "occlude_pairs", "parse_protocols"]

_CLEAN = "none"  # a side written "none" stays clean: "mask+none" masks the first image only


@dataclass(frozen=True)
class OcclusionProtocol:
    """The occluder of the first and of the second image of every pair (``None``: that image stays clean).

    Raises:
        ValueError: if both sides are clean, or a name is not a registered occluder (one line listing them).
    """

    first: str | None
    second: str | None

    def __post_init__(self) -> None:
        if self.first is None and self.second is None:
            raise ValueError("an occlusion protocol needs an occluder on at least one image of the pair")
        for name in (self.first, self.second):
            if name is not None:
                build_occluder(name)

    @classmethod
    def parse(cls, text: str) -> OcclusionProtocol:
        """``"NAME"`` (the second image) or ``"FIRST+SECOND"`` (see the module docstring).

        Raises:
            ValueError: one line naming the protocol, for an empty side or an unknown occluder.
        """
        parts = [part.strip() for part in str(text).split("+")]
        if len(parts) > 2 or not all(parts):
            raise ValueError(f"occlusion protocol {text!r}: expected NAME or FIRST+SECOND (e.g. sunglasses or "
                             f"mask+sunglasses)")
        sides = [None if part == _CLEAN else part for part in parts]
        try:
            return cls(None, sides[0]) if len(sides) == 1 else cls(sides[0], sides[1])
        except ValueError as error:
            raise ValueError(f"occlusion protocol {text!r}: {error}") from None

    @property
    def name(self) -> str:
        """``NAME`` for the second image alone, else ``FIRST+SECOND`` (the syntax :meth:`parse` reads)."""
        return str(self.second) if self.first is None else f"{self.first}+{self.second or _CLEAN}"

    @property
    def is_mask(self) -> bool:
        """Whether this is the masked protocol of old: the medical mask on the second image."""
        return self.first is None and self.second == "mask"

    @property
    def suffix(self) -> str:
        """Method-name suffix in ``oaml eval``: ``_masked`` for the medical mask, else ``_<name>``."""
        return "_masked" if self.is_mask else f"_{self.name}"

    @property
    def prefix(self) -> str:
        """Validation metric prefix: ``masked_`` for the medical mask, else ``occ_<name>_``."""
        return "masked_" if self.is_mask else f"occ_{self.name}_"

    def occluder(self, side: int) -> str | None:
        """The occluder of image ``side`` of a pair (0 first, 1 second)."""
        return self.first if side == 0 else self.second

    def occlude(self, image: np.ndarray, side: int, seed: int, index: int,
                landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(image, visibility)`` of image ``index`` on ``side`` of its pair: :func:`seeded_occlusion` with that
        side's occluder, or a copy and an all-ones map when the side stays clean."""
        name = self.occluder(side)
        if name is None:
            return image.copy(), np.ones(image.shape[:2], np.float32)
        return seeded_occlusion(image, name, seed, index, landmarks)


MASK_PROTOCOL = OcclusionProtocol(None, "mask")
"""The masked protocol of validation and ``oaml eval --mask-probes``: the medical mask on the second image."""


def parse_protocols(text: str | Sequence[str]) -> tuple[OcclusionProtocol, ...]:
    """Protocols from ``"mask,sunglasses,mask+sunglasses"`` (or a list of such strings), in order, repeats dropped.

    Raises:
        ValueError: one line naming the bad entry (see :meth:`OcclusionProtocol.parse`).
    """
    entries = text.split(",") if isinstance(text, str) else [e for item in text for e in str(item).split(",")]
    out: list[OcclusionProtocol] = []
    for entry in entries:
        if entry.strip():
            protocol = OcclusionProtocol.parse(entry)
            if protocol not in out:
                out.append(protocol)
    return tuple(out)


def occlude_pairs(images: Sequence[np.ndarray], first: Sequence[int], second: Sequence[int],
                  protocol: OcclusionProtocol | str, seed: int = 0,
                  landmarks: Sequence[np.ndarray | None] | None = None) -> dict[str, np.ndarray]:
    """Apply a protocol to pairs of images, as validation and ``oaml eval`` do (for the study and notebooks).

    Args:
        images: uint8 BGR ``H x W x 3`` faces; image ``k`` is seeded by its index ``k``.
        first: index of each pair's first image.
        second: index of each pair's second image.
        protocol: an :class:`OcclusionProtocol` or its text (``"sunglasses"``, ``"mask+sunglasses"``).
        seed: the protocol seed (with the image index).
        landmarks: ``5 x 2`` landmarks per image (``None`` entries, or ``None``: the template).

    Returns:
        ``first_images``, ``second_images`` (``N x H x W x 3`` uint8) and ``first_visibility``,
        ``second_visibility`` (``N x H x W`` float32, 1 visible), one row per pair.
    """
    protocol = OcclusionProtocol.parse(protocol) if isinstance(protocol, str) else protocol
    out: dict[str, np.ndarray] = {}
    for side, key in ((0, "first"), (1, "second")):
        drawn = [protocol.occlude(images[k], side, seed, int(k), None if landmarks is None else landmarks[k])
                 for k in (first if side == 0 else second)]
        out[f"{key}_images"] = np.stack([image for image, _ in drawn])
        out[f"{key}_visibility"] = np.stack([visibility for _, visibility in drawn])
    return out
