"""Visibility-aware fusion: fitted on training folds only, and it learns to trust QAConv where faces are hidden."""

from __future__ import annotations

import numpy as np
import pytest

from oaml.evaluation.fusion import (cross_fitted_scores, fit_visibility_fusion, occlusion_amount,
                                    visibility_ten_fold)
from oaml.evaluation.verification import combined_ten_fold_accuracy


def _pairs(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Half the pairs clean (both scores informative), half occluded (AdaFace is noise there, QAConv is not)."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    occluded = np.arange(n) % 2 == 1
    signal = np.where(same, 1.0, -1.0)
    ada = signal * np.where(occluded, 0.0, 1.5) + rng.normal(0, 1, n)  # similarity
    qa = signal * 1.0 + rng.normal(0, 1, n)
    u = np.where(occluded, 1.2, 0.05) + rng.uniform(0, 0.05, n)
    return -ada, qa, u, same  # AdaFace enters as a distance


def test_occlusion_amount() -> None:
    assert occlusion_amount(np.array([1.0, 0.5, 1.2]), np.array([1.0, 0.25, -0.1])).tolist() == [0.0, 1.25, 1.0]
    with pytest.raises(ValueError, match="entries"):
        occlusion_amount(np.ones(2), np.ones(3))


def test_fusion_trusts_qaconv_more_where_the_pair_is_hidden() -> None:
    dist, qa, u, same = _pairs()
    fusion = fit_visibility_fusion(dist, qa, u, same)
    (ada_clean, qa_clean), (ada_hidden, qa_hidden) = fusion.weights(0.05), fusion.weights(1.2)
    assert qa_hidden / abs(ada_hidden) > qa_clean / ada_clean
    fixed = combined_ten_fold_accuracy(dist, qa, same).accuracy
    assert visibility_ten_fold(dist, qa, u, same).accuracy > fixed + 0.02


def test_held_out_labels_never_reach_their_fold() -> None:
    dist, qa, u, same = _pairs(500, seed=1)
    flipped = same.copy()
    flipped[:50] = ~flipped[:50]  # the first of 10 folds
    base, other = cross_fitted_scores(dist, qa, u, same), cross_fitted_scores(dist, qa, u, flipped)
    assert np.array_equal(base[:50], other[:50])  # fold 0's scores come from a fit without fold 0
    assert not np.array_equal(base[50:], other[50:])  # the other folds were fitted on fold 0's labels


def test_fit_needs_both_classes() -> None:
    dist, qa, u, _ = _pairs(40)
    with pytest.raises(ValueError, match="genuine and impostor"):
        fit_visibility_fusion(dist, qa, u, np.ones(40, bool))
