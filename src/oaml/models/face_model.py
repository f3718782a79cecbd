"""FaceModel: the backbone, the occlusion head and the QAConv matcher wired together (SPEC §1).

The margin head and the class memory depend on the training set (class count), so they live in the
training system, not here. ``forward`` runs no matching: QAConv compares pairs of images, so the caller
matches the returned feature and visibility maps with ``model.qaconv``. The feature map is not detached:
the QAConv losses train the backbone (SPEC §1, §11.1).

With ``embedding_gate`` the predicted visibility gates the feature map before ``output_layer`` (as FROM, "feature
removal of masks", does with its learned mask): the embedding is computed from F · O, so hidden regions are
removed from the global embedding too, not only from QAConv matching. :func:`embed_faces` is the one place that
does it, for training, validation, evaluation and export alike.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from oaml.constants import FACE_SIZE
from oaml.models.iresnet import IResNet, build_backbone
from oaml.models.occlusion import OcclusionHead
from oaml.models.qaconv import QAConv

__all__ = ["FaceModel", "FaceOutput", "build_face_model", "embed_faces"]

_OCCLUSION_HIDDEN = 128  # SPEC §4, at full width


class FaceOutput(NamedTuple):
    """What :meth:`FaceModel.forward` returns.

    Attributes:
        embedding: B x 512 unit embedding.
        norm: B x 1 norm of the raw embedding.
        feature_map: B x C x H x W backbone feature map (512 x 7 x 7 at full width).
        occlusion: B x 1 x H x W visibility map in [0, 1] (1 = visible); None without an occlusion head.
    """

    embedding: Tensor
    norm: Tensor
    feature_map: Tensor
    occlusion: Tensor | None


def embed_faces(backbone: IResNet, occlusion_head: OcclusionHead | None, x: Tensor, *, gate: bool = False,
                detach_gate: bool = False) -> FaceOutput:
    """Backbone, occlusion head and (with ``gate``) the visibility-gated embedding of normalised faces.

    Args:
        backbone: the IR backbone.
        occlusion_head: predicts the visibility map; None gives no map (and no gate).
        x: B x 3 x S x S normalised faces.
        gate: compute the embedding from ``feature_map * visibility``.
        detach_gate: the gate carries no gradient into the occlusion head (only its own loss trains it).

    Returns:
        FaceOutput; ``occlusion`` is None without an occlusion head.
    """
    feature_map = backbone.forward_features(x)
    occlusion = None if occlusion_head is None else occlusion_head(feature_map)
    if gate and occlusion is not None:
        embedding, norm = backbone.embed(feature_map * (occlusion.detach() if detach_gate else occlusion))
    else:
        embedding, norm = backbone.embed(feature_map)
    return FaceOutput(embedding, norm, feature_map, occlusion)


class FaceModel(nn.Module):
    """Backbone + occlusion head + QAConv matcher.

    Args:
        backbone: an :class:`IResNet`.
        occlusion_head: maps the backbone feature map to a visibility map.
        qaconv: matcher for the backbone's feature maps (its C, H, W must match the backbone's).
        embedding_gate: the predicted visibility gates the feature map before the embedding layer.
        detach_gate: the gate carries no gradient into the occlusion head.

    Raises:
        ValueError: if the parts disagree on the feature-map shape.
    """

    def __init__(self, backbone: IResNet, occlusion_head: OcclusionHead, qaconv: QAConv, *,
                 embedding_gate: bool = False, detach_gate: bool = False) -> None:
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
        self.embedding_gate, self.detach_gate = embedding_gate, detach_gate

    def forward(self, x: Tensor) -> FaceOutput:
        """Embed faces and predict their visibility maps.

        Args:
            x: B x 3 x S x S normalised faces in the backbone's channel order.

        Returns:
            FaceOutput(embedding, norm, feature_map, occlusion).
        """
        return embed_faces(self.backbone, self.occlusion_head, x, gate=self.embedding_gate,
                           detach_gate=self.detach_gate)


def build_face_model(arch: str, width: float = 1.0, input_size: int = FACE_SIZE, *, visibility: str = "scaling",
                     embedding_gate: bool = False, detach_gate: bool = False) -> FaceModel:
    """Build a FaceModel around a registered backbone.

    The occlusion head's hidden layer scales with the width like the backbone (128 at full width, at
    least 1), so tiny test models stay tiny.

    Args:
        arch: backbone name (``BACKBONES.names()``).
        width: stage-width multiplier.
        input_size: side of the square input.
        visibility: how visibility maps weight QAConv (:data:`~oaml.models.qaconv.VISIBILITY_MODES`).
        embedding_gate: the predicted visibility gates the feature map before the embedding layer.
        detach_gate: the gate carries no gradient into the occlusion head.

    Raises:
        ValueError: if ``arch`` is unknown or ``width`` is not positive.
    """
    backbone = build_backbone(arch, width=width, input_size=input_size)
    channels, side = backbone.out_channels, backbone.feature_map_size
    hidden = max(1, round(_OCCLUSION_HIDDEN * width))
    return FaceModel(backbone, OcclusionHead(channels, hidden), QAConv(channels, side, side, visibility=visibility),
                     embedding_gate=embedding_gate, detach_gate=detach_gate)
