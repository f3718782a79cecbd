"""FaceModel: the backbone, the occlusion head and the QAConv matcher wired together (SPEC §1).

The margin head and the class memory depend on the training set (class count), so they live in the
training system, not here. ``forward`` runs no matching: QAConv compares pairs of images, so the caller
matches the returned feature and visibility maps with ``model.qaconv``. The feature map is not detached:
the QAConv losses train the backbone (SPEC §1, §11.1).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from oaml.constants import FACE_SIZE
from oaml.models.iresnet import IResNet, build_backbone
from oaml.models.occlusion import OcclusionHead
from oaml.models.qaconv import QAConv

__all__ = ["FaceModel", "FaceOutput", "build_face_model"]

_OCCLUSION_HIDDEN = 128  # SPEC §4, at full width


class FaceOutput(NamedTuple):
    """What :meth:`FaceModel.forward` returns.

    Attributes:
        embedding: B x 512 unit embedding.
        norm: B x 1 norm of the raw embedding.
        feature_map: B x C x H x W backbone feature map (512 x 7 x 7 at full width).
        occlusion: B x 1 x H x W visibility map in [0, 1] (1 = visible).
    """

    embedding: Tensor
    norm: Tensor
    feature_map: Tensor
    occlusion: Tensor


class FaceModel(nn.Module):
    """Backbone + occlusion head + QAConv matcher.

    Args:
        backbone: an :class:`IResNet`.
        occlusion_head: maps the backbone feature map to a visibility map.
        qaconv: matcher for the backbone's feature maps (its C, H, W must match the backbone's).

    Raises:
        ValueError: if the parts disagree on the feature-map shape.
    """

    def __init__(self, backbone: IResNet, occlusion_head: OcclusionHead, qaconv: QAConv) -> None:
        super().__init__()
        side = backbone.feature_map_size
        if (qaconv.num_features, qaconv.height, qaconv.width) != (backbone.out_channels, side, side):
            raise ValueError(
                f"QAConv expects {qaconv.num_features} x {qaconv.height} x {qaconv.width} maps, the backbone "
                f"gives {backbone.out_channels} x {side} x {side}"
            )
        if occlusion_head.in_channels != backbone.out_channels:
            raise ValueError(
                f"occlusion head expects {occlusion_head.in_channels} channels, the backbone gives "
                f"{backbone.out_channels}"
            )
        self.backbone = backbone
        self.occlusion_head = occlusion_head
        self.qaconv = qaconv

    def forward(self, x: Tensor) -> FaceOutput:
        """Embed faces and predict their visibility maps.

        Args:
            x: B x 3 x S x S normalised faces in the backbone's channel order.

        Returns:
            FaceOutput(embedding, norm, feature_map, occlusion).
        """
        embedding, norm, feature_map = self.backbone(x)
        return FaceOutput(embedding, norm, feature_map, self.occlusion_head(feature_map))


def build_face_model(arch: str, width: float = 1.0, input_size: int = FACE_SIZE) -> FaceModel:
    """Build a FaceModel around a registered backbone.

    The occlusion head's hidden layer scales with the width like the backbone (128 at full width, at
    least 1), so tiny test models stay tiny.

    Args:
        arch: backbone name (``BACKBONES.names()``).
        width: stage-width multiplier.
        input_size: side of the square input.

    Raises:
        ValueError: if ``arch`` is unknown or ``width`` is not positive.
    """
    backbone = build_backbone(arch, width=width, input_size=input_size)
    channels, side = backbone.out_channels, backbone.feature_map_size
    hidden = max(1, round(_OCCLUSION_HIDDEN * width))
    return FaceModel(backbone, OcclusionHead(channels, hidden), QAConv(channels, side, side))
