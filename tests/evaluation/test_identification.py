"""Tests of ``oaml.evaluation.identification``: rank-k, CMC, FPIR, DIR and DET on hand-computed examples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oaml.evaluation.identification import (CmcResult, DirPoint, OpenSetResult, cmc_from_ranks, cmc_from_scores,
                                            cmc_from_top, identification_metrics, open_set, open_set_from_scores,
                                            ranks_from_scores, ranks_from_top)
from oaml.evaluation.report import to_jsonable
from oaml.evaluation.verification import Omitted

GALLERY = ["A", "B", "C"]

# Closed set, 4 probes x 3 identities (columns A, B, C):
#   p0 truth A: A = 0.9 is the maximum                       -> rank 1
#   p1 truth B: B = 0.5, only C = 0.8 is higher                -> rank 2
#   p2 truth C: C = 0.4 is the lowest                           -> rank 3
#   p3 truth B: B = 0.3 ties with A = 0.3 (ties count against) -> rank 2
# CMC: rank-1 = 1/4, rank-2 = 3/4, rank-3 = 4/4; rank-5 = rank-3 (the curve covers all 3 identities).
CLOSED = np.array([[0.9, 0.1, 0.3],
                   [0.2, 0.5, 0.8],
                   [0.7, 0.6, 0.4],
                   [0.3, 0.3, 0.1]])
CLOSED_TRUTH = ["A", "B", "C", "B"]

# Open set, 5 probes: p0..p2 enrolled (A, B, C), p3 = X and p4 = Y are not enrolled.
#   p0 top A 0.9 (correct) | p1 top A 0.6 (wrong, truth B) | p2 top C 0.7 (correct)
#   p3 top 0.8             | p4 top 0.4
# Thresholds (distinct top scores, descending, after +inf): inf, 0.9, 0.8, 0.7, 0.6, 0.4
#   FPIR = #{non-enrolled top >= t} / 2          : 0, 0,   1/2, 1/2, 1/2, 1
#   DIR  = #{correct rank-1 and score >= t} / 3  : 0, 1/3, 1/3, 2/3, 2/3, 2/3
# DIR@FPIR=0.5 (needs >= 2 non-enrolled): last point with FPIR <= 0.5 is t = 0.6 -> DIR 2/3.
# DIR@FPIR=0.1 needs >= 10 non-enrolled probes -> omitted.
OPEN = np.array([[0.9, 0.2, 0.1],
                 [0.6, 0.5, 0.1],
                 [0.1, 0.2, 0.7],
                 [0.8, 0.1, 0.2],
                 [0.3, 0.4, 0.2]])
OPEN_TRUTH = ["A", "B", "C", "X", "Y"]


def test_closed_set_ranks_and_cmc_by_hand() -> None:
    truth = np.array([0, 1, 2, 1])
    np.testing.assert_array_equal(ranks_from_scores(CLOSED, truth), [1, 2, 3, 2])
    cmc = cmc_from_scores(CLOSED, GALLERY, CLOSED_TRUTH)
    assert cmc.rates == pytest.approx((0.25, 0.75, 1.0))
    assert cmc.rank(1) == 0.25 and cmc.rank(5) == 1.0
    assert (cmc.n_probes, cmc.n_identities, cmc.max_rank) == (4, 3, 3)
    assert cmc_from_scores(CLOSED, GALLERY, CLOSED_TRUTH, max_rank=2).rates == pytest.approx((0.25, 0.75))


def test_constant_scores_give_the_worst_rank() -> None:
    cmc = cmc_from_scores(np.zeros((2, 4)), [0, 1, 2, 3], [1, 3])
    assert cmc.rates == (0.0, 0.0, 0.0, 1.0)


def test_ranks_from_top_lists() -> None:
    top = np.array([["A", "B"], ["C", "B"], ["C", "A"]], dtype=object)
    np.testing.assert_array_equal(ranks_from_top(top, ["A", "B", "B"]), [1, 2, 0])  # 0: not in the list
    cmc = cmc_from_top(top, ["A", "B", "B"], n_identities=3)
    assert cmc.rates == pytest.approx((1 / 3, 2 / 3))
    with pytest.raises(ValueError, match="rank-5 needs ranked lists of length >= 5"):
        cmc.rank(5)  # 2-long lists over 3 identities: rank 3+ is unknown
    assert isinstance(cmc.rank_or_omitted(5), Omitted)
    assert cmc.to_dict()["rank_5"] == {"reason": "rank-5 needs ranked lists of length >= 5; this CMC stops at rank 2"}


def test_cmc_from_top_agrees_with_the_score_matrix_without_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 12))
    truth = rng.integers(0, 12, 50)
    top = np.argsort(-scores, axis=1)
    expected = [np.mean([np.flatnonzero(top[p] == truth[p])[0] < k for p in range(50)]) for k in range(1, 13)]
    assert cmc_from_top(top, truth, 12).rates == pytest.approx(expected)
    assert cmc_from_scores(scores, np.arange(12), truth).rates == pytest.approx(expected)


def test_open_set_by_hand() -> None:
    res = open_set_from_scores(OPEN, GALLERY, OPEN_TRUTH, fpirs=(0.5, 0.1))
    np.testing.assert_allclose(res.thresholds, [np.inf, 0.9, 0.8, 0.7, 0.6, 0.4])
    np.testing.assert_allclose(res.fpir, [0, 0, 0.5, 0.5, 0.5, 1])
    np.testing.assert_allclose(res.dir, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(res.fnir, 1 - res.dir)
    assert res.dir_at_fpir[0.5] == DirPoint(dir=pytest.approx(2 / 3), threshold=0.6, fpir_achieved=0.5)
    assert res.dir_at_fpir[0.1] == Omitted("needs >= 10 non-enrolled probes, have 2")
    assert (res.n_enrolled, res.n_non_enrolled) == (3, 2)


def test_dir_at_fpir_1e1_with_ten_non_enrolled_probes() -> None:
    # Non-enrolled tops 0.05, 0.15, ..., 0.95. FPIR <= 0.1 allows one of them at or above t, so t > 0.85.
    # Enrolled: correct at 0.99, 0.9 and 0.5, wrong at 0.97. Thresholds above 0.85: 0.99, 0.97, 0.95, 0.9;
    # the lowest, t = 0.9, has FPIR 1/10 and DIR = #{0.99, 0.9} / 4 = 0.5. FPIR = 1e-2 needs 100 -> omitted.
    non = np.arange(10) / 10 + 0.05
    res = open_set(np.array([0.99, 0.9, 0.5, 0.97]), np.array([True, True, True, False]), non)
    assert res.dir_at_fpir[0.1] == DirPoint(dir=0.5, threshold=0.9, fpir_achieved=0.1)
    assert res.dir_at_fpir[0.01] == Omitted("needs >= 100 non-enrolled probes, have 10")
    assert res.fpir[0] == 0 and res.dir[0] == 0 and res.fpir[-1] == 1 and res.dir[-1] == 0.75
    assert np.all(np.diff(res.fpir) >= 0) and np.all(np.diff(res.dir) >= 0)


def test_identification_metrics_from_top_lists() -> None:
    top = np.array([["A", "B"], ["A", "B"], ["C", "A"], ["A", "C"], ["B", "A"]], dtype=object)
    scores = np.array([[0.9, 0.2], [0.6, 0.5], [0.7, 0.2], [0.8, 0.2], [0.4, 0.3]])
    res = identification_metrics(top, scores, OPEN_TRUTH, GALLERY, fpirs=(0.5,))
    assert (res.n_probes, res.n_enrolled, res.n_non_enrolled) == (5, 3, 2)
    assert isinstance(res.closed_set, CmcResult) and res.closed_set.rates == pytest.approx((2 / 3, 1.0))
    assert isinstance(res.open_set, OpenSetResult)
    by_matrix = open_set_from_scores(OPEN, GALLERY, OPEN_TRUTH, fpirs=(0.5,))
    np.testing.assert_allclose(res.open_set.fpir, by_matrix.fpir)
    np.testing.assert_allclose(res.open_set.dir, by_matrix.dir)
    out = json.loads(json.dumps(to_jsonable(res.to_dict(include_curve=True))))
    assert out["closed_set"]["rank_1"] == pytest.approx(2 / 3)
    assert out["open_set"]["dir_at_fpir"]["0.5"]["dir"] == pytest.approx(2 / 3)
    assert out["open_set"]["thresholds"][0] == "inf"


def test_closed_set_only_and_open_set_omitted() -> None:
    top = np.array([["A"], ["B"]], dtype=object)
    res = identification_metrics(top, np.array([[0.9], [0.8]]), ["A", "A"], GALLERY)
    assert res.open_set == Omitted("no non-enrolled probes")
    assert isinstance(res.closed_set, CmcResult) and res.closed_set.rates == (0.5,)
    res = identification_metrics(top, np.array([[0.9], [0.8]]), ["X", "Y"], GALLERY)
    assert res.closed_set == Omitted("no enrolled probes") and res.open_set == Omitted("no enrolled probes")


@pytest.mark.parametrize("call, match", [
    (lambda: cmc_from_scores(np.zeros((0, 3)), GALLERY, []), "non-empty P x I"),
    (lambda: cmc_from_scores(CLOSED, GALLERY, ["A", "B"]), "has 2 entries, expected 4"),
    (lambda: cmc_from_scores(CLOSED, ["A", "B"], CLOSED_TRUTH), "gallery_identities has 2 entries, expected 3"),
    (lambda: cmc_from_scores(CLOSED, GALLERY, ["A", "B", "Z", "Q"]), "unknown identity names: Z, Q"),
    (lambda: cmc_from_scores(np.full((1, 3), np.nan), GALLERY, ["A"]), "non-finite"),
    (lambda: cmc_from_scores(CLOSED, ["A", "A", "B"], CLOSED_TRUTH), "must not repeat"),
    (lambda: cmc_from_ranks(np.array([1, 4]), 3, 3), r"ranks must lie in \[0, 3\]"),
    (lambda: ranks_from_scores(CLOSED, np.array([0, 1, 2, 3])), "column indices"),
    (lambda: open_set(np.array([0.5]), np.array([True, False]), np.array([0.1])), "must hold 1 booleans"),
    (lambda: open_set(np.array([0.5]), np.array([True]), np.array([])), "non-empty 1-D"),
    (lambda: open_set(np.array([0.5]), np.array([True]), np.array([0.1]), fpirs=(0.0,)), r"\(0, 1\]"),
    (lambda: open_set_from_scores(CLOSED, GALLERY, CLOSED_TRUTH), "enrolled and non-enrolled"),
    (lambda: identification_metrics(np.array([["Z"]], dtype=object), np.array([[0.5]]), ["A"], GALLERY),
     "unknown identity names: Z"),
    (lambda: identification_metrics(np.array([["A"]], dtype=object), np.array([[0.5, 0.1]]), ["A"], GALLERY),
     "top_scores P x k or P"),
])
def test_bad_inputs_raise_one_line_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
