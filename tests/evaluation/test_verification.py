"""Tests for oaml.evaluation.verification: hand-computed cases, reference loops and closed-form ROC values."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold

from oaml.evaluation.verification import (DISTANCE_THRESHOLDS, Omitted, TarPoint, combined_ten_fold_accuracy,
                                          count_genuine_impostor, dynamic_weights, fold_bounds,
                                          genuine_impostor_pairs, roc, tar_at_far, ten_fold_accuracy)

PHI = NormalDist()


# --- reference implementations (straightforward loops, as arcface_torch/eval/verification.py) -----------------

def _accuracy(threshold: float, dist: np.ndarray, issame: np.ndarray) -> float:
    pred = np.less(dist, threshold)
    tp = np.sum(np.logical_and(pred, issame))
    tn = np.sum(np.logical_and(np.logical_not(pred), np.logical_not(issame)))
    return float(tp + tn) / dist.size


def reference_ten_fold(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray = DISTANCE_THRESHOLDS):
    accs, chosen = [], []
    for train, test in KFold(n_splits=10, shuffle=False).split(np.arange(dist.size)):
        acc_train = np.array([_accuracy(t, dist[train], issame[train]) for t in thresholds])
        best = thresholds[np.argmax(acc_train)]
        accs.append(_accuracy(best, dist[test], issame[test]))
        chosen.append(best)
    return np.mean(accs), accs, chosen


def _best_train_accuracy(values: np.ndarray, same: np.ndarray) -> float:
    """Max over every possible threshold of the training accuracy of ``score > t`` (brute force)."""
    cuts = np.concatenate([[-np.inf], np.unique(values)])
    return max(np.mean((values > t) == same) for t in cuts)


# --- 10-fold accuracy ---------------------------------------------------------------------------------------------

def _one_hard_genuine() -> tuple[np.ndarray, np.ndarray]:
    """10 folds of (genuine 0.5, impostor 1.5); fold 3's genuine is a hard 2.0."""
    d = np.tile([0.5, 1.5], 10)
    same = np.tile([True, False], 10)
    d[6] = 2.0
    return d, same


def test_perfectly_separable_is_one() -> None:
    d, same = np.tile([0.2, 3.0], 50), np.tile([True, False], 50)
    res = ten_fold_accuracy(d, same, higher_is_same=False)
    assert res.accuracy == 1.0 and res.std == 0.0 and res.fold_accuracies == (1.0,) * 10
    assert all(0.2 < t <= 3.0 for t in res.thresholds)


