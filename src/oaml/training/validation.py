"""Turn per-pair validation scores into the accuracies that training logs (SPEC §9).

The LightningModule collects, for every pair, its global pair index, its set, the AdaFace squared distance
of the flip-fused embeddings and the flip-averaged QAConv score. This module de-duplicates the pairs
(DDP pads the last ranks with repeats), then runs the shared 10-fold protocol of
:mod:`oaml.evaluation.verification` per set: AdaFace, QAConv and their fusion with the dynamic weight rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oaml.evaluation.verification import combined_ten_fold_accuracy, dynamic_weights, ten_fold_accuracy

__all__ = ["PairScores", "summarise_pairs"]


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
