"""Pairwise matching loss of QAConv-GS (SPEC §6).

Paper: Liao and Shao, "Graph Sampling Based Deep Metric Learning for Generalizable Person
Re-Identification" (CVPR 2022).

Given the B x B QAConv score matrix of a batch against itself, every pair is a binary problem
"same identity or not": per-sample loss = Σ_j BCE_with_logits(score_ij, [y_i = y_j]) (the self-pair
included, as in the reference), averaged over the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["PairwiseMatchingLoss", "PairwiseResult", "same_identity"]


class PairwiseResult(NamedTuple):
    """Loss and accuracy of :class:`PairwiseMatchingLoss`.

    Attributes:
        loss: scalar, mean over samples of the per-sample BCE sums.
        acc: scalar (no gradient), fraction of rows whose best positive (self excluded) beats their best
            negative, over the rows that have both; 0 when no row has both.
    """

    loss: Tensor
    acc: Tensor


def same_identity(labels: Tensor) -> Tensor:
    """B x B bool matrix [y_i == y_j]."""
    labels = labels.reshape(-1)
    return labels.unsqueeze(0) == labels.unsqueeze(1)


def _check_scores(score: Tensor, labels: Tensor) -> None:
    num = labels.numel()
    if score.shape != (num, num):
        raise ValueError(f"score must be B x B with B={num} labels, got {tuple(score.shape)}")


class PairwiseMatchingLoss(nn.Module):
    """BCE over all pairs of a batch's QAConv score matrix (SPEC §6)."""

    def forward(self, score: Tensor, labels: Tensor) -> PairwiseResult:
        """Compute the loss.

        Args:
            score: B x B logits, QAConv(F, F; O, O).
            labels: B identity labels.

        Returns:
            PairwiseResult(loss, acc).
        """
        _check_scores(score, labels)
        same = same_identity(labels.to(score.device))
        loss = F.binary_cross_entropy_with_logits(score.float(), same.float(), reduction="none").sum(dim=1).mean()
        with torch.no_grad():
            eye = torch.eye(same.shape[0], dtype=torch.bool, device=same.device)
            positive = same & ~eye
            negative = ~same
            max_pos = score.masked_fill(~positive, float("-inf")).amax(dim=1)
            max_neg = score.masked_fill(~negative, float("-inf")).amax(dim=1)
            rows = positive.any(dim=1) & negative.any(dim=1)
            correct = ((max_pos > max_neg) & rows).sum()
            acc = correct.float() / rows.sum().clamp_min(1).float()
        return PairwiseResult(loss, acc)
