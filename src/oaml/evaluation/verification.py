"""Pure verification metrics shared by validation, ``oaml eval`` and the benchmarks (SPEC §9, §11 item 5).

Arrays in, frozen dataclasses out; numpy only. The 10-fold protocol matches ``arcface_torch/eval/verification.py``
numerically (contiguous unshuffled folds, thresholds 0, 0.01, ..., 3.99, ``d < t`` means same, ``np.argmax`` tie
rule), but counts with ``searchsorted`` instead of looping over thresholds. ROC points are exact (one point per
distinct score, ties handled as one step), and TAR@FAR is reported only where the impostor count supports it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_FARS", "DISTANCE_THRESHOLDS", "KFoldResult", "Omitted", "RocResult", "TarPoint",
           "combined_ten_fold_accuracy", "count_genuine_impostor", "dynamic_weights", "fitted_ten_fold_accuracy",
           "fold_bounds",
           "genuine_impostor_pairs", "roc", "tar_at_far", "ten_fold_accuracy"]

logger = logging.getLogger(__name__)

#: The reference sweep for squared distances of unit embeddings (d in [0, 4]); ``np.arange`` exactly as upstream.
DISTANCE_THRESHOLDS: np.ndarray = np.arange(0, 4, 0.01)
#: FAR operating points of the standalone report (SPEC §9).
DEFAULT_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass(frozen=True)
class KFoldResult:
    """Outcome of the k-fold verification protocol.

    Attributes:
        accuracy: Mean held-out accuracy over the folds.
        std: Population std (ddof=0, as upstream) of the fold accuracies.
        fold_accuracies: Held-out accuracy of each fold.
        thresholds: Threshold chosen on the training folds of each fold, in the domain of the scores passed in:
            same iff ``score < t`` when ``higher_is_same`` is False, ``score > t`` when it is True.
        fold_sizes: Number of pairs in each held-out fold.
        higher_is_same: Direction of the scores.
    """

    accuracy: float
    std: float
    fold_accuracies: tuple[float, ...]
    thresholds: tuple[float, ...]
    fold_sizes: tuple[int, ...]
    higher_is_same: bool

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class RocResult:
    """Exact ROC: one point per distinct score, from the strictest threshold to the most lenient.

    Point k predicts same iff ``score >= thresholds[k]`` (``higher_is_same``) or ``score <= thresholds[k]``
    (distances). ``thresholds[0]`` is ±inf, the point (0, 0).

    Attributes:
        fpr: False accept rate per point, non-decreasing, ``M`` values.
        tpr: True accept rate per point, non-decreasing, ``M`` values.
        thresholds: Score threshold per point.
        auc: Area under the curve (trapezoids, so tied scores count one half).
        eer: Equal error rate, linearly interpolated where FNR and FPR cross.
        eer_threshold: Threshold of the first point where FNR <= FPR.
        n_genuine: Number of genuine pairs.
        n_impostor: Number of impostor pairs.
        higher_is_same: Direction of the scores.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    eer: float
    eer_threshold: float
    n_genuine: int
    n_impostor: int
    higher_is_same: bool

    def to_dict(self, include_curve: bool = False) -> dict[str, Any]:
        """Return a JSON-ready dict; the curve arrays only when ``include_curve`` (they can be long)."""
        out = {k: getattr(self, k) for k in ("auc", "eer", "eer_threshold", "n_genuine", "n_impostor",
                                             "higher_is_same")}
        if include_curve:
            out.update(fpr=self.fpr.tolist(), tpr=self.tpr.tolist(), thresholds=self.thresholds.tolist())
        return out


@dataclass(frozen=True)
class TarPoint:
    """TAR at one FAR target: the best TAR whose achieved FAR does not exceed the target."""

    tar: float
    threshold: float
    far_achieved: float


@dataclass(frozen=True)
class Omitted:
    """A FAR point that the data cannot support, with the reason."""

    reason: str


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _as_scores(x: Any, name: str) -> np.ndarray:
    arr = _as_1d(x, name)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} non-finite values (first at index {int(np.argmax(bad))})")
    return arr


