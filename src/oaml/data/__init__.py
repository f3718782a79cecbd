"""Training and verification data: RecordIO/folder datasets, masks and occluders, augmentation, samplers (SPEC §7-§9).

Every public name is imported lazily, on first use, so that importing :mod:`oaml.data` (or a torch-free module
below it, such as :mod:`oaml.data.images`) imports neither torch nor Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Augmenter": "oaml.data.augment",
    "FaceDataModule": "oaml.data.datamodule",
    "FolderDataset": "oaml.data.datasets",
    "GraphSampler": "oaml.data.samplers",
    "IRHeader": "oaml.data.recordio",
    "OccluderMixture": "oaml.data.occluders",
    "OcclusionProtocol": "oaml.data.occluders",
    "EvalTransform": "oaml.data.transforms",
    "PKSampler": "oaml.data.samplers",
    "RecordDataset": "oaml.data.datasets",
    "RecordIndex": "oaml.data.datasets",
    "RecordReader": "oaml.data.recordio",
    "RecordWriter": "oaml.data.recordio",
    "TrainTransform": "oaml.data.transforms",
    "VerificationSets": "oaml.data.verification_sets",
    "aligned_landmarks": "oaml.data.landmarks",
    "apply_medical_mask": "oaml.data.masks",
    "build_occluder": "oaml.data.occluders",
    "convert_bin": "oaml.data.verification_sets",
    "decode_image": "oaml.data.images",
    "image_to_tensor": "oaml.data.transforms",
    "list_images": "oaml.data.images",
    "load_bin": "oaml.data.verification_sets",
    "load_memfile": "oaml.data.verification_sets",
    "occlude_pairs": "oaml.data.occluders",
    "pack_record": "oaml.data.recordio",
    "safe_load": "oaml.data.safe_pickle",
    "save_preview": "oaml.data.preview",
    "seed_worker": "oaml.data.datamodule",
    "seeded_mask": "oaml.data.masks",
    "seeded_occlusion": "oaml.data.occluders",
    "tensor_to_image": "oaml.data.transforms",
    "unpack_record": "oaml.data.recordio",
    "visibility_grid": "oaml.data.masks",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'oaml.data' has no attribute {name!r}")
