"""QAConv re-ranking of a gallery search's top-N identities, fused with the global score (SPEC §5, §9, §13.4).

**QAConv score of a probe and an identity** = the maximum, over the identity's gallery images, of the flip-averaged
paired QAConv score: ``(QAConv(probe, image) + QAConv(mirror probe, mirror image)) / 2``, each direction weighted by
both images' visibility maps when the model is occlusion-aware (``FaceRecognizer.uses_occlusion``), exactly as the
verification protocol scores a pair. The pairs go through :meth:`oaml.models.qaconv.QAConv.match_groups`: each
probe with its own group of candidate images, padded to the chunk's largest group and masked by ``valid``.

**Memory.** Probes are processed in chunks whose gathered gallery maps (float32, ``B x K x C x H x W``, K = the
chunk's largest candidate-image count) stay within ``max_chunk_bytes``; QAConv chunks its similarity tensor itself.

**Fusion** (as verification fuses AdaFace and QAConv, SPEC §9 and :data:`oaml.evaluation.scoring.FUSION_NOTE`):
``fused = w_adaface z(global) + w_qaconv z(qaconv)`` with the evaluator's weights (``EvalOptions``: 0.5, 0.5 by
default; ``oaml identify --adaface-weight/--qaconv-weight``). ``z`` standardises each score with its mean and std
(ddof = 0) over **all re-scored (probe, candidate) pairs** handed to :func:`fuse_candidates`, i.e. the P x N
candidates of one protocol, through :func:`oaml.evaluation.scoring.fuse_label_free`: the statistics never see a
label (neither the probes' identities nor whether a candidate is right), only the scores. A probe's new order
therefore depends on the other probes only through the two standard deviations (the means shift every candidate
alike). Each probe's N candidates are re-sorted by the fused score (stable, so ties keep the search order); with
N = 1 nothing moves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from oaml.evaluation.api import FaceRecognizer
from oaml.evaluation.gallery import Gallery
from oaml.evaluation.gallery_features import StoredFeatures
from oaml.evaluation.gallery_search import SearchResult
from oaml.evaluation.scoring import BatchFeatures, fuse_label_free

__all__ = ["RERANK_FUSION_NOTE", "RerankResult", "fuse_candidates", "qaconv_identity_scores", "ranked_identities",
           "rerank"]

logger = logging.getLogger(__name__)

RERANK_FUSION_NOTE = ("fused = w_adaface * z(global cosine) + w_qaconv * z(qaconv), where z standardises each score "
                      "with the mean and std (ddof=0) over all re-scored (probe, candidate) pairs of the protocol, "
                      "without labels; qaconv = max over the identity's images of the flip-averaged, "
                      "visibility-weighted QAConv")
"""How re-ranked scores are built; written to results.json."""

_DEFAULT_CHUNK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class RerankResult:
    """Re-ranked candidates of each probe, best first.

    Attributes:
        indices: ``P x N`` int64 identity indices.
        scores: ``P x N`` float64 fused scores (non-increasing along each row).
        global_scores: ``P x N`` float32 search scores of the same candidates.
        qaconv_scores: ``P x N`` float32 QAConv scores of the same candidates.
        identity_names: The gallery's identities.
        weights: ``(w_global, w_qaconv)``.
        fusion: Per method (``global``, ``qaconv``) its ``mean``, ``std`` and ``weight``.
    """

    indices: np.ndarray
    scores: np.ndarray
    global_scores: np.ndarray
    qaconv_scores: np.ndarray
    identity_names: tuple[str, ...]
    weights: tuple[float, float]
    fusion: dict[str, dict[str, float]]

    def names(self) -> np.ndarray:
        """``P x N`` object array of identity names."""
        return np.asarray(self.identity_names, dtype=object)[self.indices]


def _check_inputs(gallery: Gallery, probe: BatchFeatures | StoredFeatures, candidates: np.ndarray,
                  model: FaceRecognizer) -> None:
    gallery.check_model(model)
    if model.qaconv is None:
        raise ValueError(f"re-ranking needs a QAConv matcher; {model.info.path} has none "
                         f"({model.info.qaconv_unavailable})")
    if not gallery.has_maps:
        raise ValueError(f"gallery {gallery.source or '(not saved)'} holds no QAConv maps; rebuild it with "
                         f"with_maps=True to re-rank")
    if probe.maps is None or probe.maps_flip is None:
        raise ValueError("probe features need the feature maps of both views (extract them with with_maps=True)")
    n_probes = probe.maps.shape[0]
    if candidates.ndim != 2 or candidates.shape[0] != n_probes or candidates.shape[1] == 0:
        raise ValueError(f"candidates must be {n_probes} x N identity indices (N >= 1), got {candidates.shape}")
    if candidates.min() < 0 or candidates.max() >= gallery.num_identities:
        raise ValueError(f"candidates must index the gallery's {gallery.num_identities} identities")


def _chunks(lengths: np.ndarray, map_bytes: int, budget: int) -> list[tuple[int, int]]:
    """Probe ranges whose padded candidate maps (``B x max(L) x map_bytes``) fit ``budget`` (>= 1 probe each)."""
    out, start, widest = [], 0, 0
    for p, length in enumerate(lengths.tolist()):
        widest_next = max(widest, length)
        if p > start and (p + 1 - start) * widest_next * map_bytes > budget:
            out.append((start, p))
            start, widest_next = p, length
        widest = widest_next
    out.append((start, lengths.shape[0]))
    return out


def _layout(gallery: Gallery, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probe its candidates' gallery rows, padded: ``rows``, ``slots`` (candidate position; N = padding) and
    ``valid``, each ``B x K``."""
    index = gallery.row_index
    per_probe = [[index.rows_of(int(c)) for c in row] for row in candidates]
    width = max(sum(r.shape[0] for r in rows) for rows in per_probe)
    n = candidates.shape[1]
    rows = np.zeros((candidates.shape[0], width), np.int64)
    slots = np.full((candidates.shape[0], width), n, np.int64)
    for p, groups in enumerate(per_probe):
        flat = np.concatenate(groups)
        rows[p, :flat.shape[0]], rows[p, flat.shape[0]:] = flat, flat[0]
        slots[p, :flat.shape[0]] = np.repeat(np.arange(n), [g.shape[0] for g in groups])
    return rows, slots, slots < n


