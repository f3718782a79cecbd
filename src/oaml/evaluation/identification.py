"""Pure 1:N identification metrics: rank-k, CMC, FPIR, DIR and the DET curve (SPEC §13.4).

Arrays in, frozen dataclasses out; numpy only (as :mod:`oaml.evaluation.verification`). Scores are similarities
(higher = more similar). Two input forms:

- a **score matrix** ``P x I`` (probe x gallery identity) with the identity of every column;
- **top-k lists** ``P x k`` of identities, best first, with their scores (what a gallery search returns).

**Closed set.** rank-k = fraction of (enrolled) probes whose true identity is among the k highest-scoring
identities; the CMC curve is rank-k for k = 1..K. In a score matrix, ties count against the probe: the rank of the
true identity is the number of identities scoring ``>=`` it (a constant score matrix gives rank I, not rank 1). In a
top-k list the rank is the position in the list; a true identity missing from the list has rank 0 ("beyond the
list") and is a miss at every k.

**Open set.** Over the non-enrolled probes' top scores, ``FPIR(t) = #{top >= t} / n_non_enrolled``; over the enrolled
probes, ``DIR(t) = #{rank-1 is the true identity and its score >= t} / n_enrolled`` and ``FNIR = 1 - DIR``. The DET
curve has one point per distinct top score (plus t = +inf, the point FPIR = 0, DIR = 0). DIR at a target FPIR f is
the largest DIR whose achieved FPIR is ``<= f`` (no interpolation); it is reported only when the non-enrolled probes
can resolve f, ``n_non_enrolled >= 1 / f``, and is :class:`~oaml.evaluation.verification.Omitted` with the reason
otherwise, as ``tar_at_far`` does for FAR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from oaml.evaluation.verification import Omitted

__all__ = ["DEFAULT_FPIRS", "REPORTED_RANKS", "CmcResult", "DirPoint", "IdentificationResult", "OpenSetResult",
           "cmc_from_ranks", "cmc_from_scores", "cmc_from_top", "identification_metrics", "open_set",
           "open_set_from_scores", "ranks_from_scores", "ranks_from_top"]

#: FPIR operating points of SPEC §13.4.
DEFAULT_FPIRS: tuple[float, ...] = (1e-1, 1e-2)
#: Ranks named in the summaries (``rank_1``, ``rank_5``).
REPORTED_RANKS: tuple[int, ...] = (1, 5)


def _jsonable_point(point: Any) -> dict[str, Any]:
    return asdict(point)


@dataclass(frozen=True)
class CmcResult:
    """Cumulative match characteristic of a closed-set search.

    Attributes:
        rates: ``rates[k - 1]`` = rank-k accuracy, for k = 1..K (non-decreasing).
        n_probes: Probes counted (all enrolled).
        n_identities: Gallery identities each probe was ranked against.
    """

    rates: tuple[float, ...]
    n_probes: int
    n_identities: int

    @property
    def max_rank(self) -> int:
        """K, the last rank of the curve."""
        return len(self.rates)

    def rank(self, k: int) -> float:
        """Rank-k accuracy.

        Ranks above K are known only when the curve covers every identity (then they equal rank-K).

        Raises:
            ValueError: If ``k < 1``, or ``k > K`` while K is below the number of identities.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if k <= self.max_rank:
            return self.rates[k - 1]
        if self.max_rank >= self.n_identities:
            return self.rates[-1]
        raise ValueError(f"rank-{k} needs ranked lists of length >= {k}; this CMC stops at rank {self.max_rank}")

    def rank_or_omitted(self, k: int) -> float | Omitted:
        """:meth:`rank`, or :class:`Omitted` with the reason when the lists are too short."""
        try:
            return self.rank(k)
        except ValueError as error:
            return Omitted(str(error))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``rank_1``, ``rank_5`` (a value or ``{"reason": ...}``), the curve and the counts."""
        out: dict[str, Any] = {}
        for k in REPORTED_RANKS:
            value = self.rank_or_omitted(k)
            out[f"rank_{k}"] = _jsonable_point(value) if isinstance(value, Omitted) else value
        out.update(cmc=list(self.rates), n_probes=self.n_probes, n_identities=self.n_identities)
        return out


@dataclass(frozen=True)
class DirPoint:
    """DIR at one FPIR target: the best DIR whose achieved FPIR does not exceed the target."""

    dir: float
    threshold: float
    fpir_achieved: float


@dataclass(frozen=True)
class OpenSetResult:
    """Open-set identification: the exact DET curve and DIR at the FPIR targets.

    Point j uses the threshold ``thresholds[j]`` (descending; ``thresholds[0] = +inf``).

    Attributes:
        thresholds: Score thresholds, ``M`` values.
        fpir: False positive identification rate per point (non-decreasing).
        dir: Detection and identification rate per point (non-decreasing).
        dir_at_fpir: FPIR target to its :class:`DirPoint` or :class:`Omitted`.
        n_enrolled: Enrolled probes (the DIR denominator).
        n_non_enrolled: Non-enrolled probes (the FPIR denominator).
    """

    thresholds: np.ndarray
    fpir: np.ndarray
    dir: np.ndarray
    dir_at_fpir: dict[float, DirPoint | Omitted]
    n_enrolled: int
    n_non_enrolled: int

    @property
    def fnir(self) -> np.ndarray:
        """False negative identification rate per point, ``1 - DIR``."""
        return 1.0 - self.dir

    def to_dict(self, include_curve: bool = False) -> dict[str, Any]:
        """JSON-ready dict; the DET arrays only when ``include_curve`` (they can be long)."""
        out: dict[str, Any] = {"dir_at_fpir": {f"{f:g}": _jsonable_point(p) for f, p in self.dir_at_fpir.items()},
                               "n_enrolled": self.n_enrolled, "n_non_enrolled": self.n_non_enrolled}
        if include_curve:
            out.update(thresholds=self.thresholds.tolist(), fpir=self.fpir.tolist(), fnir=self.fnir.tolist())
        return out


@dataclass(frozen=True)
class IdentificationResult:
    """Closed- and open-set metrics of one search, split by enrolment.

    Attributes:
        closed_set: CMC over the enrolled probes, or :class:`Omitted` (no enrolled probe).
        open_set: FPIR/DIR/DET, or :class:`Omitted` (no enrolled or no non-enrolled probe).
        n_probes: All labelled probes.
        n_enrolled: Probes whose identity is in the gallery.
        n_non_enrolled: The others.
    """

    closed_set: CmcResult | Omitted
    open_set: OpenSetResult | Omitted
    n_probes: int
    n_enrolled: int
    n_non_enrolled: int

    def to_dict(self, include_curve: bool = False) -> dict[str, Any]:
        """JSON-ready dict (the DET curve only when ``include_curve``)."""
        closed = self.closed_set.to_dict() if isinstance(self.closed_set, CmcResult) else asdict(self.closed_set)
        opened = (self.open_set.to_dict(include_curve) if isinstance(self.open_set, OpenSetResult)
                  else asdict(self.open_set))
        return {"closed_set": closed, "open_set": opened, "n_probes": self.n_probes, "n_enrolled": self.n_enrolled,
                "n_non_enrolled": self.n_non_enrolled}


# ---------------------------------------------------------------------------------------------------- validation
def _as_matrix(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{name} must be a non-empty P x I matrix, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr.astype(np.float64)


def _as_scores(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
        raise ValueError(f"{name} must hold finite numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _as_names(x: Any, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of identities, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries, expected {n}")
    if arr.dtype.kind == "f":
        raise ValueError(f"{name} must hold identity names or integer ids, got dtype {arr.dtype}")
    return arr


def _column_of(gallery: np.ndarray, labels: np.ndarray, name: str, allow_unknown: bool) -> np.ndarray:
    """Column index of each label in ``gallery`` (-1 for unknown labels when ``allow_unknown``)."""
    if np.unique(gallery).shape[0] != gallery.shape[0]:
        raise ValueError("gallery_identities must not repeat an identity")
    lookup = {label: k for k, label in enumerate(gallery.tolist())}
    cols = np.array([lookup.get(label, -1) for label in labels.tolist()], np.int64)
    unknown = cols < 0
    if unknown.any() and not allow_unknown:
        shown = ", ".join(map(str, labels[unknown][:5].tolist()))
        raise ValueError(f"{name} has {int(unknown.sum())} identities that are not in gallery_identities "
                         f"(unknown identity names: {shown}{' ...' if unknown.sum() > 5 else ''})")
    return cols


# ---------------------------------------------------------------------------------------------------- closed set
def ranks_from_scores(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Rank of each probe's true identity in a ``P x I`` score matrix (1 = best; ties count against the probe).

    Args:
        scores: ``P x I`` similarities.
        truth: ``P`` column indices of the true identities.

    Returns:
        ``P`` int64 ranks in ``1..I``: the number of identities whose score is ``>=`` the true identity's.

    Raises:
        ValueError: On an empty or non-finite matrix, or truth indices of the wrong length or out of range.
    """
    s = _as_matrix(scores, "scores")
    t = np.asarray(truth)
    if t.shape != (s.shape[0],) or t.dtype.kind not in "iu" or (t.size and (t.min() < 0 or t.max() >= s.shape[1])):
        raise ValueError(f"truth must hold {s.shape[0]} column indices in [0, {s.shape[1]}), got shape {t.shape}")
    true_score = s[np.arange(s.shape[0]), t]
    return np.count_nonzero(s >= true_score[:, None], axis=1).astype(np.int64)


