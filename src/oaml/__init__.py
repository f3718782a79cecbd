"""oaml: occlusion-robust face recognition (AdaFace + QAConv + occlusion head) on PyTorch Lightning.

The public API is loaded lazily, so ``import oaml`` stays cheap (no torch until a name is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Gallery": "oaml.evaluation.gallery",
    "OamlConfig": "oaml.config",
    "build_backbone": "oaml.models",
    "build_face_model": "oaml.models",
    "build_head": "oaml.models",
    "load_backbone": "oaml.models",
    "load_model": "oaml.evaluation.api",
    "make_synthetic": "oaml.data.synthetic",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'oaml' has no attribute {name!r}")
