"""Tests of oaml.losses.combined: the weighted total, disabled components and non-finite reporting."""

from __future__ import annotations

import math

import pytest
import torch

from oaml.losses.combined import CombinedLoss, nonfinite_components

LABELS = torch.tensor([0, 0, 1, 1])


def _inputs() -> dict[str, torch.Tensor]:
    score = torch.tensor([[5.0, 1.0, -1.0, 0.0], [1.0, 5.0, 0.5, -2.0], [-1.0, 0.5, 5.0, 2.0], [0.0, -2.0, 2.0, 5.0]])
    return {
        "adaface_loss": torch.tensor(math.log(3)),  # the head's cross-entropy
        "qaconv_score": score,
        "memory_logits": torch.zeros(4, 2),  # cross-entropy = log 2
        "memory_valid": torch.ones(4, 2, dtype=torch.bool),
        "occlusion": torch.full((4, 1, 2, 2), 0.5),
        "occlusion_target": torch.ones(4, 1, 2, 2),  # MSE = 0.25
    }


def _bce(x: float, y: float) -> float:
    return math.log1p(math.exp(x)) - y * x


def test_total_matches_the_formula() -> None:
    inputs = _inputs()
    score = inputs["qaconv_score"]
    same = (LABELS[:, None] == LABELS[None, :]).float()
    pairwise = sum(_bce(score[i, j].item(), same[i, j].item()) for i in range(4) for j in range(4)) / 4
    # batch-hard: min_pos = 1, 1, 2, 2; max_neg = 0, 0.5, 0.5, 0 -> hinge 0, 0.5, 0, 0
    triplet = 0.5 / 4
    expected = 0.1 * math.log(3) + 0.7 * (pairwise + 0.5 * (math.log(2) + triplet)) + 0.3 * 0.25
    total, parts = CombinedLoss()(LABELS, **inputs)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert set(parts) == {"adaface", "pairwise", "pairwise_acc", "cls", "cls_acc", "triplet", "triplet_acc",
                          "occlusion", "total"}
    assert parts["triplet"].item() == pytest.approx(triplet)
    assert parts["occlusion"].item() == pytest.approx(0.25)
    assert all(not value.requires_grad for value in parts.values())


def test_class_memory_term_is_absent_until_a_sample_has_a_neighbour() -> None:
    inputs = _inputs()
    inputs["memory_valid"] = torch.zeros_like(inputs["memory_valid"]).index_fill_(1, torch.tensor([0]), True)
    total, parts = CombinedLoss()(LABELS, **inputs)
    assert "cls" not in parts and "cls_acc" not in parts and "triplet" in parts
    with_memory, _ = CombinedLoss()(LABELS, **_inputs())
    assert total.item() == pytest.approx(with_memory.item() - 0.7 * 0.5 * math.log(2), rel=1e-6)


def test_disabled_components_are_not_computed() -> None:
    loss = CombinedLoss(adaface_weight=1.0, qaconv_weight=0.0, occlusion_weight=0.0)
    assert (loss.uses_adaface, loss.uses_qaconv, loss.uses_class_memory, loss.uses_occlusion) == (True, False, False,
                                                                                                 False)
    total, parts = loss(LABELS, adaface_loss=torch.tensor(math.log(3)))
    assert set(parts) == {"adaface", "total"} and total.item() == pytest.approx(math.log(3))
    no_triplet = CombinedLoss(adaface_weight=0.0, triplet_weight=0.0, occlusion_weight=0.0)
    _, parts = no_triplet(LABELS, qaconv_score=_inputs()["qaconv_score"])
    assert set(parts) == {"pairwise", "pairwise_acc", "total"}


def test_missing_inputs_and_bad_weights() -> None:
    with pytest.raises(ValueError, match="qaconv_score"):
        CombinedLoss()(LABELS, adaface_loss=torch.tensor(math.log(3)))
    with pytest.raises(ValueError, match="occlusion_weight"):
        CombinedLoss(occlusion_weight=-1.0)
    with pytest.raises(ValueError, match="at least one"):
        CombinedLoss(adaface_weight=0.0, qaconv_weight=0.0, occlusion_weight=0.0)


def test_nonfinite_values_are_reported_not_replaced() -> None:
    inputs = _inputs()
    inputs["occlusion"] = torch.full((4, 1, 2, 2), float("nan"))
    total, parts = CombinedLoss()(LABELS, **inputs)
    assert math.isnan(total.item())
    assert nonfinite_components(parts) == ["occlusion", "total"]
    assert nonfinite_components({"a": 1.0, "b": float("inf"), "c": torch.tensor(2.0)}) == ["b"]
