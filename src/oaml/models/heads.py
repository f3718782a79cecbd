"""Margin heads: AdaFace, ArcFace and CosFace (SPEC §3). They return logits; cross-entropy is applied outside.

Papers: Kim et al., "AdaFace: Quality Adaptive Margin for Face Recognition" (CVPR 2022); Deng et al.,
"ArcFace" (CVPR 2019); Wang et al., "CosFace" (CVPR 2018).

Every head owns a parameter ``kernel`` of shape [embedding_size, num_classes] (the name and layout of the
released AdaFace ``head.kernel``), initialised uniform(-1, 1) with unit columns; each forward pass
normalises the columns again and computes cos_j = e^T w_j. AdaFace additionally keeps the buffers
``batch_mean``, ``batch_std`` and ``t`` (the last one is unused, kept so that released ``head.*`` keys load
strictly).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from oaml._registry import Registry

__all__ = ["HEADS", "PAPER_MARGINS", "AdaFace", "ArcFace", "CosFace", "MarginHead", "build_head"]

HEADS: Registry[MarginHead] = Registry("head")
"""Margin-head factories by name; read through :func:`build_head`."""

PAPER_MARGINS: dict[str, float] = {"adaface": 0.4, "arcface": 0.5, "cosface": 0.4}
"""Each head's margin m from its paper (SPEC §3): what ``build_head`` uses when no margin is given."""


def _true_class_mask(logits: Tensor, labels: Tensor) -> Tensor:
    """B x N bool, True at (i, labels[i])."""
    mask = torch.zeros_like(logits, dtype=torch.bool)
    return mask.scatter_(1, labels.reshape(-1, 1).long(), True)


