"""Tests of oaml.losses.triplet: class-memory cross-entropy and batch-hard triplet, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from oaml.losses.triplet import SoftmaxTripletLoss

LABELS = torch.tensor([0, 0, 0, 1, 2])
SCORE = torch.tensor(
    [
        [9.0, 2.0, 3.0, 1.5, 0.0],
        [2.0, 9.0, 4.0, 0.0, 3.5],
        [3.0, 4.0, 9.0, -1.0, -2.0],
        [1.0, 1.0, 1.0, 9.0, 1.0],
        [0.0, 0.0, 0.0, 0.0, 9.0],
    ]
)


def test_batch_hard_triplet_by_hand() -> None:
    # rows 3 and 4 have no positive: excluded. min_pos / max_neg:
    # row 0: min(2, 3) = 2, max(1.5, 0) = 1.5 -> max(0, 1 - 0.5) = 0.5, right
    # row 1: min(2, 4) = 2, max(0, 3.5) = 3.5 -> 1 + 1.5 = 2.5, wrong
    # row 2: min(3, 4) = 3, max(-1, -2) = -1 -> max(0, 1 - 4) = 0, right
    loss, acc = SoftmaxTripletLoss(margin=1.0).triplet(SCORE, LABELS)
    assert loss.item() == pytest.approx((0.5 + 2.5 + 0.0) / 3)
    assert acc.item() == pytest.approx(2 / 3)
    loss2, _ = SoftmaxTripletLoss(margin=3.0).triplet(SCORE, LABELS)
    assert loss2.item() == pytest.approx((2.5 + 4.5 + 0.0) / 3)


def test_triplet_without_valid_rows_is_zero_not_nan() -> None:
    loss, acc = SoftmaxTripletLoss().triplet(torch.randn(3, 3), torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0 and acc.item() == 0.0
    loss, _ = SoftmaxTripletLoss().triplet(torch.randn(2, 2), torch.tensor([4, 4]))  # no negatives
    assert loss.item() == 0.0


def test_class_memory_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 3.0, 100.0], [1.0, 2.0, 3.0]])
    valid = torch.tensor([[True, True, True], [True, True, False], [False, False, False]])
    loss, acc, rows = SoftmaxTripletLoss.class_memory_loss(logits, valid)
    row0 = -2.0 + math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.0))
    row1 = -0.5 + math.log(math.exp(0.5) + math.exp(3.0))  # the invalid 100 is masked out; row 2 excluded
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert acc.item() == pytest.approx(0.5) and rows.item() == 2


def test_class_memory_rows_with_one_valid_logit_do_not_count() -> None:
    """A row whose only valid logit is its own class has CE 0 and accuracy 1 whatever the model: excluded."""
    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0]])
    loss, acc, rows = SoftmaxTripletLoss.class_memory_loss(logits, torch.tensor([[True, False], [True, True]]))
    assert rows.item() == 1
    assert loss.item() == pytest.approx(-0.0 + math.log(1 + math.e), rel=1e-6) and acc.item() == 0.0
    _, _, rows = SoftmaxTripletLoss.class_memory_loss(logits, torch.tensor([[True, False], [True, False]]))
    assert rows.item() == 0


def test_class_memory_without_rows_is_zero_and_gradient_flows() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    loss, _, _ = SoftmaxTripletLoss.class_memory_loss(logits, torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss, _, _ = SoftmaxTripletLoss.class_memory_loss(logits, torch.tensor([[True, True, False], [False] * 3]))
    loss.backward()
    assert logits.grad[0, :2].abs().sum() > 0 and torch.all(logits.grad[0, 2] == 0) and torch.all(logits.grad[1] == 0)


def test_forward_returns_all_parts() -> None:
    valid = torch.ones(5, 2, dtype=torch.bool)
    out = SoftmaxTripletLoss()(SCORE, LABELS, torch.zeros(5, 2), valid)
    assert out.cls_loss.item() == pytest.approx(math.log(2))
    assert out.triplet_loss.item() == pytest.approx(1.0)
    assert out.cls_acc.item() == 1.0  # ties resolve to column 0
    assert out.triplet_acc.item() == pytest.approx(2 / 3) and out.cls_rows.item() == 5


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        SoftmaxTripletLoss(margin=float("nan"))
    with pytest.raises(ValueError):
        SoftmaxTripletLoss.class_memory_loss(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))
