"""The batch contract: typed records for training and verification samples and their batches.

Datasets return one record per item; the DataLoader's collate function stacks them into a batch record that the
training step, the validation step and the preview read by name. Stated once here (as open_clip's tasks state what
they assume of a batch), so no dataset has to guess how many values a transform returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import default_collate

__all__ = ["PairBatch", "PairSample", "TrainBatch", "TrainSample", "collate_pairs", "collate_train"]


class TrainSample(NamedTuple):
    """One training item.

    Attributes:
        image: the face: a normalised ``3 x H x W`` float tensor after a training transform, or a uint8 BGR
            ``H x W x 3`` array without one.
        label: the contiguous identity label.
        visibility: the per-pixel visibility map (1 visible, 0 occluded): ``1 x H x W`` tensor or ``H x W`` array.
        skipped: ``"<file or record>: <reason>"`` of every unreadable image that loading this item skipped (it was
            replaced by another image of the same identity); empty as a rule.
    """

    image: Any
    label: int
    visibility: Any
    skipped: tuple[str, ...] = ()


class TrainBatch(NamedTuple):
    """A collated training batch (what ``training_step`` receives).

    Attributes:
        images: ``B x 3 x H x W`` normalised faces in the model's channel order.
        labels: ``B`` int64 labels.
        visibility: ``B x 1 x H x W`` per-pixel visibility maps.
        skipped: the unreadable images skipped while loading this batch, in any worker.
    """

    images: Tensor
    labels: Tensor
    visibility: Tensor
    skipped: tuple[str, ...] = ()


class PairSample(NamedTuple):
    """One verification image: pair k is images 2k and 2k + 1 of the concatenated sets (SPEC §9).

    Attributes:
        image: ``3 x H x W`` normalised face.
        issame: ground truth of the image's pair.
        set_index: position of the image's set in the dataset's set names.
        global_index: index of the image in the concatenation.
        visibility: ``7 x 7`` true visible fraction of each feature-map cell under the occluder of the
            protocol (all ones for a clean image), for the occlusion head's calibration.
    """

    image: Tensor
    issame: bool
    set_index: int
    global_index: int
    visibility: Tensor


class PairBatch(NamedTuple):
    """A batch of whole verification pairs (what ``validation_step`` receives): the fields of :class:`PairSample`
    stacked, ``B`` images each (``visibility``: ``B x 7 x 7``)."""

    images: Tensor
    issame: Tensor
    set_index: Tensor
    global_index: Tensor
    visibility: Tensor


def collate_train(samples: Sequence[TrainSample]) -> TrainBatch:
    """Stack training samples into a :class:`TrainBatch`; the skip reports of all samples are joined."""
    images, labels, visibility = default_collate([tuple(s[:3]) for s in samples])
    skipped = tuple(entry for sample in samples for entry in sample.skipped)
    return TrainBatch(images, labels.to(torch.int64), visibility, skipped)


def collate_pairs(samples: Sequence[PairSample]) -> PairBatch:
    """Stack verification samples into a :class:`PairBatch`."""
    return PairBatch(*default_collate([tuple(s) for s in samples]))