def test_hand_computed_held_out_fold() -> None:
    # Every training set is separable at any t in (0.5, 1.5]: the first grid point is 0.51. Held out, fold 3's
    # genuine pair (d = 2.0) is rejected: 1/2; the other folds score 1. Mean (9 + 0.5) / 10.
    d, same = _one_hard_genuine()
    res = ten_fold_accuracy(d, same, higher_is_same=False)
    assert res.fold_accuracies == (1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert res.accuracy == pytest.approx(0.95) and res.std == pytest.approx(0.15)
    assert res.thresholds == (DISTANCE_THRESHOLDS[51],) * 10
    assert res.fold_sizes == (2,) * 10 and not res.higher_is_same


def test_hand_computed_similarity_midpoints() -> None:
    # Same data as similarities: candidates are midpoints of distinct training values, so -1.0 (between -0.5 and
    # -1.5) is the chosen score threshold for every fold; same iff score > -1.0.
    d, same = _one_hard_genuine()
    res = ten_fold_accuracy(-d, same, higher_is_same=True)
    assert res.fold_accuracies[3] == 0.5 and res.accuracy == pytest.approx(0.95)
    assert res.thresholds == (-1.0,) * 10 and res.higher_is_same


@pytest.mark.parametrize("n, seed, dtype", [(600, 0, np.float32), (613, 1, np.float64), (6000, 2, np.float32)])
def test_matches_reference_loop(n: int, seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    d = np.clip(np.where(same, rng.normal(1.0, 0.35, n), rng.normal(1.6, 0.35, n)), 0, 4).astype(dtype)
    d[::7] = DISTANCE_THRESHOLDS[rng.integers(0, 400, d[::7].size)]  # values exactly on the grid: strict <
    mean, accs, chosen = reference_ten_fold(d, same)
    res = ten_fold_accuracy(d, same, higher_is_same=False)
    assert res.fold_accuracies == tuple(accs)
    assert res.thresholds == tuple(chosen)
    assert res.accuracy == mean


def test_explicit_grid_for_similarities_matches_reference() -> None:
    rng = np.random.default_rng(3)
    same = rng.random(500) < 0.5
    score = np.where(same, rng.normal(1, 1, 500), rng.normal(-1, 1, 500))
    grid = np.linspace(-3, 3, 61)
    res = ten_fold_accuracy(score, same, higher_is_same=True, thresholds=grid)
    mean, accs, chosen = reference_ten_fold(-score, same, thresholds=-grid)
    assert res.fold_accuracies == tuple(accs) and res.thresholds == tuple(-np.asarray(chosen))


def test_auto_thresholds_for_distances() -> None:
    rng = np.random.default_rng(4)
    same = rng.random(300) < 0.5
    d = np.where(same, rng.normal(1, 0.3, 300), rng.normal(1.5, 0.3, 300))
    auto = ten_fold_accuracy(d, same, higher_is_same=False, thresholds="auto")
    sim = ten_fold_accuracy(-d, same, higher_is_same=True)
    assert auto.fold_accuracies == sim.fold_accuracies
    assert auto.thresholds == tuple(-t for t in sim.thresholds)


@settings(max_examples=40, deadline=None)
@given(st.integers(20, 200), st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2]))
def test_similarity_threshold_is_training_optimal(n: int, seed: int, decimals: int) -> None:
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    score = np.round(rng.normal(0, 1, n) * 5 + same * rng.uniform(0, 10), decimals)  # rounding makes ties
    res = ten_fold_accuracy(score, same, higher_is_same=True)
    for (a, b), t, acc in zip(fold_bounds(n), res.thresholds, res.fold_accuracies):
        train = np.ones(n, dtype=bool)
        train[a:b] = False
        assert np.mean((score[train] > t) == same[train]) == _best_train_accuracy(score[train], same[train])
        assert acc == np.mean((score[a:b] > t) == same[a:b])


@pytest.mark.parametrize("n", [10, 23, 6000, 7001])
def test_fold_bounds_match_sklearn_kfold(n: int) -> None:
    expected = [(int(t[0]), int(t[-1]) + 1) for _, t in KFold(10, shuffle=False).split(np.arange(n))]
    assert fold_bounds(n) == expected


# --- combined accuracy --------------------------------------------------------------------------------------------

def test_combined_matches_reference_standardisation() -> None:
    # Reference: z-scores from the training folds, then the chosen threshold must be training-optimal on them
    # and must give the reported held-out accuracy.
    rng = np.random.default_rng(5)
    n, wa, wq = 400, 0.7, 0.3
    same = rng.random(n) < 0.5
    da = np.where(same, rng.normal(0.9, 0.3, n), rng.normal(1.5, 0.3, n))
    qa = np.where(same, rng.normal(3, 4, n), rng.normal(-2, 4, n))
    res = combined_ten_fold_accuracy(da, qa, same, wa, wq)
    assert res.higher_is_same and res.accuracy > 0.85
    for (a, b), t, acc in zip(fold_bounds(n), res.thresholds, res.fold_accuracies):
        tr = np.ones(n, dtype=bool)
        tr[a:b] = False
        z = wa * (da[tr].mean() - da) / da[tr].std() + wq * (qa - qa[tr].mean()) / qa[tr].std()
        assert np.mean((z[tr] > t) == same[tr]) == pytest.approx(_best_train_accuracy(z[tr], same[tr]))
        assert acc == np.mean((z[a:b] > t) == same[a:b])


