"""``OamlSystem``: the LightningModule that trains a :class:`~oaml.models.FaceModel` (the seed's
``train_val.Trainer``).

It receives built modules (STYLE §2.10-11) and owns only the training logic: the combined objective of
SPEC §6, the class-memory updates and graph rebuilds of SPEC §5, the non-finite policy, the optimizer, and
the verification protocol of SPEC §9 (shared by ``validate`` and ``test``, one code path).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from oaml.data.batches import PairBatch, TrainBatch
from oaml.errors import NonFiniteLossError
from oaml.evaluation.scoring import PairScores, score_pair_batch, summarise_pairs
from oaml.losses import CombinedLoss, nonfinite_components
from oaml.models import ClassMemory, FaceModel, MarginHead, visibility_target
from oaml.training.optim import build_sgd

__all__ = ["OamlSystem", "OptimSettings"]

logger = logging.getLogger(__name__)

LOG_NAMES = {"total": "loss", "adaface": "adaface_loss", "pairwise": "pairwise_loss", "pairwise_acc": "pairwise_acc",
             "cls": "cls_loss", "cls_acc": "cls_acc", "triplet": "triplet_loss", "triplet_acc": "triplet_acc",
             "occlusion": "occlusion_loss"}
"""Logged names of the parts of :class:`~oaml.losses.CombinedLoss`."""
VAL_PREFIXES = ("", "masked_")  # dataloader 0: clean pairs; 1: masked second image (SPEC §9 masked protocol)


@dataclass(frozen=True)
class OptimSettings:
    """SGD and schedule settings (see :func:`oaml.training.optim.build_sgd`)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (8, 12, 14)
    gamma: float = 0.1
    warmup_epochs: float = 0.0