def _as_labels(x: Any, name: str, n: int) -> np.ndarray:
    arr = _as_1d(x, name)
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but the scores have {n}")
    if arr.dtype != bool:
        if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1), got dtype {arr.dtype}")
        arr = arr.astype(bool)
    return arr


def fold_bounds(n: int, n_folds: int = 10) -> list[tuple[int, int]]:
    """Contiguous unshuffled folds as ``sklearn.model_selection.KFold(n_folds, shuffle=False)`` makes them.

    The first ``n % n_folds`` folds get one extra item.

    Raises:
        ValueError: If ``n_folds < 2`` or ``n < n_folds``.
    """
    if n_folds < 2 or n < n_folds:
        raise ValueError(f"n_folds must be in [2, n={n}], got {n_folds}")
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    stops = np.cumsum(sizes)
    return [(int(b - s), int(b)) for s, b in zip(sizes, stops)]


def _candidate_thresholds(values: np.ndarray) -> np.ndarray:
    """Every distinct ``d < t`` split of ``values``: the minimum, the midpoints, and just above the maximum."""
    u = np.unique(values)
    mid = u[:-1] / 2 + u[1:] / 2  # halves first: no overflow
    mid = np.where(mid > u[:-1], mid, u[1:])  # adjacent floats: the upper one still splits them
    return np.concatenate([u[:1], mid, [np.nextafter(u[-1], np.inf)]])


def _auto_fold(d: np.ndarray, same: np.ndarray, a: int, b: int) -> tuple[float, float]:
    """Best ``d < t`` split of the training pairs (first maximum) and its accuracy on the held-out ``[a, b)``."""
    train = np.ones(d.shape[0], dtype=bool)
    train[a:b] = False
    d_tr, s_tr = d[train], same[train]
    cand = _candidate_thresholds(d_tr)
    gen, imp = np.sort(d_tr[s_tr]), np.sort(d_tr[~s_tr])
    correct = np.searchsorted(gen, cand) + (imp.size - np.searchsorted(imp, cand))  # exact counts of d < t
    t = cand[int(np.argmax(correct))]
    return float(t), float(np.count_nonzero((d[a:b] < t) == same[a:b])) / (b - a)


def _fixed_grid_folds(d: np.ndarray, same: np.ndarray, thresholds: np.ndarray,
                      bounds: list[tuple[int, int]]) -> tuple[list[float], list[float]]:
    """All folds against one grid: per-fold counts once, training counts as totals minus the fold."""
    gen_lt = np.stack([np.searchsorted(np.sort(d[a:b][same[a:b]]), thresholds) for a, b in bounds])  # d < t
    imp_lt = np.stack([np.searchsorted(np.sort(d[a:b][~same[a:b]]), thresholds) for a, b in bounds])
    n_gen = np.array([np.count_nonzero(same[a:b]) for a, b in bounds])
    n_imp = np.array([b - a for a, b in bounds]) - n_gen
    fold_correct = gen_lt + (n_imp[:, None] - imp_lt)  # folds x thresholds
    train_correct = fold_correct.sum(axis=0, keepdims=True) - fold_correct
    best = np.argmax(train_correct, axis=1)
    rows = np.arange(len(bounds))
    accs = [float(c) / (b - a) for c, (a, b) in zip(fold_correct[rows, best], bounds)]
    return accs, [float(thresholds[k]) for k in best]


def _summarise(accs: list[float], thresholds: list[float], bounds: list[tuple[int, int]],
               higher_is_same: bool) -> KFoldResult:
    return KFoldResult(accuracy=float(np.mean(accs)), std=float(np.std(accs)), fold_accuracies=tuple(accs),
                       thresholds=tuple(thresholds), fold_sizes=tuple(b - a for a, b in bounds),
                       higher_is_same=higher_is_same)


