"""The one scoring path of oaml (SPEC §9): flip-fused embeddings, flip-averaged QAConv, pair scores and their fusion.

Validation and test during training, ``oaml eval``, ``oaml embed``, the Python API (:class:`FaceRecognizer`) and
the study all call these functions, so a checkpoint gets exactly the same scores wherever it is scored (a test
pins validation to ``oaml eval`` on the same ``.bin``).

- **Embeddings**: every face is run together with its mirror image (one forward pass of ``cat([x, flip(x)])``);
  the embedding is ``normalise(n1 e1 + n2 e2)`` and the norm the mean of the two (:func:`embed_views`).
- **AdaFace scores**: the squared distance of the fused unit embeddings for the 10-fold protocol, the cosine
  (``1 - d / 2``) for ROC curves.
- **QAConv scores**: the paired or all-pairs QAConv logit, each image weighted by its own visibility map when the
  model is occlusion-aware, averaged over the originals and the mirror images.
- **Fusion**: :func:`fused_ten_fold` (10-fold, standardised on the training folds only, with the seed's dynamic
  weight rule as an explicit argument) and :func:`fuse_label_free` (the combined score of ROC curves, standardised
  over all pairs without labels).

All pairs ``i < j`` of N images are scored in row blocks of the upper triangle (``numpy.triu_indices`` order), so
only a ``block x N`` slice exists at a time and ``i = j`` is never scored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from oaml.evaluation.verification import KFoldResult, combined_ten_fold_accuracy, dynamic_weights, ten_fold_accuracy
from oaml.models import IResNet, OcclusionHead, embed_faces

__all__ = ["FUSION_NOTE", "BatchFeatures", "PairScores", "cosine_paired", "cosine_upper", "embed_views",
           "fuse_flip", "fuse_label_free", "fused_ten_fold", "qaconv_all", "qaconv_paired", "qaconv_upper",
           "score_pair_batch", "squared_distances", "summarise_pairs", "upper_blocks"]

logger = logging.getLogger(__name__)

FUSION_NOTE = ("combined = w_adaface * z(adaface cosine) + w_qaconv * z(qaconv), where z standardises each score "
               "with the mean and std (ddof=0) over all scored pairs of the protocol, computed without labels; the "
               "10-fold combined accuracy instead standardises on the training folds only (as validation does)")
"""How the combined score of ROC curves is built; written to results.json and report.md."""

_NORM_EPS = 1e-12  # floor of a fused vector's norm (F.normalize's default)
_PAIRS_PER_CALL = 1024  # pairs handed to QAConv at once (it chunks further by memory)
_COSINE_BLOCK_PAIRS = 1 << 22  # entries of one cosine block (16 MiB of float32)


class BatchFeatures(NamedTuple):
    """Features of a set of faces and of their mirror images.

    Attributes:
        embedding: N x 512 flip-fused unit embeddings (the plain embedding without flip).
        norm: N mean of the face's and its mirror's raw-embedding norms (the face's norm without flip).
        maps: N x C x H x W feature maps of the faces, or None when not requested.
        occlusion: N x 1 x H x W visibility maps, or None (not requested, or no occlusion head).
        maps_flip: feature maps of the mirror images, or None.
        occlusion_flip: visibility maps of the mirror images, or None.
    """

    embedding: Tensor
    norm: Tensor
    maps: Tensor | None
    occlusion: Tensor | None
    maps_flip: Tensor | None
    occlusion_flip: Tensor | None

    def cpu(self) -> BatchFeatures:
        """The features as float32 CPU tensors."""
        return BatchFeatures(*(None if t is None else t.float().cpu() for t in self))

    @staticmethod
    def concatenate(parts: Sequence[BatchFeatures]) -> BatchFeatures:
        """Join the features of several batches, in order."""
        return BatchFeatures(*(None if parts[0][k] is None else torch.cat([p[k] for p in parts])
                               for k in range(len(BatchFeatures._fields))))


def fuse_flip(e1: Tensor, n1: Tensor, e2: Tensor, n2: Tensor) -> Tensor:
    """Norm-weighted flip fusion ``normalise(n1 * e1 + n2 * e2)`` of unit embeddings (N x D) and norms (N x 1)."""
    return F.normalize((e1 * n1.reshape(-1, 1) + e2 * n2.reshape(-1, 1)).float(), dim=1, eps=_NORM_EPS)


def embed_views(backbone: IResNet, occlusion_head: OcclusionHead | None, x: Tensor, with_maps: bool = False,
                flip: bool = True, gate: bool = False) -> BatchFeatures:
    """Embed normalised faces ``x`` (B x 3 x S x S) together with their mirror images, in one forward pass.

    Args:
        backbone: the IR backbone (returns embedding, norm, feature map).
        occlusion_head: predicts visibility maps from the feature maps; None gives no maps.
        x: the faces, already normalised in the model's channel order.
        with_maps: keep the feature maps (and visibility maps) of both views.
        flip: fuse each face with its mirror; False gives the plain embedding of the faces alone.
        gate: the model gates its feature map by the predicted visibility before the embedding layer
            (:func:`oaml.models.face_model.embed_faces`).

    Returns:
        The :class:`BatchFeatures` of ``x``, on ``x``'s device.
    """
    batch = x.shape[0]
    embedding, norm, feature_map, occlusion = embed_faces(backbone, occlusion_head if with_maps or gate else None,
                                                          torch.cat([x, x.flip(3)]) if flip else x, gate=gate)
    occlusion = occlusion if with_maps else None
    if flip:
        fused = fuse_flip(embedding[:batch], norm[:batch], embedding[batch:], norm[batch:])
        mean_norm = (norm[:batch] + norm[batch:]).float().reshape(-1) / 2
    else:
        fused, mean_norm = embedding.float(), norm.float().reshape(-1)
    maps = feature_map if with_maps else None

    def views(t: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        return (None, None) if t is None else (t[:batch], t[batch:]) if flip else (t, None)

    (maps_a, maps_b), (occ_a, occ_b) = views(maps), views(occlusion)
    return BatchFeatures(fused, mean_norm, maps_a, occ_a, maps_b, occ_b)


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``||a_k - b_k||^2`` per row of two N x D tensors (the AdaFace distance of the 10-fold protocol)."""
    return (a.contiguous() - b.contiguous()).pow(2).sum(dim=1)


def _visibility(feats: BatchFeatures, name: str, rows: Tensor | slice, occlusion_aware: bool,
                device: torch.device) -> Tensor | None:
    occ = getattr(feats, name)
    return None if occ is None or not occlusion_aware else occ[rows].to(device)


@torch.no_grad()
def qaconv_paired(qaconv: nn.Module, a: BatchFeatures, b: BatchFeatures, rows_a: Tensor, rows_b: Tensor,
                  occlusion_aware: bool) -> Tensor:
    """Flip-averaged paired QAConv scores of ``(a[rows_a[k]], b[rows_b[k]])``: N float32 scores on the CPU.

    Each image is weighted by its own visibility map when ``occlusion_aware`` (and the features hold maps).
    """
    device = next(qaconv.parameters()).device
    out = []
    for start in range(0, rows_a.shape[0], _PAIRS_PER_CALL):
        ia, ib = rows_a[start:start + _PAIRS_PER_CALL], rows_b[start:start + _PAIRS_PER_CALL]
        total = torch.zeros(ia.shape[0])
        for maps, occ in (("maps", "occlusion"), ("maps_flip", "occlusion_flip")):
            ma, mb = getattr(a, maps)[ia].to(device), getattr(b, maps)[ib].to(device)
            oa, ob = (_visibility(f, occ, rows, occlusion_aware, device) for f, rows in ((a, ia), (b, ib)))
            total = total + qaconv.match_pairs(ma, mb, oa, ob).float().cpu()
        out.append(total / 2)
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def qaconv_all(qaconv: nn.Module, probe: BatchFeatures, gallery: BatchFeatures, occlusion_aware: bool,
               probe_rows: slice = slice(None), gallery_rows: slice = slice(None)) -> Tensor:
    """Flip-averaged all-pairs QAConv scores of ``probe[probe_rows]`` x ``gallery[gallery_rows]`` (CPU float32).

    QAConv chunks the work so that its extra memory stays within ``qaconv.max_chunk_bytes``.
    """
    device = next(qaconv.parameters()).device
    total = None
    for maps, occ in (("maps", "occlusion"), ("maps_flip", "occlusion_flip")):
        mp, mg = getattr(probe, maps)[probe_rows].to(device), getattr(gallery, maps)[gallery_rows].to(device)
        op = _visibility(probe, occ, probe_rows, occlusion_aware, device)
        og = _visibility(gallery, occ, gallery_rows, occlusion_aware, device)
        scores = qaconv(mp, mg, op, og).float().cpu()
        total = scores if total is None else total + scores
    assert total is not None
    return total / 2


def upper_blocks(n: int, block_rows: int) -> Iterator[tuple[int, int]]:
    """Row blocks ``[a, b)`` of the strict upper triangle of an ``n x n`` matrix (the last row has no pairs)."""
    for a in range(0, n - 1, block_rows):
        yield a, min(a + block_rows, n - 1)


def _take_upper(block: np.ndarray) -> np.ndarray:
    """Row r of a block that starts at row a and column a + 1 keeps columns r..: the pairs (a + r, j > a + r)."""
    rows, cols = block.shape
    return block[np.triu_indices(rows, k=0, m=cols)]


def cosine_paired(emb_a: Tensor, emb_b: Tensor, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Cosine ``1 - d / 2`` of the unit embeddings ``emb_a[rows_a[k]]`` and ``emb_b[rows_b[k]]`` (float64, N), with
    ``d`` the :func:`squared_distances` of the 10-fold protocol."""
    dist = squared_distances(emb_a[torch.as_tensor(rows_a)], emb_b[torch.as_tensor(rows_b)])
    return 1.0 - dist.double().numpy() / 2.0


def cosine_upper(emb_probe: Tensor, emb_gallery: Tensor) -> np.ndarray:
    """Cosine of ``probe[i]`` and ``gallery[j]`` for all i < j (float64, ``n(n-1)/2`` in ``triu_indices`` order)."""
    n = emb_probe.shape[0]
    probe, gallery = emb_probe.double().numpy(), emb_gallery.double().numpy()
    block = max(1, _COSINE_BLOCK_PAIRS // max(n, 1))
    parts = [_take_upper(probe[a:b] @ gallery[a + 1:].T) for a, b in upper_blocks(n, block)]
    return np.concatenate(parts) if parts else np.zeros(0)


def qaconv_upper(qaconv: nn.Module, probe: BatchFeatures, gallery: BatchFeatures, occlusion_aware: bool,
                 block_rows: int = 128, progress: bool = True, desc: str = "qaconv") -> np.ndarray:
    """Flip-averaged QAConv of ``probe[i]`` against ``gallery[j]`` for all i < j (``triu_indices`` order, float64).

    ``probe`` and ``gallery`` describe the same N images (e.g. masked and clean copies); ``block_rows`` probe rows
    are scored at a time.
    """
    from tqdm.auto import tqdm

    n = probe.embedding.shape[0]
    parts = []
    with tqdm(total=n * (n - 1) // 2, desc=desc, unit="pair", unit_scale=True, disable=not progress,
              leave=False) as bar:
        for a, b in upper_blocks(n, block_rows):
            block = qaconv_all(qaconv, probe, gallery, occlusion_aware, slice(a, b), slice(a + 1, None)).numpy()
            parts.append(_take_upper(block).astype(np.float64))
            bar.update(int(parts[-1].size))
    return np.concatenate(parts) if parts else np.zeros(0)


def fused_ten_fold(dist_adaface: np.ndarray, score_qaconv: np.ndarray, issame: np.ndarray,
                   weights: tuple[float, float] = (0.5, 0.5), dynamic: bool = False,
                   qaconv_accuracy: float | None = None) -> tuple[KFoldResult, tuple[float, float]]:
    """10-fold accuracy of the fused AdaFace + QAConv score (SPEC §9), standardised on the training folds only.

    Args:
        dist_adaface: N squared distances of the flip-fused embeddings.
        score_qaconv: N flip-averaged QAConv scores (higher = same).
        issame: ground truth.
        weights: configured ``(w_adaface, w_qaconv)``.
        dynamic: apply the seed's rule: ``(0.8, 0.2)`` while QAConv's own 10-fold accuracy is below 0.5.
        qaconv_accuracy: QAConv's 10-fold accuracy, if already known (computed here when needed).

    Returns:
        ``(result, weights used)``.
    """
    if dynamic:
        if qaconv_accuracy is None:
            qaconv_accuracy = ten_fold_accuracy(score_qaconv, issame, higher_is_same=True).accuracy
        weights = dynamic_weights(qaconv_accuracy, weights)
    w_ada, w_qa = float(weights[0]), float(weights[1])
    return combined_ten_fold_accuracy(dist_adaface, score_qaconv, issame, w_ada, w_qa), (w_ada, w_qa)


def _standardise(scores: np.ndarray, name: str) -> tuple[np.ndarray, dict[str, float]]:
    mean, std = float(scores.mean()), float(scores.std())
    if std == 0.0:
        logger.warning("%s scores are constant over all %d pairs; they carry no weight in the fusion", name,
                       scores.size)
        return np.zeros_like(scores), {"mean": mean, "std": std}
    return (scores - mean) / std, {"mean": mean, "std": std}


def fuse_label_free(scores: Mapping[str, np.ndarray], weights: Mapping[str, float]
                    ) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    """Weighted sum of label-free z-scores (:data:`FUSION_NOTE`): the combined score of ROC curves.

    Args:
        scores: method name to its N scores (higher = same).
        weights: method name to its weight (the same keys).

    Returns:
        ``(combined, params)``: the N fused scores and, per method, its ``mean``, ``std`` and ``weight``.

    Raises:
        ValueError: if the keys differ, lengths differ, or a weight is negative or all are zero.
    """
    if set(scores) != set(weights) or not scores:
        raise ValueError(f"scores {sorted(scores)} and weights {sorted(weights)} must name the same methods")
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(f"weights must be >= 0 and not all 0, got {dict(weights)}")
    sizes = {name: s.shape for name, s in scores.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"score arrays differ in shape: {sizes}")
    combined = np.zeros(next(iter(sizes.values())), np.float64)
    params: dict[str, dict[str, float]] = {}
    for name, values in scores.items():
        z, stats = _standardise(np.asarray(values, np.float64), name)
        combined += weights[name] * z
        params[name] = {**stats, "weight": float(weights[name])}
    return combined, params


@dataclass
class PairScores:
    """Scores of a set of verification pairs (numpy arrays of equal length N), as validation collects them.

    Attributes:
        pair_index: global pair index (unique per pair over the concatenated sets).
        set_index: which verification set each pair belongs to.
        issame: ground truth.
        dist_adaface: squared distance of the flip-fused unit embeddings.
        score_qaconv: flip-averaged QAConv logit (higher is same), or None when QAConv is disabled.
        visibility_predicted: ``N x 2 x 7 x 7`` visibility the occlusion head predicts for the first and the
            second image of each pair, or None when it is not asked for.
        visibility_true: ``N x 2 x 7 x 7`` true visible fractions of the same cells, or None.
    """

    pair_index: np.ndarray
    set_index: np.ndarray
    issame: np.ndarray
    dist_adaface: np.ndarray
    score_qaconv: np.ndarray | None
    visibility_predicted: np.ndarray | None = None
    visibility_true: np.ndarray | None = None

    @staticmethod
    def concatenate(parts: Sequence[PairScores]) -> PairScores:
        """Join the scores of several batches."""
        join = lambda name: (None if getattr(parts[0], name) is None  # noqa: E731
                             else np.concatenate([getattr(p, name) for p in parts]))
        return PairScores(**{item.name: join(item.name) for item in fields(PairScores)})

    def as_tensor_dict(self) -> dict[str, Tensor]:
        """The arrays as tensors, for ``all_gather`` (a missing QAConv score is left out)."""
        return {item.name: torch.from_numpy(np.ascontiguousarray(getattr(self, item.name)))
                for item in fields(self) if getattr(self, item.name) is not None}

    @staticmethod
    def from_gathered(gathered: dict[str, Tensor]) -> PairScores:
        """Inverse of :meth:`as_tensor_dict` after ``all_gather`` added a leading rank dimension."""
        arrays = {name: value.flatten(0, 1).cpu().numpy() for name, value in gathered.items()}
        return PairScores(score_qaconv=arrays.pop("score_qaconv", None), **arrays)

    def deduplicated(self) -> PairScores:
        """The pairs sorted by ``pair_index`` with repeats removed (first occurrence kept; DDP pads with repeats)."""
        _, first = np.unique(self.pair_index, return_index=True)
        return PairScores(**{item.name: None if getattr(self, item.name) is None else getattr(self, item.name)[first]
                             for item in fields(self)})


@torch.no_grad()
def score_pair_batch(backbone: IResNet, occlusion_head: OcclusionHead | None, qaconv: nn.Module | None, images: Tensor,
                     issame: Tensor, set_index: Tensor, global_index: Tensor, occlusion_aware: bool,
                     gate: bool = False, visibility: Tensor | None = None) -> PairScores:
    """Score the pairs (2k, 2k+1) of one verification batch of normalised faces (validation and test).

    With ``visibility`` (the ``B x 7 x 7`` true visible fractions) and an ``occlusion_head``, the head's predicted
    maps of the (unmirrored) images are kept next to the truth, for its calibration; the scores are the same.

    Raises:
        ValueError: if the batch does not hold whole pairs (odd size, or it starts on a second image).
    """
    if images.shape[0] % 2 or int(global_index[0]) % 2:
        raise ValueError(f"validation batches must hold whole pairs; got {images.shape[0]} images starting at "
                         f"image {int(global_index[0])}: use an even batch size and a sequential sampler")
    calibrate = visibility is not None and occlusion_head is not None
    feats = embed_views(backbone, occlusion_head if occlusion_aware or gate or calibrate else None, images,
                        with_maps=qaconv is not None or calibrate, gate=gate)
    first = torch.arange(0, images.shape[0], 2, device=images.device)
    second = first + 1
    dist = squared_distances(feats.embedding[first], feats.embedding[second]).float().cpu()
    score = None if qaconv is None else qaconv_paired(qaconv, feats, feats, first, second, occlusion_aware).numpy()
    scores = PairScores(pair_index=(global_index[0::2] // 2).cpu().numpy(), set_index=set_index[0::2].cpu().numpy(),
                        issame=issame[0::2].cpu().numpy().astype(bool), dist_adaface=dist.numpy(), score_qaconv=score)
    if calibrate and feats.occlusion is not None and visibility is not None:
        cells = visibility.shape[-2:]
        scores.visibility_predicted = feats.occlusion.float().cpu().numpy().reshape(-1, 2, *cells)
        scores.visibility_true = visibility.float().cpu().numpy().reshape(-1, 2, *cells)
    return scores


def summarise_pairs(scores: PairScores, set_names: Sequence[str], weights: tuple[float, float] = (0.5, 0.5),
                    prefix: str = "", dynamic: bool = True) -> dict[str, float]:
    """Per-set and average accuracies of validation.

    Returns:
        ``{prefix}{set}_adaface_acc``, ``{prefix}{set}_qaconv_acc``, ``{prefix}{set}_combined_acc`` for each set
        with pairs, and the same keys with ``avg`` as the set name (means over those sets). Without QAConv
        scores the combined accuracy is the AdaFace accuracy.
    """
    scores = scores.deduplicated()
    metrics: dict[str, float] = {}
    per_method: dict[str, list[float]] = {"adaface": [], "qaconv": [], "combined": []}
    for index, name in enumerate(set_names):
        rows = scores.set_index == index
        if not rows.any():
            continue
        issame = scores.issame[rows].astype(bool)
        ada = ten_fold_accuracy(scores.dist_adaface[rows], issame, higher_is_same=False).accuracy
        result = {"adaface": ada, "qaconv": float("nan"), "combined": ada}
        if scores.score_qaconv is not None:
            qa_scores = scores.score_qaconv[rows]
            result["qaconv"] = ten_fold_accuracy(qa_scores, issame, higher_is_same=True).accuracy
            result["combined"] = fused_ten_fold(scores.dist_adaface[rows], qa_scores, issame, weights, dynamic,
                                                result["qaconv"])[0].accuracy
        for method, value in result.items():
            metrics[f"{prefix}{name}_{method}_acc"] = value
            per_method[method].append(value)
    for method, values in per_method.items():
        if values:
            metrics[f"{prefix}avg_{method}_acc"] = float(np.mean(values))
    return metrics
