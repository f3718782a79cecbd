"""Visibility-aware fusion of the AdaFace and QAConv scores (SPEC §13.1), fitted on training folds only.

The seed's fusion gives AdaFace and QAConv fixed weights. Under occlusion their reliabilities differ: the global
embedding of a half-hidden face is corrupted everywhere, while QAConv can match the part that is still visible.
Here the weights depend on how much of the pair is hidden, u = (1 - v_a) + (1 - v_b), with v the mean predicted
visibility of an image (the mean of its 7x7 occlusion map):

    score = b0 + (b1 + b3 u) z_adaface + (b2 + b4 u) z_qaconv + b5 u

a logistic regression of "same" on (z_ada, z_qa, u z_ada, u z_qa, u). In the 10-fold protocol the z-scores and the
regression are fitted on the nine training folds of every fold and applied to the held-out one
(:func:`~oaml.evaluation.verification.fitted_ten_fold_accuracy`), so no weight ever sees a test label.
:func:`cross_fitted_scores` gives every pair the score of the model fitted without its fold, for ROC curves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oaml.evaluation.verification import KFoldResult, fitted_ten_fold_accuracy, fold_bounds

__all__ = ["VisibilityFusion", "cross_fitted_scores", "fit_visibility_fusion", "occlusion_amount",
           "visibility_ten_fold"]

_C = 1.0  # inverse L2 strength of the regression (sklearn's default); the features are z-scored, so it is mild


def occlusion_amount(visibility_a: np.ndarray, visibility_b: np.ndarray) -> np.ndarray:
    """u = (1 - v_a) + (1 - v_b) per pair, from the N mean predicted visibilities of both images (clipped to [0, 1])."""
    va, vb = (np.clip(np.asarray(v, np.float64).reshape(-1), 0.0, 1.0) for v in (visibility_a, visibility_b))
    if va.shape != vb.shape:
        raise ValueError(f"visibility_a has {va.shape[0]} entries but visibility_b has {vb.shape[0]}")
    return (1.0 - va) + (1.0 - vb)


@dataclass(frozen=True)
class VisibilityFusion:
    """A fitted visibility-aware fusion: z-score statistics and regression coefficients.

    Attributes:
        mean: means of ``-dist_adaface`` and ``score_qaconv`` on the fitting pairs.
        std: their standard deviations (1 where a score was constant, which then carries no weight).
        coef: b1..b5 of the module docstring.
        intercept: b0.
    """

    mean: tuple[float, float]
    std: tuple[float, float]
    coef: tuple[float, float, float, float, float]
    intercept: float

    def weights(self, u: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The AdaFace and QAConv weights at occlusion amount ``u``."""
        u = np.asarray(u, np.float64)
        return self.coef[0] + self.coef[2] * u, self.coef[1] + self.coef[3] * u

    def score(self, dist_adaface: np.ndarray, score_qaconv: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The fused score (higher is same) of N pairs."""
        return _features(self, dist_adaface, score_qaconv, u) @ np.asarray(self.coef) + self.intercept


def _features(fusion: VisibilityFusion | tuple, dist_adaface: np.ndarray, score_qaconv: np.ndarray,
              u: np.ndarray) -> np.ndarray:
    mean, std = (fusion.mean, fusion.std) if isinstance(fusion, VisibilityFusion) else fusion
    za = (-np.asarray(dist_adaface, np.float64) - mean[0]) / std[0]
    zq = (np.asarray(score_qaconv, np.float64) - mean[1]) / std[1]
    return np.stack([za, zq, u * za, u * zq, u], axis=1)


def fit_visibility_fusion(dist_adaface: np.ndarray, score_qaconv: np.ndarray, u: np.ndarray,
                          issame: np.ndarray) -> VisibilityFusion:
    """Fit the fusion on labelled pairs (the training folds).

    Raises:
        ValueError: if the pairs hold only one class (nothing to fit), or the arrays differ in length.
    """
    from sklearn.linear_model import LogisticRegression

    da, qa, uu = (np.asarray(x, np.float64).reshape(-1) for x in (dist_adaface, score_qaconv, u))
    same = np.asarray(issame).astype(bool).reshape(-1)
    if not da.shape == qa.shape == uu.shape == same.shape:
        raise ValueError(f"dist_adaface, score_qaconv, u and issame must have one entry per pair, got "
                         f"{da.shape}, {qa.shape}, {uu.shape}, {same.shape}")
    if same.all() or not same.any():
        raise ValueError("fitting the visibility fusion needs genuine and impostor pairs")
    mean = (float((-da).mean()), float(qa.mean()))
    std = tuple(float(s) if s > 0 else 1.0 for s in ((-da).std(), qa.std()))
    model = LogisticRegression(C=_C, max_iter=1000).fit(_features((mean, std), da, qa, uu), same)
    coef = tuple(float(c) for c in model.coef_[0])
    return VisibilityFusion(mean, std, coef, float(model.intercept_[0]))  # type: ignore[arg-type]


def visibility_ten_fold(dist_adaface: np.ndarray, score_qaconv: np.ndarray, u: np.ndarray, issame: np.ndarray,
                        n_folds: int = 10) -> KFoldResult:
    """10-fold accuracy of the visibility-aware fusion, every fold fitted on its training folds only."""
    da, qa, uu = (np.asarray(x, np.float64).reshape(-1) for x in (dist_adaface, score_qaconv, u))
    same = np.asarray(issame).astype(bool)

    def fuse(train: np.ndarray) -> np.ndarray:
        return fit_visibility_fusion(da[train], qa[train], uu[train], same[train]).score(da, qa, uu)

    return fitted_ten_fold_accuracy(fuse, same, n_folds)


def cross_fitted_scores(dist_adaface: np.ndarray, score_qaconv: np.ndarray, u: np.ndarray, issame: np.ndarray,
                        n_folds: int = 10) -> np.ndarray:
    """Every pair's fused score from the fusion fitted on the other folds (for ROC curves and TAR@FAR)."""
    da, qa, uu = (np.asarray(x, np.float64).reshape(-1) for x in (dist_adaface, score_qaconv, u))
    same = np.asarray(issame).astype(bool)
    out = np.empty(da.shape[0], np.float64)
    for a, b in fold_bounds(da.shape[0], n_folds):
        train = np.ones(da.shape[0], dtype=bool)
        train[a:b] = False
        out[a:b] = fit_visibility_fusion(da[train], qa[train], uu[train], same[train]).score(da[a:b], qa[a:b],
                                                                                            uu[a:b])
    return out