def _as_tensor(x: Any, device: torch.device) -> torch.Tensor | None:
    if x is None:
        return None
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device, torch.float32)


@torch.inference_mode()
def _score_chunk(gallery: Gallery, probe: BatchFeatures | StoredFeatures, sel: slice, candidates: np.ndarray,
                 model: FaceRecognizer) -> torch.Tensor:
    rows, slots, valid = _layout(gallery, candidates)
    device, qaconv = model.device, model.qaconv
    valid_t = torch.from_numpy(valid).to(device)
    total = torch.zeros(valid.shape, dtype=torch.float32, device=device)
    for maps, occ in (("maps", "occlusion"), ("maps_flip", "occlusion_flip")):
        probe_maps = _as_tensor(getattr(probe, maps)[sel], device)
        gal_maps = _as_tensor(getattr(gallery, maps)[rows], device)
        probe_occ = gal_occ = None
        if model.uses_occlusion and getattr(probe, occ) is not None and getattr(gallery, occ) is not None:
            probe_occ = _as_tensor(getattr(probe, occ)[sel], device)
            gal_occ = _as_tensor(getattr(gallery, occ)[rows], device)
        total += qaconv.match_groups(probe_maps, gal_maps, probe_occ, gal_occ, valid_t).float()  # type: ignore
    per_image = torch.where(valid_t, total / 2, torch.full_like(total, -torch.inf)).cpu()
    best = torch.full((valid.shape[0], candidates.shape[1] + 1), -torch.inf)
    best.scatter_reduce_(1, torch.from_numpy(slots), per_image, reduce="amax")
    return best[:, :-1]