def test_combined_uses_training_fold_statistics_only() -> None:
    # Folds 1-9: genuine (d=0.5, q=1), impostor (d=1.5, q=-1). Fold 0's QAConv scores are shifted by +10 (q = 11
    # and 9). Training stats of folds 1-9: d ~ (1, 0.5), q ~ (0, 1), fused = +-1, threshold 0. Held-out fold 0
    # fuses to 6 and 4: both "same", accuracy 1/2. Standardising with the test fold's own stats (q ~ (10, 1))
    # would give +-1 and accuracy 1, so the two approaches differ here.
    d = np.tile([0.5, 1.5], 10)
    q = np.tile([1.0, -1.0], 10)
    q[:2] = [11.0, 9.0]
    same = np.tile([True, False], 10)
    res = combined_ten_fold_accuracy(d, q, same)
    assert res.fold_accuracies[0] == 0.5
    assert res.thresholds[0] == 0.0
    z_test = 0.5 * -(d[:2] - d[:2].mean()) / d[:2].std() + 0.5 * (q[:2] - q[:2].mean()) / q[:2].std()
    assert np.mean((z_test > 0.0) == same[:2]) == 1.0  # what test-set statistics would have reported


def test_combined_constant_method_carries_no_weight() -> None:
    rng = np.random.default_rng(6)
    same = rng.random(200) < 0.5
    da = np.where(same, rng.normal(0.9, 0.3, 200), rng.normal(1.5, 0.3, 200))
    alone = ten_fold_accuracy(-da, same, higher_is_same=True)
    fused = combined_ten_fold_accuracy(da, np.zeros(200), same)
    assert fused.fold_accuracies == alone.fold_accuracies


@pytest.mark.parametrize("acc, configured, expected", [(0.49, (0.5, 0.5), (0.8, 0.2)), (0.5, (0.5, 0.5), (0.5, 0.5)),
                                                       (0.9, (0.6, 0.4), (0.6, 0.4)), (0.0, (0.6, 0.4), (0.8, 0.2))])
def test_dynamic_weights(acc: float, configured: tuple[float, float], expected: tuple[float, float]) -> None:
    assert dynamic_weights(acc, configured) == expected


# --- genuine / impostor enumeration -------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", [np.repeat([3, 7, 1, 9], [1, 2, 5, 10]),
                                    np.array(list("abbcccccddddddddddd"[:18]))])
