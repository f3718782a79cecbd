"""The training objective: everything a training step computes after the forward pass (SPEC §5, §6).

As timm's training tasks own the criterion and arcface_torch's ``PartialFC`` owns its classifier, the objective
owns the margin head, the class memory (with its k-nearest class graph), the weighted losses, the choice of
occlusion weighting, the detach option and the pooling of the visibility target. A training step reads: forward
the faces, evaluate the objective, skip a non-finite loss, update the memory, log.

The margin head is always the sharded, sampled :class:`~oaml.models.partial_fc.PartialFC` (with one rank and
``sample_rate`` 1 it is the plain head, with its softmax computed in one piece) and the class memory is sharded the
same way (SPEC §13.3). Both are built for rank 0 and placed on their rank by :meth:`TrainingObjective.shard` once
the process group exists; on one process nothing is communicated.

The parts it returns are named as they are logged (``adaface_loss``, ``pairwise_acc``, ...; :data:`LOG_NAMES`), so
that ``metrics.csv``, the progress bar, the loss plot and the study all use one set of names.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor, nn

from oaml.data.masks import visibility_grid
from oaml.losses import CombinedLoss
from oaml.models import ClassMemory, FaceOutput, QAConv
from oaml.models.partial_fc import PartialFC

__all__ = ["LOG_NAMES", "LOSS_NAMES", "ObjectiveResult", "TrainingObjective"]

LOG_NAMES: dict[str, str] = {"total": "loss", "adaface": "adaface_loss", "pairwise": "pairwise_loss",
                             "pairwise_acc": "pairwise_acc", "cls": "cls_loss", "cls_acc": "cls_acc",
                             "triplet": "triplet_loss", "triplet_acc": "triplet_acc", "occlusion": "occlusion_loss"}
"""Logged name of each part of :class:`~oaml.losses.CombinedLoss` (``train/<name>`` in ``metrics.csv``)."""

LOSS_NAMES: tuple[str, ...] = tuple(name for name in LOG_NAMES.values() if name.endswith("loss"))
"""The logged loss components (without the accuracies), total first."""


class ObjectiveResult(NamedTuple):
    """What :meth:`TrainingObjective.forward` returns.

    Attributes:
        total: the weighted scalar loss (carries the gradient).
        parts: every computed component under its logged name (:data:`LOG_NAMES`), detached 0-d tensors.
    """

    total: Tensor
    parts: dict[str, Tensor]


class TrainingObjective(nn.Module):
    """The combined objective of SPEC §6 with the modules it needs.

    L = w_a · CE(margin head) + w_q · (pairwise + w_t · (class-memory CE + batch-hard triplet)) + w_o · MSE(occlusion);
    a component whose weight is 0 is not computed.

    Args:
        head: the sharded margin head (AdaFace, ArcFace or CosFace) over the training classes.
        losses: the weighted losses.
        class_memory: per-class feature maps for the class-memory loss; required when that loss is on.
        occlusion_aware: the predicted visibility maps weight QAConv (``occlusion_method`` scaling or normalised;
            the matcher's ``visibility`` says how).
        occlusion_detach: the maps weight QAConv detached, so only the occlusion MSE trains the occlusion head.

    Raises:
        ValueError: if the class-memory loss is on but no memory is given.
    """

    def __init__(self, head: PartialFC, losses: CombinedLoss, class_memory: ClassMemory | None = None, *,
                 occlusion_aware: bool = True, occlusion_detach: bool = False) -> None:
        super().__init__()
        if losses.uses_class_memory and class_memory is None:
            raise ValueError("the softmax-triplet loss is enabled but no class memory was given")
        self.head, self.losses, self.class_memory = head, losses, class_memory
        self.occlusion_aware, self.occlusion_detach = occlusion_aware, occlusion_detach

    def shard(self, rank: int, world_size: int, group: Any = None) -> None:
        """Place the head's columns and the memory's rows on ``rank`` of ``world_size`` (before loading weights or
        training: fresh shards are initialised); under several ranks the head's embedding gradient is scaled for
        DDP's gradient average."""
        self.head.bind(rank, world_size, group, ddp_average=world_size > 1)
        if self.class_memory is not None:
            self.class_memory.bind(rank, world_size, group)

    @property
    def sharded_names(self) -> list[str]:
        """Parameters and buffers that differ between ranks (DDP must neither broadcast nor average them)."""
        memory = [] if self.class_memory is None else [f"class_memory.{n}" for n, _ in
                                                         self.class_memory.named_buffers()]
        return ["head.kernel", *memory]

    @property
    def uses_qaconv(self) -> bool:
        """Whether the QAConv losses are on (and the matcher must be scored in validation)."""
        return self.losses.uses_qaconv

    @property
    def trains_occlusion_head(self) -> bool:
        """Whether anything trains the occlusion head: its MSE, or QAConv losses weighted by its undetached maps."""
        return self.losses.uses_occlusion or (self.occlusion_aware and self.uses_qaconv and not self.occlusion_detach)

    def forward(self, out: FaceOutput, labels: Tensor, visibility: Tensor, matcher: QAConv) -> ObjectiveResult:
        """Evaluate the objective on one batch.

        Args:
            out: the model's output for the batch.
            labels: B identity labels.
            visibility: B x 1 x H x W per-pixel visibility of the augmented faces (pooled here to the map's cells).
            matcher: the model's QAConv matcher (owned by the model, which also uses it for inference).

        Returns:
            The total and its parts under their logged names.
        """
        occlusion = out.occlusion if self.occlusion_aware else None
        if occlusion is not None and self.occlusion_detach:
            occlusion = occlusion.detach()
        inputs: dict[str, Tensor] = {}
        if self.losses.uses_adaface:
            inputs["adaface_loss"] = self.head(out.embedding, out.norm, labels).loss
        if self.losses.uses_qaconv:
            inputs["qaconv_score"] = matcher(out.feature_map, out.feature_map, occlusion, occlusion)
        if self.losses.uses_class_memory:
            assert self.class_memory is not None  # checked in __init__
            inputs["memory_logits"], inputs["memory_valid"] = self.class_memory.logits(
                matcher, out.feature_map, labels, occlusion)
        if self.losses.uses_occlusion:
            inputs["occlusion"] = out.occlusion
            inputs["occlusion_target"] = visibility_grid(visibility, out.occlusion.shape[-1])
        total, parts = self.losses(labels, **inputs)
        return ObjectiveResult(total, {LOG_NAMES[name]: value for name, value in parts.items()})

    def update_memory(self, out: FaceOutput, labels: Tensor) -> None:
        """Write the batch into the class memory after the step (no-op without a memory; a collective under several
        ranks); rebuild the class graph when the classes with a prototype have doubled since its last build."""
        if self.class_memory is not None:
            self.class_memory.update(out.feature_map.detach(), labels, out.embedding.detach())
            if self.class_memory.graph_is_stale():
                self.class_memory.rebuild_graph()

    def rebuild_graph(self) -> None:
        """Rebuild the k-nearest class graph (every epoch; no-op without a memory)."""
        if self.class_memory is not None:
            self.class_memory.rebuild_graph()

    def class_graph(self) -> Tensor | None:
        """The C x k class graph of all ranks on every rank (a collective), or None without a memory."""
        return None if self.class_memory is None else self.class_memory.full_graph()

    def full_state_dict(self, dst: int = 0) -> dict[str, Tensor] | None:
        """The head's and the memory's state with every class (``head.*``, ``class_memory.*``; the single-process
        layout), on rank ``dst`` and None elsewhere; a collective."""
        head = self.head.full_state_dict(dst)
        memory = None if self.class_memory is None else self.class_memory.full_state_dict(dst)
        if head is None:
            return None
        return {f"head.{k}": v for k, v in head.items()} | {f"class_memory.{k}": v for k, v in (memory or {}).items()}
