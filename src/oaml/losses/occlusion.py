"""Occlusion loss: MSE between the predicted visibility map and the mask target (SPEC §4)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["OcclusionLoss"]


class OcclusionLoss(nn.Module):
    """Mean squared error of the visibility map against the visible-fraction target."""

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            prediction: B x 1 x H x W visibility in [0, 1] (the occlusion head's output).
            target: B x 1 x H x W or B x H x W visible fractions (``oaml.data.masks.visibility_grid``); all ones for
                unmasked images.

        Returns:
            Scalar MSE over all cells.

        Raises:
            ValueError: if the shapes disagree.
        """
        if target.dim() == prediction.dim() - 1:
            target = target.unsqueeze(1)
        if target.shape != prediction.shape:
            raise ValueError(
                f"occlusion target shape {tuple(target.shape)} does not match prediction {tuple(prediction.shape)}"
            )
        return F.mse_loss(prediction.float(), target.to(device=prediction.device, dtype=prediction.dtype).float())
