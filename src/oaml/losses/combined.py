"""The weighted total loss and its named parts (SPEC §6).

L = w_a · adaface + w_q · (pairwise + w_t · (cls + triplet)) + w_o · occlusion, with the seed defaults
w_a = 0.1, w_q = 0.7, w_t = 0.5, w_o = 0.3. A component whose weight is 0 is not computed and its inputs
may be omitted, which gives the ablations ("AdaFace only" is qaconv_weight = occlusion_weight = 0); the
``uses_*`` properties tell the caller which inputs to compute.

Non-finite values are never replaced (SPEC §6): the total is returned as computed, and
:func:`nonfinite_components` names the parts that are not finite so the caller can skip the step and
log them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from oaml.losses.occlusion import OcclusionLoss
from oaml.losses.pairwise import PairwiseMatchingLoss
from oaml.losses.triplet import SoftmaxTripletLoss

__all__ = ["CombinedLoss", "CombinedResult", "nonfinite_components"]


class CombinedResult(NamedTuple):
    """Outputs of :class:`CombinedLoss`.

    Attributes:
        total: the weighted scalar loss (carries the gradient).
        parts: every computed component by name, detached 0-d tensors for logging: ``total`` and the
            unweighted ``adaface``, ``pairwise``, ``pairwise_acc``, ``cls``, ``cls_acc``, ``triplet``,
            ``triplet_acc``, ``occlusion`` (only those whose weight is non-zero; ``cls`` and ``cls_acc`` only when
            some sample of the batch has a class-memory logit to learn from). Tensors rather than Python floats;
            ``float(v)`` converts one.
    """

    total: Tensor
    parts: dict[str, Tensor]


def nonfinite_components(parts: Mapping[str, Tensor | float]) -> list[str]:
    """Names of the components that are NaN or infinite, in the mapping's order."""
    bad = []
    for name, value in parts.items():
        finite = bool(torch.isfinite(value).all()) if isinstance(value, Tensor) else math.isfinite(value)
        if not finite:
            bad.append(name)
    return bad


def _require(value: Tensor | None, name: str, component: str) -> Tensor:
    if value is None:
        raise ValueError(f"{name} is required because the {component} loss weight is non-zero")
    return value


class CombinedLoss(nn.Module):
    """Weighted sum of the AdaFace, QAConv (pairwise and softmax-triplet) and occlusion losses.

    Args:
        adaface_weight: w_a (0.1).
        qaconv_weight: w_q (0.7), multiplies pairwise + w_t · (cls + triplet).
        occlusion_weight: w_o (0.3).
        triplet_weight: w_t (0.5), inside the QAConv term.
        triplet_margin: margin of the batch-hard triplet loss (1.0).

    Raises:
        ValueError: if a weight is negative or not finite, or all of w_a, w_q, w_o are 0.
    """

    def __init__(
        self,
        adaface_weight: float = 0.1,
        qaconv_weight: float = 0.7,
        occlusion_weight: float = 0.3,
        triplet_weight: float = 0.5,
        triplet_margin: float = 1.0,
    ) -> None:
        super().__init__()
        weights = {"adaface_weight": adaface_weight, "qaconv_weight": qaconv_weight,
                   "occlusion_weight": occlusion_weight, "triplet_weight": triplet_weight}
        for name, value in weights.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if adaface_weight == qaconv_weight == occlusion_weight == 0:
            raise ValueError("at least one of adaface_weight, qaconv_weight, occlusion_weight must be > 0")
        self.adaface_weight = float(adaface_weight)
        self.qaconv_weight = float(qaconv_weight)
        self.occlusion_weight = float(occlusion_weight)
        self.triplet_weight = float(triplet_weight)
        self.pairwise = PairwiseMatchingLoss()
        self.softmax_triplet = SoftmaxTripletLoss(triplet_margin)
        self.occlusion = OcclusionLoss()

    @property
    def uses_adaface(self) -> bool:
        """Whether ``adaface_loss`` is needed."""
        return self.adaface_weight > 0

    @property
    def uses_qaconv(self) -> bool:
        """Whether ``qaconv_score`` (the batch's B x B QAConv matrix) is needed."""
        return self.qaconv_weight > 0

    @property
    def uses_class_memory(self) -> bool:
        """Whether ``memory_logits`` and ``memory_valid`` are needed."""
        return self.qaconv_weight > 0 and self.triplet_weight > 0

    @property
    def uses_occlusion(self) -> bool:
        """Whether ``occlusion`` and ``occlusion_target`` are needed."""
        return self.occlusion_weight > 0

    def forward(
        self,
        labels: Tensor,
        adaface_loss: Tensor | None = None,
        qaconv_score: Tensor | None = None,
        memory_logits: Tensor | None = None,
        memory_valid: Tensor | None = None,
        occlusion: Tensor | None = None,
        occlusion_target: Tensor | None = None,
    ) -> CombinedResult:
        """Compute the total and its parts; inputs of disabled components may be None.

        Args:
            labels: B identity labels.
            adaface_loss: the margin head's cross-entropy, a scalar (``PartialFC``'s loss, or ``F.cross_entropy``
                of a ``MarginHead``'s logits).
            qaconv_score: B x B QAConv(F, F; O, O) logits.
            memory_logits: B x (1 + k) class-memory logits (``ClassMemory.logits``).
            memory_valid: B x (1 + k) bool validity of ``memory_logits``.
            occlusion: B x 1 x H x W predicted visibility.
            occlusion_target: B x 1 x H x W target visibility.

        Returns:
            CombinedResult(total, parts).

        Raises:
            ValueError: if an enabled component's input is missing or has the wrong shape.
        """
        terms: list[Tensor] = []
        parts: dict[str, Tensor] = {}
        if self.uses_adaface:
            parts["adaface"] = _require(adaface_loss, "adaface_loss", "adaface").float()
            terms.append(self.adaface_weight * parts["adaface"])
        if self.uses_qaconv:
            terms.append(self.qaconv_weight * self._qaconv_term(labels, qaconv_score, memory_logits,
                                                                memory_valid, parts))
        if self.uses_occlusion:
            prediction = _require(occlusion, "occlusion", "occlusion")
            target = _require(occlusion_target, "occlusion_target", "occlusion")
            parts["occlusion"] = self.occlusion(prediction, target)
            terms.append(self.occlusion_weight * parts["occlusion"])
        total = torch.stack(terms).sum()
        parts["total"] = total
        return CombinedResult(total, {name: value.detach() for name, value in parts.items()})

    def _qaconv_term(
        self,
        labels: Tensor,
        qaconv_score: Tensor | None,
        memory_logits: Tensor | None,
        memory_valid: Tensor | None,
        parts: dict[str, Tensor],
    ) -> Tensor:
        """pairwise + w_t · (cls + triplet); fills ``parts``."""
        score = _require(qaconv_score, "qaconv_score", "qaconv")
        parts["pairwise"], parts["pairwise_acc"] = self.pairwise(score, labels)
        term = parts["pairwise"]
        if self.uses_class_memory:
            logits = _require(memory_logits, "memory_logits", "triplet")
            valid = _require(memory_valid, "memory_valid", "triplet")
            cls_loss, triplet_loss, cls_acc, triplet_acc, cls_rows = self.softmax_triplet(score, labels, logits, valid)
            parts.update(triplet=triplet_loss, triplet_acc=triplet_acc)
            if int(cls_rows):  # absent until the memory holds a sample's class and a neighbour (not a fake 0)
                parts.update(cls=cls_loss, cls_acc=cls_acc)
            term = term + self.triplet_weight * (cls_loss + triplet_loss)
        return term
