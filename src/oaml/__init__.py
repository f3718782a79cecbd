"""oaml: occlusion-robust face recognition (AdaFace + QAConv + occlusion head) on PyTorch Lightning."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