class OamlSystem(pl.LightningModule):
    """Trains backbone, margin head, occlusion head and QAConv with the combined loss.

    Args:
        model: backbone + occlusion head + QAConv.
        head: margin head (AdaFace, ArcFace or CosFace) over the training classes.
        loss: the weighted objective; components with weight 0 are neither computed nor logged.
        class_memory: per-class feature maps for the softmax-triplet loss (None when that loss is off).
        optim: optimizer and schedule settings.
        occlusion_aware: weight QAConv by the predicted visibility maps ("scaling"), in training and validation.
        occlusion_detach: in training, weight QAConv by detached maps, so that only the occlusion MSE trains the
            occlusion head (otherwise the QAConv losses also push the maps, typically towards "all visible").
        eval_weights: configured (AdaFace, QAConv) weights of the combined validation score.
        val_set_names: names of the verification sets, in the order of their dataset indices.
        max_nonfinite_steps: abort after this many consecutive non-finite losses.
        log_every_n_steps: period of the occlusion-head weight-norm log.
        metadata: stored in every checkpoint under ``"oaml"`` (config, class names, version).
    """

    def __init__(self, model: FaceModel, head: MarginHead, loss: CombinedLoss, class_memory: ClassMemory | None,
                 optim: OptimSettings = OptimSettings(), *, occlusion_aware: bool = True,
                 occlusion_detach: bool = False,
                 eval_weights: tuple[float, float] = (0.5, 0.5), val_set_names: Sequence[str] = (),
                 max_nonfinite_steps: int = 10, log_every_n_steps: int = 50,
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        if loss.uses_class_memory and class_memory is None:
            raise ValueError("the softmax-triplet loss is enabled but no class memory was given")
        self.model, self.head, self.loss, self.class_memory = model, head, loss, class_memory
        self.optim, self.occlusion_aware, self.eval_weights = optim, occlusion_aware, eval_weights
        self.occlusion_detach = occlusion_detach
        self.val_set_names = list(val_set_names)
        self.max_nonfinite_steps, self.log_every_n_steps = max_nonfinite_steps, log_every_n_steps
        self.metadata = metadata or {}
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.val_metrics: dict[str, float] = {}
        self._pair_scores: dict[int, list[PairScores]] = {}
        if class_memory is not None:
            # Every rank writes the same gathered samples, so DDP need not broadcast this (large) memory.
            self._ddp_params_and_buffers_to_ignore = [f"class_memory.{n}" for n, _ in class_memory.named_buffers()]

    def forward(self, images: Tensor) -> Tensor:
        """Unit embeddings (B x 512) of normalised faces; for inference only."""
        return self.model.backbone(images).embedding

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        if self.class_memory is not None:
            self.class_memory.rebuild_graph()

    def training_step(self, batch: TrainBatch, batch_idx: int) -> Tensor | None:
        images, labels, visibility = batch.images, batch.labels, batch.visibility
        out = self.model(images)
        occlusion = out.occlusion if self.occlusion_aware else None
        if occlusion is not None and self.occlusion_detach:
            occlusion = occlusion.detach()
        inputs: dict[str, Tensor] = {}
        if self.loss.uses_adaface:
            inputs["adaface_logits"] = self.head(out.embedding, out.norm, labels)
        if self.loss.uses_qaconv:
            inputs["qaconv_score"] = self.model.qaconv(out.feature_map, out.feature_map, occlusion, occlusion)
        if self.loss.uses_class_memory:
            assert self.class_memory is not None  # checked in __init__
            inputs["memory_logits"], inputs["memory_valid"] = self.class_memory.logits(
                self.model.qaconv, out.feature_map, labels, occlusion)
        if self.loss.uses_occlusion:
            inputs["occlusion"] = out.occlusion
            inputs["occlusion_target"] = visibility_target(visibility, out.occlusion.shape[-1])
        total, parts = self.loss(labels, **inputs)
        if self._skip_nonfinite(parts, batch_idx):
            return None
        if self.class_memory is not None:
            features, all_labels = self._gather_for_memory(out.feature_map.detach(), labels)
            self.class_memory.update(features, all_labels)
        self._log_training(parts, images.shape[0])
        return total

    def _skip_nonfinite(self, parts: dict[str, Tensor], batch_idx: int) -> bool:
        """SPEC §6: skip the step on a non-finite loss (on every rank at once), count it, abort after a streak."""
        bad = nonfinite_components(parts)
        flag = torch.tensor(float(bool(bad)), device=self.device)
        if self.trainer.world_size > 1:
            flag = self.trainer.strategy.reduce(flag, reduce_op="max")
        if not flag.item():
            self.nonfinite_streak = 0
            return False
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        values = ", ".join(f"{name}={float(value):.4g}" for name, value in parts.items())
        logger.warning("non-finite loss at epoch %d batch %d (non-finite: %s); step skipped (%d in a row). %s",
                       self.current_epoch, batch_idx, ", ".join(bad) or "on another rank", self.nonfinite_streak,
                       values)
        self.log("train/nonfinite_skipped", float(self.nonfinite_total), on_step=True, on_epoch=False)
        if self.nonfinite_streak >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.nonfinite_streak} consecutive training steps had a non-finite loss (last at epoch "
                f"{self.current_epoch}, batch {batch_idx}); non-finite component(s): {', '.join(bad) or 'see log'}; "
                f"values: {values}. Lower --lr, check the data, or raise --max_nonfinite_steps.")
        return True

    def _gather_for_memory(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if self.trainer.world_size == 1:
            return features, labels
        features = self.all_gather(features).flatten(0, 1)
        return features, self.all_gather(labels).flatten(0, 1)

    def _log_training(self, parts: dict[str, Tensor], batch_size: int) -> None:
        self.log_dict({f"train/{LOG_NAMES[k]}": v for k, v in parts.items()}, on_step=True, on_epoch=True,
                      batch_size=batch_size)
        self.log("loss", parts["total"], prog_bar=True, on_step=True, on_epoch=False, logger=False,
                 batch_size=batch_size)
        if self.global_step % self.log_every_n_steps == 0:
            norm = torch.linalg.vector_norm(torch.cat([p.detach().flatten()
                                                       for p in self.model.occlusion_head.parameters()]))
            self.log("train/occlusion_head_weight_norm", norm, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ validation and test
    def on_validation_epoch_start(self) -> None:
        self._pair_scores = {}

    def validation_step(self, batch: PairBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        qaconv = self.model.qaconv if self.loss.uses_qaconv else None
        scores = score_pair_batch(self.model.backbone, self.model.occlusion_head, qaconv, batch.images, batch.issame,
                                  batch.set_index, batch.global_index, self.occlusion_aware)
        self._pair_scores.setdefault(dataloader_idx, []).append(scores)

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._pair_scores = {}

    def test_step(self, batch: PairBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, stage: str) -> None:
        """Gather the pair scores of every rank, summarise them per set and log them."""
        metrics: dict[str, float] = {}
        for loader, parts in sorted(self._pair_scores.items()):
            merged = PairScores.concatenate(parts)
            if self.trainer.world_size > 1:
                merged = PairScores.from_gathered(self.all_gather(merged.as_tensor_dict()))
            metrics |= summarise_pairs(merged, self.val_set_names, self.eval_weights, prefix=VAL_PREFIXES[loader])
        self._pair_scores = {}
        if not metrics or self.trainer.sanity_checking:
            return
        metrics[f"{stage}_acc"] = metrics["avg_combined_acc"]
        self.val_metrics = metrics
        # Every rank holds the same gathered scores, so the values agree and need no further reduction.
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items() if k != f"{stage}_acc" and np.isfinite(v)})
        self.log(f"{stage}_acc", metrics[f"{stage}_acc"], prog_bar=True)

    # ------------------------------------------------------------------ optimizer and checkpoints
    def configure_optimizers(self) -> dict[str, Any]:
        steps = max(1, int(self.trainer.estimated_stepping_batches) // max(1, self.trainer.max_epochs or 1))
        optimizer, scheduler = build_sgd([self.model, self.head], self.optim.lr, self.optim.momentum,
                                         self.optim.weight_decay, steps, self.optim.milestones, self.optim.gamma,
                                         self.optim.warmup_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["oaml"] = self.metadata
        checkpoint["rng_states"] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            _restore_rng_states(checkpoint["rng_states"])


def _rng_states() -> dict[str, Any]:
    """The main process's random states (dropout, sampling), in a ``weights_only``-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                       has_gauss, cached],
            "python": [python_version, list(python_state), python_gauss]}


def _restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
