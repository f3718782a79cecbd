"""Losses: QAConv pairwise matching, softmax-triplet, occlusion MSE and their weighted combination (SPEC §6).

This package imports only torch, numpy and oaml's constants, registry and errors (STYLE §2.1); it takes
scores and logits computed by the models, never the models themselves.
"""

from __future__ import annotations

from oaml.losses.combined import CombinedLoss, CombinedResult, nonfinite_components
from oaml.losses.occlusion import OcclusionLoss
from oaml.losses.pairwise import PairwiseMatchingLoss, PairwiseResult, same_identity
from oaml.losses.triplet import SoftmaxTripletLoss, SoftmaxTripletResult

__all__ = [
    "CombinedLoss",
    "CombinedResult",
    "OcclusionLoss",
    "PairwiseMatchingLoss",
    "PairwiseResult",
    "SoftmaxTripletLoss",
    "SoftmaxTripletResult",
    "nonfinite_components",
    "same_identity",
]
