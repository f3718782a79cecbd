"""Models: IR backbones, margin heads, occlusion head, QAConv matcher, class memory and FaceModel.

Dependencies point one way: this package imports only torch, numpy and oaml's constants, registry and
errors (STYLE §2.1).
"""

from __future__ import annotations

from oaml.models.checkpoint import extract_prefixed, load_backbone
from oaml.models.class_memory import ClassMemory
from oaml.models.face_model import FaceModel, FaceOutput, build_face_model, embed_faces
from oaml.models.heads import HEADS, PAPER_MARGINS, AdaFace, ArcFace, CosFace, MarginHead, build_head
from oaml.models.iresnet import BACKBONES, BackboneOutput, IResNet, build_backbone
from oaml.models.occlusion import OcclusionHead
from oaml.models.qaconv import QAConv

__all__ = [
    "BACKBONES",
    "HEADS",
    "PAPER_MARGINS",
    "AdaFace",
    "ArcFace",
    "BackboneOutput",
    "ClassMemory",
    "CosFace",
    "FaceModel",
    "FaceOutput",
    "IResNet",
    "MarginHead",
    "OcclusionHead",
    "QAConv",
    "build_backbone",
    "build_face_model",
    "build_head",
    "embed_faces",
    "extract_prefixed",
    "load_backbone",
]
