"""Validation summaries: de-duplication of DDP repeats and per-set accuracies from the shared metric code."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oaml.evaluation.verification import ten_fold_accuracy
from oaml.training.validation import PairScores, summarise_pairs


def _pairs(n_per_set: int, sets: int, rng: np.random.Generator) -> PairScores:
    n = n_per_set * sets
    issame = np.tile(np.repeat([True, False], n_per_set // 2), sets)
    dist = np.where(issame, rng.uniform(0.2, 1.0, n), rng.uniform(0.8, 2.0, n))
    qa = np.where(issame, 1.0, -1.0) + rng.normal(0, 0.1, n)
    return PairScores(np.arange(n), np.repeat(np.arange(sets), n_per_set), issame, dist, qa)


def test_separable_sets_score_one_and_average_over_present_sets() -> None:
    scores = _pairs(200, 2, np.random.default_rng(0))
    scores.dist_adaface = np.where(scores.issame, 0.5, 1.5)
    metrics = summarise_pairs(scores, ["lfw", "calfw"])
    for key in ("lfw_adaface_acc", "lfw_qaconv_acc", "lfw_combined_acc", "avg_combined_acc"):
        assert metrics[key] == pytest.approx(1.0)
    assert "cplfw_adaface_acc" not in metrics


def test_repeated_pairs_from_ddp_padding_count_once() -> None:
    scores = _pairs(100, 1, np.random.default_rng(1))
    padded = PairScores(*(np.concatenate([a, a[:7]]) for a in (scores.pair_index, scores.set_index, scores.issame,
                                                               scores.dist_adaface, scores.score_qaconv)))
    shuffled = np.random.default_rng(2).permutation(len(padded.pair_index))
    padded = PairScores(*(a[shuffled] for a in (padded.pair_index, padded.set_index, padded.issame,
                                                 padded.dist_adaface, padded.score_qaconv)))
    expected = ten_fold_accuracy(scores.dist_adaface, scores.issame, higher_is_same=False).accuracy
    assert summarise_pairs(padded, ["lfw"])["lfw_adaface_acc"] == pytest.approx(expected)


def test_without_qaconv_combined_is_adaface_and_qaconv_is_nan() -> None:
    scores = _pairs(100, 1, np.random.default_rng(3))
    scores.score_qaconv = None
    metrics = summarise_pairs(scores, ["agedb_30"], prefix="masked_")
    assert metrics["masked_agedb_30_combined_acc"] == metrics["masked_agedb_30_adaface_acc"]
    assert math.isnan(metrics["masked_agedb_30_qaconv_acc"])