def ranks_from_top(top_identities: np.ndarray, probe_identities: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Position (1-based) of each probe's identity in its top-k list; 0 when it is not in the list.

    Raises:
        ValueError: On an empty list matrix or a probe count that differs from its rows.
    """
    top = np.asarray(top_identities)
    if top.ndim != 2 or 0 in top.shape:
        raise ValueError(f"top_identities must be a non-empty P x k matrix, got shape {top.shape}")
    truth = _as_names(probe_identities, "probe_identities", top.shape[0])
    hit = top == truth[:, None]
    return np.where(hit.any(axis=1), np.argmax(hit, axis=1) + 1, 0).astype(np.int64)


def cmc_from_ranks(ranks: np.ndarray, max_rank: int, n_identities: int) -> CmcResult:
    """CMC for k = 1..max_rank from true-identity ranks (0 = not found in the list).

    Raises:
        ValueError: On empty ranks, ranks outside ``0..n_identities`` or ``max_rank`` outside ``1..n_identities``.
    """
    r = np.asarray(ranks)
    if r.ndim != 1 or r.size == 0 or r.dtype.kind not in "iu":
        raise ValueError(f"ranks must be a non-empty 1-D integer array, got shape {r.shape} dtype {r.dtype}")
    if not 1 <= max_rank <= n_identities:
        raise ValueError(f"max_rank must be in [1, n_identities={n_identities}], got {max_rank}")
    if r.min() < 0 or r.max() > n_identities:
        raise ValueError(f"ranks must lie in [0, {n_identities}], got [{r.min()}, {r.max()}]")
    found = np.bincount(r[r > 0], minlength=max_rank + 1)[1:max_rank + 1]
    rates = np.cumsum(found) / r.size
    return CmcResult(rates=tuple(float(v) for v in rates), n_probes=int(r.size), n_identities=int(n_identities))


def cmc_from_scores(scores: np.ndarray, gallery_identities: Sequence[Any] | np.ndarray,
                    probe_identities: Sequence[Any] | np.ndarray, max_rank: int | None = None) -> CmcResult:
    """Closed-set CMC from a ``P x I`` score matrix whose column j is identity ``gallery_identities[j]``.

    Args:
        scores: ``P x I`` similarities.
        gallery_identities: ``I`` distinct identities (names or integer ids).
        probe_identities: ``P`` true identities; each must be enrolled (closed set).
        max_rank: K (default I).

    Raises:
        ValueError: On shape mismatches, non-finite scores or probe identities not in the gallery.
    """
    s = _as_matrix(scores, "scores")
    gallery = _as_names(gallery_identities, "gallery_identities", s.shape[1])
    probes = _as_names(probe_identities, "probe_identities", s.shape[0])
    truth = _column_of(gallery, probes, "probe_identities", allow_unknown=False)
    return cmc_from_ranks(ranks_from_scores(s, truth), s.shape[1] if max_rank is None else max_rank, s.shape[1])


def cmc_from_top(top_identities: np.ndarray, probe_identities: Sequence[Any] | np.ndarray,
                 n_identities: int, max_rank: int | None = None) -> CmcResult:
    """Closed-set CMC from top-k lists (K defaults to k; ``n_identities`` is the gallery's identity count).

    Raises:
        ValueError: On empty or mismatched inputs, or K > k.
    """
    top = np.asarray(top_identities)
    ranks = ranks_from_top(top, probe_identities)
    k = top.shape[1]
    if max_rank is not None and max_rank > k:
        raise ValueError(f"max_rank {max_rank} exceeds the list length {k}")
    return cmc_from_ranks(ranks, k if max_rank is None else max_rank, n_identities)


# ---------------------------------------------------------------------------------------------------- open set
def _dir_points(thresholds: np.ndarray, fpir: np.ndarray, dir_: np.ndarray, n_non: int,
                fpirs: Sequence[float]) -> dict[float, DirPoint | Omitted]:
    out: dict[float, DirPoint | Omitted] = {}
    for target in fpirs:
        if not 0.0 < target <= 1.0:
            raise ValueError(f"fpirs must lie in (0, 1], got {target}")
        needed = math.ceil(round(1.0 / target, 6))
        if n_non < needed:
            out[target] = Omitted(f"needs >= {needed} non-enrolled probes, have {n_non}")
            continue
        j = int(np.searchsorted(fpir, target, side="right")) - 1  # last point with FPIR <= target
        out[target] = DirPoint(dir=float(dir_[j]), threshold=float(thresholds[j]), fpir_achieved=float(fpir[j]))
    return out


def open_set(enrolled_top_scores: np.ndarray, enrolled_rank1_correct: np.ndarray,
             non_enrolled_top_scores: np.ndarray, fpirs: Sequence[float] = DEFAULT_FPIRS) -> OpenSetResult:
    """FPIR, DIR and the exact DET curve (see the module docstring).

    Args:
        enrolled_top_scores: Rank-1 score of each enrolled probe, ``E``.
        enrolled_rank1_correct: Whether that rank-1 identity is the probe's own, ``E`` booleans.
        non_enrolled_top_scores: Rank-1 score of each non-enrolled probe, ``U``.
        fpirs: FPIR targets for ``dir_at_fpir``.

    Raises:
        ValueError: On empty, mismatched or non-finite inputs, or an FPIR outside (0, 1].
    """
    enr = _as_scores(enrolled_top_scores, "enrolled_top_scores")
    non = _as_scores(non_enrolled_top_scores, "non_enrolled_top_scores")
    correct = np.asarray(enrolled_rank1_correct)
    if correct.shape != enr.shape or correct.dtype != bool:
        raise ValueError(f"enrolled_rank1_correct must hold {enr.shape[0]} booleans, got shape {correct.shape} "
                         f"dtype {correct.dtype}")
    thresholds = np.r_[np.inf, np.unique(np.concatenate([enr, non]))[::-1]]
    non_sorted, hits_sorted = np.sort(non), np.sort(enr[correct])
    fpir = (non.size - np.searchsorted(non_sorted, thresholds, side="left")) / non.size  # #{top >= t}
    dir_ = (hits_sorted.size - np.searchsorted(hits_sorted, thresholds, side="left")) / enr.size
    for arr in (thresholds, fpir, dir_):
        arr.flags.writeable = False
    return OpenSetResult(thresholds=thresholds, fpir=fpir, dir=dir_,
                         dir_at_fpir=_dir_points(thresholds, fpir, dir_, non.size, fpirs),
                         n_enrolled=int(enr.size), n_non_enrolled=int(non.size))


def open_set_from_scores(scores: np.ndarray, gallery_identities: Sequence[Any] | np.ndarray,
                         probe_identities: Sequence[Any] | np.ndarray,
                         fpirs: Sequence[float] = DEFAULT_FPIRS) -> OpenSetResult:
    """Open-set metrics from a ``P x I`` score matrix; probes whose identity is not a column are non-enrolled.

    A probe is rank-1 correct when its true identity scores strictly above every other identity (ties count
    against it, as in :func:`ranks_from_scores`).

    Raises:
        ValueError: On bad shapes, or when there is no enrolled or no non-enrolled probe.
    """
    s = _as_matrix(scores, "scores")
    gallery = _as_names(gallery_identities, "gallery_identities", s.shape[1])
    cols = _column_of(gallery, _as_names(probe_identities, "probe_identities", s.shape[0]), "probe_identities",
                      allow_unknown=True)
    enrolled = cols >= 0
    if enrolled.all() or not enrolled.any():
        raise ValueError(f"open-set metrics need enrolled and non-enrolled probes, got {int(enrolled.sum())} and "
                         f"{int((~enrolled).sum())}")
    correct = ranks_from_scores(s[enrolled], cols[enrolled]) == 1
    top = s.max(axis=1)
    return open_set(top[enrolled], correct, top[~enrolled], fpirs)


def identification_metrics(top_identities: np.ndarray, top_scores: np.ndarray,
                           probe_identities: Sequence[Any] | np.ndarray,
                           gallery_identities: Sequence[Any] | np.ndarray,
                           fpirs: Sequence[float] = DEFAULT_FPIRS) -> IdentificationResult:
    """Closed-set CMC (enrolled probes) and open-set DIR@FPIR (all probes) from top-k search results.

    Args:
        top_identities: ``P x k`` identities, best first (names or integer ids of ``gallery_identities``).
        top_scores: ``P x k`` their scores (non-increasing along each row), or the ``P`` rank-1 scores (the only
            ones the open-set metrics read).
        probe_identities: ``P`` true identities; those not in ``gallery_identities`` are non-enrolled.
        gallery_identities: The gallery's distinct identities.
        fpirs: FPIR targets.

    Raises:
        ValueError: On empty or mismatched inputs, non-finite scores, or listed identities that are not in the
            gallery (unknown identity names).
    """
    top = np.asarray(top_identities)
    scores = np.asarray(top_scores)
    if top.ndim != 2 or 0 in top.shape or scores.shape not in (top.shape, top.shape[:1]):
        raise ValueError(f"top_identities must be a non-empty P x k matrix and top_scores P x k or P, got "
                         f"{top.shape} and {scores.shape}")
    gallery = _as_names(gallery_identities, "gallery_identities")
    probes = _as_names(probe_identities, "probe_identities", top.shape[0])
    _column_of(gallery, top.reshape(-1), "top_identities", allow_unknown=False)
    enrolled = _column_of(gallery, probes, "probe_identities", allow_unknown=True) >= 0
    n_enr, n_non = int(enrolled.sum()), int((~enrolled).sum())
    closed: CmcResult | Omitted = Omitted("no enrolled probes")
    opened: OpenSetResult | Omitted = Omitted("no non-enrolled probes" if n_non == 0 else "no enrolled probes")
    if n_enr:
        closed = cmc_from_top(top[enrolled], probes[enrolled], gallery.shape[0])
    if n_enr and n_non:
        top1 = _as_scores(scores if scores.ndim == 1 else scores[:, 0], "rank-1 top_scores")
        opened = open_set(top1[enrolled], top[enrolled, 0] == probes[enrolled], top1[~enrolled], fpirs)
    return IdentificationResult(closed_set=closed, open_set=opened, n_probes=int(top.shape[0]), n_enrolled=n_enr,
                                n_non_enrolled=n_non)