def ten_fold_accuracy(scores: np.ndarray, issame: np.ndarray, *, higher_is_same: bool,
                      thresholds: np.ndarray | Sequence[float] | str | None = None,
                      n_folds: int = 10) -> KFoldResult:
    """K-fold verification accuracy (SPEC §9; ``arcface_torch`` ``calculate_roc``).

    Each fold is held out in turn; the threshold with the best accuracy on the other folds (the first one on
    ties, as ``np.argmax``) is applied to it. Distances (``higher_is_same=False``) predict same iff ``d < t``.
    Similarities run the same protocol on ``-score``: same iff ``score > t``.

    Threshold choice (``thresholds=None``): distances sweep the reference grid 0, 0.01, ..., 3.99. Similarities
    (QAConv logits are unbounded) use, per fold, every distinct split of the training folds' scores (the midpoints
    between consecutive distinct values plus both ends, ascending on ``-score``), i.e. the exact training optimum.
    ``"auto"`` selects these data-driven candidates for distances too; an array gives an explicit grid in the
    scores' own domain, where ties go to the first entry.

    Args:
        scores: Pair scores, ``N``.
        issame: Ground truth, ``N`` booleans (or 0/1).
        higher_is_same: True for similarities, False for (squared) distances.
        thresholds: None, ``"auto"`` or an explicit threshold grid.
        n_folds: Number of contiguous folds.

    Returns:
        The mean and per-fold held-out accuracies and the chosen thresholds.

    Raises:
        ValueError: On bad shapes, non-finite scores, non-boolean labels or a bad ``thresholds``.
    """
    s = _as_scores(scores, "scores").astype(np.float64)  # exact for float32; upstream compares in float64 too
    same = _as_labels(issame, "issame", s.shape[0])
    bounds = fold_bounds(s.shape[0], n_folds)
    d = -s if higher_is_same else s
    sign = -1.0 if higher_is_same else 1.0
    if thresholds is None and not higher_is_same:
        thresholds = DISTANCE_THRESHOLDS
    if thresholds is None or (isinstance(thresholds, str) and thresholds == "auto"):
        ts, accs = zip(*(_auto_fold(d, same, a, b) for a, b in bounds))
        return _summarise(list(accs), [sign * t for t in ts], bounds, higher_is_same)
    if isinstance(thresholds, str):
        raise ValueError(f"thresholds must be None, 'auto' or an array, got {thresholds!r}")
    grid = sign * _as_scores(thresholds, "thresholds").astype(np.float64)
    accs, ts = _fixed_grid_folds(d, same, grid, bounds)
    return _summarise(accs, [sign * t for t in ts], bounds, higher_is_same)


def combined_ten_fold_accuracy(dist_adaface: np.ndarray, score_qaconv: np.ndarray, issame: np.ndarray,
                               w_adaface: float = 0.5, w_qaconv: float = 0.5, n_folds: int = 10) -> KFoldResult:
    """K-fold accuracy of the fused AdaFace + QAConv score with training-fold standardisation only (SPEC §9).

    Per fold: z-score ``-d_ada`` and ``score_qa`` with the mean and std (ddof=0) of the *training* folds, fuse
    ``w_a * z_ada + w_q * z_qa`` (higher is same), choose the threshold on the training folds from their distinct
    splits (as :func:`ten_fold_accuracy` does for similarities) and evaluate the held-out fold. A method whose
    training scores are constant carries no information; its z-scores are 0 and a warning is logged.

    Returns:
        A :class:`KFoldResult` with ``higher_is_same=True``; each fold's threshold is on that fold's fused scale.

    Raises:
        ValueError: On bad shapes, non-finite values or non-finite/negative weights, or both weights zero.
    """
    da = _as_scores(dist_adaface, "dist_adaface").astype(np.float64)
    qa = _as_scores(score_qaconv, "score_qaconv").astype(np.float64)
    if qa.shape != da.shape:
        raise ValueError(f"score_qaconv has {qa.shape[0]} entries but dist_adaface has {da.shape[0]}")
    same = _as_labels(issame, "issame", da.shape[0])
    for name, w in (("w_adaface", w_adaface), ("w_qaconv", w_qaconv)):
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {w}")
    if w_adaface == 0 and w_qaconv == 0:
        raise ValueError("w_adaface and w_qaconv are both 0")

    def fuse(train: np.ndarray) -> np.ndarray:
        return w_adaface * _standardise(-da, train, "dist_adaface") + w_qaconv * _standardise(qa, train, "score_qaconv")

    return fitted_ten_fold_accuracy(fuse, same, n_folds)