def qaconv_identity_scores(gallery: Gallery, probe: BatchFeatures | StoredFeatures, candidates: np.ndarray,
                           model: FaceRecognizer, max_chunk_bytes: int = _DEFAULT_CHUNK_BYTES) -> np.ndarray:
    """QAConv score of each probe against each of its candidate identities (see the module docstring).

    Args:
        gallery: A gallery built with ``model`` and ``with_maps=True``.
        probe: The probes' features with both views' maps (``extract_features(..., with_maps=True)``), P probes.
        candidates: ``P x N`` identity indices.
        model: The gallery's model.
        max_chunk_bytes: Budget of the gathered float32 gallery maps of one probe chunk.

    Returns:
        ``P x N`` float32 scores.

    Raises:
        DataError: If ``model`` is not the gallery's model.
        ValueError: Without QAConv, gallery maps or probe maps, or on mismatched candidates.
    """
    candidates = np.asarray(candidates, np.int64)
    _check_inputs(gallery, probe, candidates, model)
    counts = np.diff(gallery.row_index.bounds)[candidates].sum(axis=1)
    map_bytes = 4 * int(np.prod(gallery.maps.shape[1:]))  # type: ignore[union-attr]
    out = np.empty(candidates.shape, np.float32)
    for a, b in _chunks(counts, map_bytes, max_chunk_bytes):
        out[a:b] = _score_chunk(gallery, probe, slice(a, b), candidates[a:b], model).numpy()
    return out


def fuse_candidates(candidates: np.ndarray, global_scores: np.ndarray, qaconv_scores: np.ndarray,
                    identity_names: Sequence[str], weights: tuple[float, float] = (0.5, 0.5)) -> RerankResult:
    """Fuse global and QAConv candidate scores label-free and re-sort each probe's candidates (module docstring).

    Raises:
        ValueError: On shape mismatches, or weights that are negative or both zero.
    """
    cand = np.asarray(candidates, np.int64)
    glob, qa = np.asarray(global_scores, np.float32), np.asarray(qaconv_scores, np.float32)
    if glob.shape != cand.shape or qa.shape != cand.shape or cand.ndim != 2:
        raise ValueError(f"candidates, global_scores and qaconv_scores must share a P x N shape, got {cand.shape}, "
                         f"{glob.shape} and {qa.shape}")
    fused, params = fuse_label_free({"global": glob.reshape(-1), "qaconv": qa.reshape(-1)},
                                    {"global": float(weights[0]), "qaconv": float(weights[1])})
    fused = fused.reshape(cand.shape)
    order = np.argsort(-fused, axis=1, kind="stable")

    def take(x: np.ndarray) -> np.ndarray:
        return np.take_along_axis(x, order, axis=1)

    return RerankResult(indices=take(cand), scores=take(fused), global_scores=take(glob), qaconv_scores=take(qa),
                        identity_names=tuple(identity_names), weights=(float(weights[0]), float(weights[1])),
                        fusion=params)


def ranked_identities(search: SearchResult, reranked: RerankResult) -> np.ndarray:
    """``P x k`` identity indices: the re-ranked top N of each probe, then the search's ranks N + 1 .. k unchanged."""
    n = reranked.indices.shape[1]
    if reranked.indices.shape[0] != search.num_probes or n > search.k:
        raise ValueError(f"{reranked.indices.shape} re-ranked candidates do not fit a {search.indices.shape} search")
    return np.concatenate([reranked.indices, search.indices[:, n:]], axis=1)


def rerank(gallery: Gallery, probe_features: BatchFeatures | StoredFeatures, top: SearchResult,
           model: FaceRecognizer, n: int = 10, weights: tuple[float, float] = (0.5, 0.5),
           max_chunk_bytes: int = _DEFAULT_CHUNK_BYTES) -> RerankResult:
    """Re-score each probe's top-``n`` identities with QAConv and re-sort them by the fused score.

    Args:
        gallery: A gallery built with ``model`` and ``with_maps=True``.
        probe_features: Features of the probes that produced ``top`` (both views' maps).
        top: The search result (its scores are the global scores).
        model: The gallery's model.
        n: Candidates re-scored per probe (capped at ``top.k``).
        weights: ``(w_global, w_qaconv)`` of the z-score fusion.
        max_chunk_bytes: Memory budget of one probe chunk (:func:`qaconv_identity_scores`).

    Returns:
        A :class:`RerankResult` with ``min(n, top.k)`` candidates per probe.

    Raises:
        DataError: If ``model`` is not the gallery's model.
        ValueError: On ``n < 1`` or the conditions of :func:`qaconv_identity_scores`.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    candidates = top.indices[:, :n]
    qa = qaconv_identity_scores(gallery, probe_features, candidates, model, max_chunk_bytes)
    logger.info("re-ranked %d candidates of %d probes with QAConv", candidates.shape[1], candidates.shape[0])
    return fuse_candidates(candidates, top.scores[:, :n], qa, gallery.identity_names, weights)
