"""Tests of oaml.losses.pairwise against hand-computed BCE sums and accuracies."""

from __future__ import annotations

import math

import pytest
import torch

from oaml.losses.pairwise import PairwiseMatchingLoss, same_identity

LABELS = torch.tensor([0, 0, 1, 2])
SCORE = torch.tensor(
    [
        [3.0, 2.0, 0.5, -1.0],
        [1.0, 4.0, 1.5, 0.0],
        [0.0, -2.0, 2.0, 1.0],
        [-1.0, 0.5, 0.0, 5.0],
    ]
)


def _bce(x: float, y: float) -> float:
    return math.log1p(math.exp(x)) - y * x


def test_same_identity() -> None:
    assert same_identity(torch.tensor([1, 2, 1])).tolist() == [[True, False, True], [False, True, False],
                                                              [True, False, True]]


def test_loss_is_mean_of_per_sample_bce_sums() -> None:
    same = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    rows = [sum(_bce(SCORE[i, j].item(), same[i][j]) for j in range(4)) for i in range(4)]
    loss, acc = PairwiseMatchingLoss()(SCORE, LABELS)
    assert loss.item() == pytest.approx(sum(rows) / 4, rel=1e-6)
    # rows 2 and 3 have no positive besides themselves: excluded from the accuracy.
    # row 0: best positive 2.0 > best negative 0.5 -> right; row 1: 1.0 < 1.5 -> wrong.
    assert acc.item() == pytest.approx(0.5)


def test_accuracy_ignores_self_score() -> None:
    score = torch.tensor([[9.0, -1.0, 0.0], [-1.0, 9.0, 0.0], [0.0, 0.0, 9.0]])
    _, acc = PairwiseMatchingLoss()(score, torch.tensor([0, 0, 1]))
    assert acc.item() == 0.0  # the positive -1 loses to the negative 0, whatever the self-score


def test_gradient_and_shape_check() -> None:
    score = SCORE.clone().requires_grad_()
    loss, acc = PairwiseMatchingLoss()(score, LABELS)
    loss.backward()
    assert score.grad.abs().sum() > 0 and not acc.requires_grad
    with pytest.raises(ValueError, match="B x B"):
        PairwiseMatchingLoss()(SCORE[:3], LABELS)
