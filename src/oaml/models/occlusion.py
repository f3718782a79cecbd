"""Occlusion head: predicts a per-location visibility map from the backbone's feature map (SPEC §4).

The map (1 = visible, 0 = occluded) is supervised with the MSE against the visible fraction of each 16 x 16
cell of the 112 x 112 mask (:func:`oaml.data.masks.visibility_grid`), and weights the QAConv similarities (SPEC §5).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["OcclusionHead"]


class OcclusionHead(nn.Module):
    """conv3x3(C -> hidden, pad 1, no bias) -> BN -> ReLU -> conv1x1(hidden -> 1, bias) -> sigmoid.

    Args:
        in_channels: channels of the backbone feature map (512 at full width).
        hidden_channels: channels of the hidden layer (128 in SPEC §4).
    """

    def __init__(self, in_channels: int = 512, hidden_channels: int = 128) -> None:
        super().__init__()
        if in_channels < 1 or hidden_channels < 1:
            raise ValueError(f"channel counts must be positive, got {in_channels}, {hidden_channels}")
        self.in_channels = in_channels
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, 1, kernel_size=1, bias=True),
        )

    def forward(self, feature_map: Tensor) -> Tensor:
        """B x C x H x W feature map -> B x 1 x H x W visibility in [0, 1] (1 = visible)."""
        return self.layers(feature_map).sigmoid()
