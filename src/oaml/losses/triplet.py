"""Softmax-triplet loss of QAConv-GS: class-memory cross-entropy plus a batch-hard triplet loss (SPEC §6).

Paper: Liao and Shao, "Graph Sampling Based Deep Metric Learning for Generalizable Person
Re-Identification" (CVPR 2022).

- cls_loss: cross-entropy of the QAConv logits of each sample against the memories of its candidate
  classes {y} ∪ kNN(y) (``ClassMemory.logits``), the true class in column 0. Never-seen candidates are
  masked out; a sample counts only when its own class has a memory and at least one other candidate does (a
  softmax over one logit is constant: its loss is 0 and its accuracy 1 whatever the model does).
- triplet_loss: on the batch's B x B QAConv score matrix, min_pos_i over j != i with y_j = y_i and
  max_neg_i over y_j != y_i; triplet_i = max(0, margin - (min_pos_i - max_neg_i)). Rows without a
  positive or a negative are excluded.

Both losses average over their included rows. When no row is included the loss is the empty sum, 0, and the
accuracy is 0; ``cls_rows`` says how many rows the class-memory term had, so that a caller can report the term as
absent (early in training, before the memory holds the batch's classes) instead of logging a fake 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from oaml.losses.pairwise import same_identity

__all__ = ["SoftmaxTripletLoss", "SoftmaxTripletResult"]


class SoftmaxTripletResult(NamedTuple):
    """Outputs of :class:`SoftmaxTripletLoss` (accuracies carry no gradient).

    Attributes:
        cls_loss: class-memory cross-entropy.
        triplet_loss: batch-hard triplet loss.
        cls_acc: fraction of included samples whose true class has the highest memory logit.
        triplet_acc: fraction of included rows with min_pos > max_neg.
        cls_rows: number of samples included in the class-memory term (0-d int tensor).
    """

    cls_loss: Tensor
    triplet_loss: Tensor
    cls_acc: Tensor
    triplet_acc: Tensor
    cls_rows: Tensor


def _mean_over(values: Tensor, count: Tensor) -> Tensor:
    return values.sum() / count.clamp_min(1).to(values.dtype)


class SoftmaxTripletLoss(nn.Module):
    """Class-memory cross-entropy + batch-hard triplet on QAConv scores (SPEC §6).

    Args:
        margin: triplet margin on the logit scale of QAConv (1.0).
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        if not math.isfinite(margin):
            raise ValueError(f"margin must be finite, got {margin!r}")
        self.margin = float(margin)

    def forward(
        self, score: Tensor, labels: Tensor, memory_logits: Tensor, memory_valid: Tensor
    ) -> SoftmaxTripletResult:
        """Compute both losses.

        Args:
            score: B x B QAConv logits of the batch against itself.
            labels: B identity labels.
            memory_logits: B x (1 + k) class-memory logits, true class in column 0.
            memory_valid: B x (1 + k) bool, False for never-seen candidates.

        Returns:
            SoftmaxTripletResult(cls_loss, triplet_loss, cls_acc, triplet_acc, cls_rows).
        """
        cls_loss, cls_acc, cls_rows = self.class_memory_loss(memory_logits, memory_valid)
        triplet_loss, triplet_acc = self.triplet(score, labels)
        return SoftmaxTripletResult(cls_loss, triplet_loss, cls_acc, triplet_acc, cls_rows)

    @staticmethod
    def class_memory_loss(memory_logits: Tensor, memory_valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Cross-entropy with target column 0 over rows whose true class and another candidate have a memory;
        (loss, acc, number of rows)."""
        if memory_logits.shape != memory_valid.shape or memory_logits.dim() != 2:
            raise ValueError(f"memory logits {tuple(memory_logits.shape)} and valid mask "
                             f"{tuple(memory_valid.shape)} must be equal B x K shapes")
        valid = memory_valid.to(device=memory_logits.device, dtype=torch.bool)
        rows = valid[:, 0] & valid[:, 1:].any(dim=1)
        logits = memory_logits.float().masked_fill(~valid, float("-inf"))[rows]
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = _mean_over(F.cross_entropy(logits, target, reduction="none"), rows.sum())
        with torch.no_grad():
            acc = _mean_over((logits.argmax(dim=1) == 0).float(), rows.sum())
        return loss, acc, rows.sum()

    def triplet(self, score: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Batch-hard triplet loss over rows with a positive and a negative; (loss, acc)."""
        if score.shape != (labels.numel(), labels.numel()):
            raise ValueError(f"score must be B x B with B={labels.numel()} labels, got {tuple(score.shape)}")
        same = same_identity(labels.to(score.device))
        eye = torch.eye(same.shape[0], dtype=torch.bool, device=same.device)
        positive, negative = same & ~eye, ~same
        rows = positive.any(dim=1) & negative.any(dim=1)
        score = score.float()
        min_pos = score.masked_fill(~positive, float("inf")).amin(dim=1)[rows]
        max_neg = score.masked_fill(~negative, float("-inf")).amax(dim=1)[rows]
        loss = _mean_over(F.relu(self.margin - (min_pos - max_neg)), rows.sum())
        with torch.no_grad():
            acc = _mean_over((min_pos > max_neg).float(), rows.sum())
        return loss, acc