def fitted_ten_fold_accuracy(fuse: Callable[[np.ndarray], np.ndarray], issame: np.ndarray,
                             n_folds: int = 10) -> KFoldResult:
    """K-fold accuracy of a score whose parameters are fitted per fold on the training folds only.

    ``fuse(train)`` gets the boolean mask of the training pairs and returns the scores of *all* pairs (higher is
    same) computed with parameters fitted on those pairs alone; the threshold is then chosen on the training folds
    (as :func:`ten_fold_accuracy` does for similarities) and applied to the held-out fold.

    Returns:
        A :class:`KFoldResult` with ``higher_is_same=True``; each fold's threshold is on that fold's scale.
    """
    same = _as_labels(issame, "issame", np.asarray(issame).shape[0])
    bounds = fold_bounds(same.shape[0], n_folds)
    accs, ts = [], []
    for a, b in bounds:
        train = np.ones(same.shape[0], dtype=bool)
        train[a:b] = False
        t, acc = _auto_fold(-np.asarray(fuse(train), np.float64), same, a, b)
        accs.append(acc)
        ts.append(-t)
    return _summarise(accs, ts, bounds, higher_is_same=True)


def _standardise(x: np.ndarray, train: np.ndarray, name: str) -> np.ndarray:
    mean, std = x[train].mean(), x[train].std()
    if std == 0:
        logger.warning("%s is constant on the training folds; it carries no weight in this fold", name)
        return np.zeros_like(x)
    return (x - mean) / std


def dynamic_weights(qaconv_acc: float, configured: tuple[float, float] = (0.5, 0.5)) -> tuple[float, float]:
    """Seed fusion rule (SPEC §9): ``(0.8, 0.2)`` while QAConv is below chance, else ``configured``.

    Returns:
        ``(w_adaface, w_qaconv)``.

    Raises:
        ValueError: If ``qaconv_acc`` is not in [0, 1].
    """
    if not 0.0 <= qaconv_acc <= 1.0:  # also rejects NaN
        raise ValueError(f"qaconv_acc must be in [0, 1], got {qaconv_acc}")
    return (0.8, 0.2) if qaconv_acc < 0.5 else (float(configured[0]), float(configured[1]))