def test_genuine_counts_exact(labels: np.ndarray) -> None:
    rng = np.random.default_rng(8)
    labels = rng.permutation(labels)
    _, counts = np.unique(labels, return_counts=True)
    genuine = sum(c * (c - 1) // 2 for c in counts.tolist())
    i, j, same = genuine_impostor_pairs(labels)
    assert (i < j).all() and i.size == 18 * 17 // 2
    assert int(same.sum()) == genuine == 56
    assert count_genuine_impostor(labels) == (56, 153 - 56)
    assert np.array_equal(same, labels[i] == labels[j])


def test_pair_guard_and_single_image() -> None:
    with pytest.raises(ValueError, match="max_pairs"):
        genuine_impostor_pairs(np.arange(100), max_pairs=1000)
    with pytest.raises(ValueError, match="at least 2"):
        genuine_impostor_pairs(np.array([1]))


# --- ROC, EER, TAR@FAR --------------------------------------------------------------------------------------------

def test_roc_hand_computed() -> None:
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    same = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    r = roc(scores, same)
    np.testing.assert_allclose(r.tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(r.fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert r.auc == pytest.approx(8 / 9) and r.eer == pytest.approx(1 / 3) and r.eer_threshold == 0.7
    rd = roc(-scores, same, higher_is_same=False)  # as distances: same iff d <= threshold
    np.testing.assert_array_equal(rd.tpr, r.tpr)
    np.testing.assert_array_equal(rd.thresholds, -r.thresholds)


def test_roc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(9)
    same = rng.random(5000) < 0.3
    scores = np.round(rng.normal(0, 1, 5000) + same, 1)  # heavy ties
    r = roc(scores, same)
    fpr, tpr, thr = roc_curve(same, scores, drop_intermediate=False)
    np.testing.assert_allclose(r.fpr, fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(r.tpr, tpr, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(r.thresholds[1:], thr[1:])
    assert r.auc == pytest.approx(roc_auc_score(same, scores), abs=1e-12)


def test_gaussian_closed_form_tar_eer_auc() -> None:
    # genuine ~ N(mu, 1), impostor ~ N(0, 1): TAR@FAR=f = 1 - Phi(Phi^-1(1 - f) - mu), EER = Phi(-mu/2),
    # AUC = Phi(mu / sqrt 2). Tolerances are 5 standard errors of the estimates (delta method).
    mu, n = 2.0, 200_000
    rng = np.random.default_rng(10)
    scores = np.concatenate([rng.normal(mu, 1, n), rng.normal(0, 1, n)])
    same = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    r = roc(scores, same)
    points = tar_at_far(r)
    for far in (1e-1, 1e-2, 1e-3, 1e-4):
        z = PHI.inv_cdf(1 - far)
        tar = 1 - PHI.cdf(z - mu)
        ratio = PHI.pdf(z - mu) / PHI.pdf(z)  # d TAR / d FAR along the ROC
        se = math.sqrt(tar * (1 - tar) / n + ratio**2 * far * (1 - far) / n)
        point = points[far]
        assert isinstance(point, TarPoint) and point.far_achieved <= far
        assert point.tar == pytest.approx(tar, abs=5 * se)
    eer = PHI.cdf(-mu / 2)
    assert r.eer == pytest.approx(eer, abs=5 * math.sqrt(eer * (1 - eer) / n))
    assert r.auc == pytest.approx(PHI.cdf(mu / math.sqrt(2)), abs=0.003)
    assert points[1e-5] == TarPoint(points[1e-5].tar, points[1e-5].threshold, points[1e-5].far_achieved)
    assert points[1e-6] == Omitted("needs >= 1000000 impostor pairs, have 200000")


def test_tar_at_far_from_scores_and_omission_reasons() -> None:
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    same = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    pts = tar_at_far(scores, same, fars=(1.0, 0.5, 0.4, 0.1))
    assert pts[1.0] == TarPoint(1.0, 0.2, 1.0)
    assert pts[0.5] == TarPoint(1.0, 0.4, 1 / 3)
    assert pts[0.4] == TarPoint(1.0, 0.4, 1 / 3)
    assert pts[0.1] == Omitted("needs >= 10 impostor pairs, have 3")


# --- input validation ---------------------------------------------------------------------------------------------

GOOD = np.linspace(0, 2, 20)
SAME = np.tile([True, False], 10)


@pytest.mark.parametrize("call, match", [
    (lambda: ten_fold_accuracy(GOOD, SAME[:-1], higher_is_same=False), "issame has 19"),
    (lambda: ten_fold_accuracy(np.r_[GOOD[:-1], np.nan], SAME, higher_is_same=False), "scores has 1 non-finite"),
    (lambda: ten_fold_accuracy(GOOD.reshape(2, 10), SAME, higher_is_same=False), "scores must be 1-D"),
    (lambda: ten_fold_accuracy(GOOD, np.arange(20), higher_is_same=False), "issame must be boolean"),
    (lambda: ten_fold_accuracy(GOOD[:5], SAME[:5], higher_is_same=False), "n_folds"),
    (lambda: ten_fold_accuracy(GOOD, SAME, higher_is_same=True, thresholds="grid"), "thresholds"),
    (lambda: ten_fold_accuracy(np.array([], float), SAME[:0], higher_is_same=True), "scores is empty"),
    (lambda: combined_ten_fold_accuracy(GOOD, GOOD[:-1], SAME), "score_qaconv has 19"),
    (lambda: combined_ten_fold_accuracy(GOOD, GOOD, SAME, w_qaconv=-1.0), "w_qaconv"),
    (lambda: combined_ten_fold_accuracy(GOOD, GOOD, SAME, 0.0, 0.0), "both 0"),
    (lambda: roc(GOOD, np.ones(20, bool)), "labels_same needs genuine and impostor"),
    (lambda: tar_at_far(GOOD, SAME, fars=(0.0,)), "fars"),
    (lambda: tar_at_far(GOOD), "labels_same is required"),
    (lambda: dynamic_weights(float("nan")), "qaconv_acc"),
    (lambda: genuine_impostor_pairs(np.array([[1, 2]])), "labels must be 1-D"),
])
def test_bad_input_names_the_argument(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
