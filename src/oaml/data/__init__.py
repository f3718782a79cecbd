"""Training and verification data: RecordIO/folder datasets, masks, augmentation, samplers (SPEC §7-§9).

``OAMLDataModule`` and ``seed_worker`` are imported lazily, so that importing :mod:`oaml.data` does not
import Lightning.
"""

from __future__ import annotations

from typing import Any

from oaml.data.augment import Augmenter
from oaml.data.datasets import FolderDataset, RecordDataset, RecordIndex, decode_image
from oaml.data.masks import apply_medical_mask, seeded_mask, visibility_to_grid
from oaml.data.preview import save_preview
from oaml.data.recordio import IRHeader, RecordReader, RecordWriter, pack_record, unpack_record
from oaml.data.safe_pickle import safe_load
from oaml.data.samplers import GraphSampler, PKSampler
from oaml.data.transforms import EvalTransform, TrainTransform, image_to_tensor, tensor_to_image
from oaml.data.validation import FiveValidationDataset, convert_bin, load_bin, load_memfile

__all__ = [
    "Augmenter",
    "EvalTransform",
    "FiveValidationDataset",
    "FolderDataset",
    "GraphSampler",
    "IRHeader",
    "OAMLDataModule",
    "PKSampler",
    "RecordDataset",
    "RecordIndex",
    "RecordReader",
    "RecordWriter",
    "TrainTransform",
    "apply_medical_mask",
    "convert_bin",
    "decode_image",
    "image_to_tensor",
    "load_bin",
    "load_memfile",
    "pack_record",
    "safe_load",
    "save_preview",
    "seed_worker",
    "seeded_mask",
    "tensor_to_image",
    "unpack_record",
    "visibility_to_grid",
]

_LAZY = {"OAMLDataModule", "seed_worker"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from oaml.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'oaml.data' has no attribute {name!r}")
