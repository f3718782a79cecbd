"""Turn per-pair validation scores into the accuracies that training logs (SPEC §9).

The LightningModule collects, for every pair, its global pair index, its set, the AdaFace squared distance
of the flip-fused embeddings and the flip-averaged QAConv score. This module de-duplicates the pairs
(DDP pads the last ranks with repeats), then runs the shared 10-fold protocol of
:mod:`oaml.evaluation.verification` per set: AdaFace, QAConv and their fusion with the dynamic weight rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from oaml.evaluation.verification import combined_ten_fold_accuracy, dynamic_weights, ten_fold_accuracy
from oaml.models import FaceModel, QAConv

__all__ = ["PairScores", "score_pairs", "summarise_pairs"]


@dataclass
class PairScores:
    """Scores of a set of pairs (numpy arrays of equal length N).

    Attributes:
        pair_index: global pair index (unique per pair over the concatenated sets).
        set_index: which validation set each pair belongs to.
        issame: ground truth.
        dist_adaface: squared distance of the flip-fused unit embeddings.
        score_qaconv: flip-averaged QAConv logit (higher is same), or None when QAConv is disabled.
    """

    pair_index: np.ndarray
    set_index: np.ndarray
    issame: np.ndarray
    dist_adaface: np.ndarray
    score_qaconv: np.ndarray | None

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
        arrays = {name: value.reshape(-1).cpu().numpy() for name, value in gathered.items()}
        return PairScores(score_qaconv=arrays.pop("score_qaconv", None), **arrays)

    def deduplicated(self) -> PairScores:
        """The pairs sorted by ``pair_index`` with repeats removed (first occurrence kept)."""
        _, first = np.unique(self.pair_index, return_index=True)
        pick = lambda a: None if a is None else a[first]  # noqa: E731
        return PairScores(self.pair_index[first], self.set_index[first], self.issame[first],
                          self.dist_adaface[first], pick(self.score_qaconv))


def summarise_pairs(scores: PairScores, set_names: Sequence[str], weights: tuple[float, float] = (0.5, 0.5),
                    prefix: str = "") -> dict[str, float]:
    """Per-set and average accuracies.

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
        result = {"adaface": ada, "qaconv": math.nan, "combined": ada}
        if scores.score_qaconv is not None:
            qa_scores = scores.score_qaconv[rows]
            result["qaconv"] = ten_fold_accuracy(qa_scores, issame, higher_is_same=True).accuracy
            w_ada, w_qa = dynamic_weights(result["qaconv"], weights)
            result["combined"] = combined_ten_fold_accuracy(scores.dist_adaface[rows], qa_scores, issame,
                                                            w_ada, w_qa).accuracy
        for method, value in result.items():
            metrics[f"{prefix}{name}_{method}_acc"] = value
            per_method[method].append(value)
    for method, values in per_method.items():
        if values:
            metrics[f"{prefix}avg_{method}_acc"] = float(np.mean(values))
    return metrics


@torch.no_grad()
def score_pairs(model: FaceModel, qaconv: QAConv | None, images: Tensor, issame: Tensor, set_index: Tensor,
                global_index: Tensor, occlusion_aware: bool = True) -> PairScores:
    """Score the pairs (2k, 2k+1) of one validation batch (SPEC §9).

    AdaFace: the squared distance of the flip-fused embeddings normalise(n1*e1 + n2*e2). QAConv: the mean of the
    paired scores of the originals and of the mirrored images, each weighted by both images' visibility maps
    when ``occlusion_aware``.

    Raises:
        ValueError: if the batch does not hold whole pairs (odd size, or it starts on a second image).
    """
    if images.shape[0] % 2 or int(global_index[0]) % 2:
        raise ValueError(f"validation batches must hold whole pairs; got {images.shape[0]} images starting at "
                         f"image {int(global_index[0])}: use an even batch size and a sequential sampler")
    plain, mirrored = model(images), model(torch.flip(images, dims=[3]))
    fused = F.normalize((plain.embedding * plain.norm + mirrored.embedding * mirrored.norm).float(), dim=1)
    dist = (fused[0::2] - fused[1::2]).pow(2).sum(dim=1)
    score = None
    if qaconv is not None:
        total = torch.zeros_like(dist)
        for out in (plain, mirrored):
            occ = out.occlusion if occlusion_aware else None
            total += qaconv.match_pairs(out.feature_map[0::2], out.feature_map[1::2],
                                        None if occ is None else occ[0::2],
                                        None if occ is None else occ[1::2]).float()
        score = (total / 2).cpu().numpy()
    return PairScores(pair_index=(global_index[0::2] // 2).cpu().numpy(), set_index=set_index[0::2].cpu().numpy(),
                      issame=issame[0::2].cpu().numpy().astype(bool), dist_adaface=dist.cpu().numpy(),
                      score_qaconv=score)