class MarginHead(nn.Module):
    """Base class: the ``kernel`` parameter and the cosine logits.

    Args:
        embedding_size: size of the unit embeddings.
        num_classes: number of identities.
        m: the margin.
        s: the logit scale.
    """

    def __init__(self, embedding_size: int, num_classes: int, m: float, s: float) -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(f"embedding_size and num_classes must be positive, got {embedding_size}, {num_classes}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.m = float(m)
        self.s = float(s)
        self.kernel = nn.Parameter(torch.empty(embedding_size, num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """uniform(-1, 1), then every column (one class) scaled to unit L2 norm."""
        with torch.no_grad():
            self.kernel.uniform_(-1.0, 1.0)
            self.kernel.copy_(F.normalize(self.kernel, dim=0))

    def cosine(self, embedding: Tensor) -> Tensor:
        """B x N fp32 cosines between unit embeddings (B x E) and the normalised class columns.

        The product may run in bf16/fp16 under the caller's autocast; its result is brought to fp32 so that
        the clamp to 1 - eps and arccos stay meaningful (bf16 cannot represent 1 - 1e-3, and arccos has an
        infinite gradient at 1).
        """
        return (embedding @ F.normalize(self.kernel, dim=0)).float()

    def target_logit(self, cos_y: Tensor, norm: Tensor) -> Tensor:
        """The true-class logit (scaled by ``s``) from the true-class cosine, elementwise.

        ``forward`` applies it to the whole B x N cosine matrix and keeps it at the true class only; the sharded
        head (:mod:`oaml.models.partial_fc`) applies it to a B x 1 column, so both share these formulas.

        Args:
            cos_y: B x N (or B x 1) fp32 cosines.
            norm: B x 1 norms of the raw embeddings (AdaFace only; in training mode AdaFace updates its norm
                statistics from them, once per call).
        """
        raise NotImplementedError

    def non_target_logit(self, cosine: Tensor) -> Tensor:
        """The logit of a class that is not the sample's (scaled by ``s``): s cos_j."""
        return cosine * self.s

    def forward(self, embedding: Tensor, norm: Tensor, labels: Tensor) -> Tensor:
        """Margin logits: :meth:`target_logit` at the true class, :meth:`non_target_logit` elsewhere.

        Args:
            embedding: B x E unit embeddings.
            norm: B x 1 norms of the raw embeddings (used by AdaFace only).
            labels: B class indices.

        Returns:
            B x num_classes logits (scaled by ``s``).
        """
        cosine = self.cosine(embedding)
        target = self.target_logit(cosine, norm)
        return torch.where(_true_class_mask(cosine, labels), target, self.non_target_logit(cosine))


class AdaFace(MarginHead):
    """AdaFace: a margin that adapts to the feature norm, interpolating ArcFace and CosFace (SPEC §3).

    ŝ = clip(h (n - μ) / (σ + eps), -1, 1) with n the clipped, detached norm; the true class gets
    s (cos(clip(θ - m ŝ, eps, π - eps)) - m - m ŝ). ŝ = -1 is ArcFace(m), ŝ = 0 is CosFace(m), h = 0 is
    CosFace(m) for every sample.

    The batch statistics μ, σ are exponential moving averages updated under no_grad with an unbiased std,
    and the updated values are used at once (as in the released code). They are updated only in training
    mode, and only for batches of at least two samples (an unbiased std of one value is undefined);
    evaluation never changes them.

    Args:
        embedding_size: size of the unit embeddings.
        num_classes: number of identities.
        m: margin (0.4).
        h: concentration of the margin scaler (0.333; 0 turns AdaFace into CosFace).
        s: logit scale (64).
        t_alpha: EMA momentum of the norm statistics (0.01).
    """

    eps = 1e-3
    t: Tensor
    batch_mean: Tensor
    batch_std: Tensor

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m: float = 0.4,
        h: float = 0.333,
        s: float = 64.0,
        t_alpha: float = 0.01,
    ) -> None:
        super().__init__(embedding_size, num_classes, m, s)
        self.h = float(h)
        self.t_alpha = float(t_alpha)
        self.register_buffer("t", torch.zeros(1))
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    def margin_scaler(self, norm: Tensor) -> Tensor:
        """ŝ for each sample (B x 1), updating the norm statistics first in training mode."""
        safe_norm = norm.detach().clamp(0.001, 100.0).reshape(-1, 1)
        if self.training and safe_norm.shape[0] > 1:
            with torch.no_grad():
                alpha = self.t_alpha
                self.batch_mean.mul_(1 - alpha).add_(alpha * safe_norm.mean().to(self.batch_mean.dtype))
                self.batch_std.mul_(1 - alpha).add_(alpha * safe_norm.std(unbiased=True).to(self.batch_std.dtype))
        scaler = self.h * (safe_norm - self.batch_mean) / (self.batch_std + self.eps)
        return scaler.clamp(-1.0, 1.0)

    def target_logit(self, cos_y: Tensor, norm: Tensor) -> Tensor:
        """s (cos(clip(θ_y + g_angle, eps, π - eps)) - g_add) on the clamped cosine (SPEC §3 step 4); the
        scaler comes from ``norm`` (:meth:`margin_scaler`, which updates the statistics in training mode)."""
        cosine = cos_y.clamp(-1 + self.eps, 1 - self.eps)
        scaler = self.margin_scaler(norm).to(cosine.dtype)
        g_angle = -self.m * scaler
        g_add = self.m + self.m * scaler
        theta = torch.acos(cosine)
        return (torch.cos((theta + g_angle).clamp(self.eps, math.pi - self.eps)) - g_add) * self.s

    def non_target_logit(self, cosine: Tensor) -> Tensor:
        """s cos_j on the cosine clamped to [-1 + eps, 1 - eps] (AdaFace clamps every class, SPEC §3)."""
        return cosine.clamp(-1 + self.eps, 1 - self.eps) * self.s


class ArcFace(MarginHead):
    """ArcFace: true class s cos(clip(θ + m, eps, π - eps)), other classes s cos_j (SPEC §3).

    The cosine is clamped to [-1 + eps, 1 - eps] only inside arccos, whose gradient is infinite at ±1.

    Args:
        embedding_size: size of the unit embeddings.
        num_classes: number of identities.
        m: additive angular margin (0.5).
        s: logit scale (64).
    """

    eps = 1e-4

    def __init__(self, embedding_size: int, num_classes: int, m: float = 0.5, s: float = 64.0) -> None:
        super().__init__(embedding_size, num_classes, m, s)

    def target_logit(self, cos_y: Tensor, norm: Tensor) -> Tensor:
        """s cos(clip(θ_y + m, eps, π - eps)); ``norm`` is ignored."""
        theta = torch.acos(cos_y.clamp(-1 + self.eps, 1 - self.eps))
        return torch.cos((theta + self.m).clamp(self.eps, math.pi - self.eps)) * self.s


class CosFace(MarginHead):
    """CosFace: true class s (cos_y - m), other classes s cos_j (SPEC §3).

    Args:
        embedding_size: size of the unit embeddings.
        num_classes: number of identities.
        m: additive cosine margin (0.4).
        s: logit scale (64).
    """

    def __init__(self, embedding_size: int, num_classes: int, m: float = 0.4, s: float = 64.0) -> None:
        super().__init__(embedding_size, num_classes, m, s)

    def target_logit(self, cos_y: Tensor, norm: Tensor) -> Tensor:
        """s (cos_y - m); ``norm`` is ignored."""
        return (cos_y - self.m) * self.s


@HEADS.register("adaface")
def _adaface(
    embedding_size: int, num_classes: int, m: float | None, h: float, s: float, t_alpha: float
) -> MarginHead:
    return AdaFace(embedding_size, num_classes, m=PAPER_MARGINS["adaface"] if m is None else m, h=h, s=s,
                   t_alpha=t_alpha)


@HEADS.register("arcface")
def _arcface(
    embedding_size: int, num_classes: int, m: float | None, h: float, s: float, t_alpha: float
) -> MarginHead:
    return ArcFace(embedding_size, num_classes, m=PAPER_MARGINS["arcface"] if m is None else m, s=s)


@HEADS.register("cosface")
def _cosface(
    embedding_size: int, num_classes: int, m: float | None, h: float, s: float, t_alpha: float
) -> MarginHead:
    return CosFace(embedding_size, num_classes, m=PAPER_MARGINS["cosface"] if m is None else m, s=s)


def build_head(
    name: str,
    embedding_size: int,
    num_classes: int,
    m: float | None = None,
    h: float = 0.333,
    s: float = 64.0,
    t_alpha: float = 0.01,
) -> MarginHead:
    """Build a margin head by name.

    Args:
        name: ``adaface``, ``arcface`` or ``cosface``.
        embedding_size: size of the unit embeddings (512).
        num_classes: number of identities.
        m: margin; None picks the head's paper value (:data:`PAPER_MARGINS`).
        h: AdaFace margin concentration (ignored by the others).
        s: logit scale.
        t_alpha: AdaFace EMA momentum (ignored by the others).

    Raises:
        ValueError: if ``name`` is unknown; the message lists the valid names.
    """
    return HEADS.build(name, embedding_size=embedding_size, num_classes=num_classes, m=m, h=h, s=s, t_alpha=t_alpha)