def _as_embeddings(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty N x D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has non-finite values")
    return arr


def _labels(labels: Any) -> np.ndarray:
    arr = _as_1d(labels, "labels")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError("labels has non-finite values")
    if arr.dtype == object:
        raise ValueError("labels must be a numeric or string array, got dtype object")
    return arr


def count_genuine_impostor(labels: np.ndarray) -> tuple[int, int]:
    """``(genuine, impostor)`` counts over all pairs i<j: genuine = sum over identities of n_i (n_i - 1) / 2."""
    arr = _labels(labels)
    _, counts = np.unique(arr, return_counts=True)
    n = arr.shape[0]
    genuine = int(np.sum(counts.astype(np.int64) * (counts - 1) // 2))
    return genuine, n * (n - 1) // 2 - genuine


def genuine_impostor_pairs(labels: np.ndarray, max_pairs: int | None = 50_000_000
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i<j (never i=j) with ``same = labels[i] == labels[j]`` (SPEC §9, §11 item 5).

    Memory: n (n - 1) / 2 pairs at 17 bytes each (two int64 indices and a bool); 1,000 images give 499,500 pairs
    (8.5 MB), 10,000 images 50 M pairs (850 MB), hence the ``max_pairs`` guard.

    Args:
        labels: Identity label per image, ``N`` (numbers or strings).
        max_pairs: Refuse to enumerate more pairs than this; None for no limit.

    Returns:
        ``(i, j, same)``, each of length n (n - 1) / 2, in row-major order of the upper triangle.

    Raises:
        ValueError: On bad labels, fewer than 2 images, or more pairs than ``max_pairs``.
    """
    arr = _labels(labels)
    n = arr.shape[0]
    n_pairs = n * (n - 1) // 2
    if n < 2:
        raise ValueError(f"labels needs at least 2 images to form a pair, got {n}")
    if max_pairs is not None and n_pairs > max_pairs:
        raise ValueError(f"labels gives {n_pairs} pairs (> max_pairs={max_pairs}, {17 * n_pairs / 1e9:.1f} GB)")
    i, j = np.triu_indices(n, k=1)
    return i, j, arr[i] == arr[j]


def roc(scores: np.ndarray, labels_same: np.ndarray, higher_is_same: bool = True) -> RocResult:
    """Exact ROC, AUC and EER from sorted scores (tied scores form one step).

    Raises:
        ValueError: On bad input, or when there are no genuine or no impostor pairs.
    """
    s = _as_scores(scores, "scores").astype(np.float64)
    same = _as_labels(labels_same, "labels_same", s.shape[0])
    n_gen = int(np.count_nonzero(same))
    n_imp = same.shape[0] - n_gen
    if n_gen == 0 or n_imp == 0:
        raise ValueError(f"labels_same needs genuine and impostor pairs, has {n_gen} and {n_imp}")
    key = s if higher_is_same else -s
    order = np.argsort(-key, kind="stable")
    key_sorted, same_sorted = key[order], same[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(key_sorted)), key_sorted.size - 1]
    tp = np.cumsum(same_sorted)[last_of_group]
    fp = (last_of_group + 1) - tp
    tpr = np.r_[0.0, tp / n_gen]
    fpr = np.r_[0.0, fp / n_imp]
    thr = np.r_[np.inf, key_sorted[last_of_group]]
    thr = thr if higher_is_same else -thr
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    # FNR - FPR is non-increasing from 1 to -1; find the crossing in exact integers, interpolate in floats.
    tp, fp = np.r_[0, tp], np.r_[0, fp]
    gap = (n_gen - tp) * n_imp - fp * n_gen  # (FNR - FPR) * n_gen * n_imp
    k = int(np.argmax(gap <= 0))  # k >= 1 because gap[0] > 0
    alpha = gap[k - 1] / (gap[k - 1] - gap[k])
    eer = float(fpr[k - 1] + alpha * (fpr[k] - fpr[k - 1]))
    for arr in (fpr, tpr, thr):
        arr.flags.writeable = False  # the result is frozen; so are its curves
    return RocResult(fpr=fpr, tpr=tpr, thresholds=thr, auc=auc, eer=eer, eer_threshold=float(thr[k]),
                     n_genuine=n_gen, n_impostor=n_imp, higher_is_same=higher_is_same)


def tar_at_far(roc_or_scores: RocResult | np.ndarray, labels_same: np.ndarray | None = None, *,
               higher_is_same: bool = True, fars: Sequence[float] = DEFAULT_FARS
               ) -> dict[float, TarPoint | Omitted]:
    """TAR (VR) at each FAR target, from a :class:`RocResult` or from raw scores and labels.

    The point is the largest TAR whose achieved FAR is <= the target (no interpolation). A target is reported
    only if the impostors can resolve it, ``n_impostor >= 1 / far``; otherwise it is :class:`Omitted` with the
    reason ("needs >= N impostor pairs, have M").

    Raises:
        ValueError: On a FAR outside (0, 1], or raw scores without ``labels_same``.
    """
    if isinstance(roc_or_scores, RocResult):
        curve = roc_or_scores
    elif labels_same is None:
        raise ValueError("labels_same is required when roc_or_scores holds raw scores")
    else:
        curve = roc(roc_or_scores, labels_same, higher_is_same=higher_is_same)
    out: dict[float, TarPoint | Omitted] = {}
    for far in fars:
        if not 0.0 < far <= 1.0:
            raise ValueError(f"fars must lie in (0, 1], got {far}")
        needed = math.ceil(round(1.0 / far, 6))
        if curve.n_impostor < needed:
            out[far] = Omitted(f"needs >= {needed} impostor pairs, have {curve.n_impostor}")
            continue
        k = int(np.searchsorted(curve.fpr, far, side="right")) - 1  # last point with FPR <= far
        out[far] = TarPoint(tar=float(curve.tpr[k]), threshold=float(curve.thresholds[k]),
                            far_achieved=float(curve.fpr[k]))
    return out
