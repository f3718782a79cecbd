"""``OamlSystem``: the LightningModule that trains a :class:`~oaml.models.FaceModel` (the seed's
``train_val.Trainer``).

It receives built modules (STYLE §2.10-11): the model and the :class:`~oaml.training.objective.TrainingObjective`
(margin head, class memory, losses). A training step reads: forward, objective, skip a non-finite loss (SPEC §6),
update the class memory, log. Validation and test score pairs with :mod:`oaml.evaluation.scoring`, the path
``oaml eval`` uses too (SPEC §9).

Sharding (SPEC §13.3): in ``setup``, once the process group exists, the objective's head and class memory are
placed on this rank (their columns and rows are neither broadcast nor averaged by DDP); checkpoints hold them
whole, gathered on rank 0 in ``on_save_checkpoint`` together with the kernel's momentum, and they load on any number
of ranks. Every epoch the rebuilt class graph is handed to a datamodule that samples by it (QAConv-GS).
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
from oaml.data.occluders import MASK_PROTOCOL, OcclusionProtocol
from oaml.evaluation.calibration import calibration_metrics
from oaml.evaluation.scoring import PairScores, score_pair_batch, summarise_pairs
from oaml.losses import nonfinite_components
from oaml.models import FaceModel
from oaml.models.checkpoint import CheckpointMeta, system_state_dict
from oaml.training.objective import TrainingObjective
from oaml.training.partial_sgd import PartialSGD, build_partial_sgd
from oaml.training.weights import load_start_weights

__all__ = ["OamlSystem", "OptimSettings"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class OptimSettings:
    """SGD and schedule settings (see :func:`oaml.training.optim.build_sgd`); the values come from the config."""

    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[int, ...]
    gamma: float
    warmup_epochs: float


class OamlSystem(pl.LightningModule):
    """Trains a :class:`~oaml.models.FaceModel` with a :class:`~oaml.training.objective.TrainingObjective`.

    Args:
        model: backbone + occlusion head + QAConv.
        objective: margin head, class memory and the weighted losses (SPEC §6).
        optim: optimizer and schedule settings.
        eval_weights: configured (AdaFace, QAConv) weights of the combined validation score (SPEC §9, with the
            seed's dynamic rule).
        val_set_names: names of the verification sets, in the order of their dataset indices.
        val_protocols: the occlusion protocols of validation loaders 1, 2, ... (loader 0 holds the clean pairs);
            their metrics carry each protocol's prefix (``val/masked_...``, ``val/occ_sunglasses_...``), and when
            the occlusion head is trained, its calibration on the occluded images too (``val/<prefix>head_auc``,
            ``head_mae``, ``head_inside``, ``head_outside``).
        max_nonfinite_steps: abort after this many consecutive non-finite losses.
        log_every_n_steps: period of the occlusion-head weight-norm log.
        metadata: stored in every checkpoint under ``"oaml"``.
        start_weights: the ``--start_from_model_statedict`` checkpoint, loaded again in ``setup`` when placing the
            objective on its rank re-created the head or the memory (the caller loads it once before training).
    """

    def __init__(self, model: FaceModel, objective: TrainingObjective, optim: OptimSettings, *,
                 eval_weights: tuple[float, float], val_set_names: Sequence[str], max_nonfinite_steps: int,
                 log_every_n_steps: int, metadata: CheckpointMeta,
                 val_protocols: Sequence[OcclusionProtocol] = (MASK_PROTOCOL,),
                 start_weights: str | None = None) -> None:
        super().__init__()
        self.model, self.objective, self.optim, self.eval_weights = model, objective, optim, eval_weights
        self.start_weights = start_weights
        self.val_set_names = list(val_set_names)
        self.val_protocols = tuple(val_protocols)
        self.max_nonfinite_steps, self.log_every_n_steps = max_nonfinite_steps, log_every_n_steps
        self.metadata = metadata
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.val_metrics: dict[str, float] = {}
        self._pair_scores: dict[int, list[PairScores]] = {}
        self._ddp_params_and_buffers_to_ignore = [f"objective.{name}" for name in objective.sharded_names]

    def forward(self, images: Tensor) -> Tensor:
        """Unit embeddings (B x 512) of normalised faces; for inference only."""
        return self.model(images).embedding

    def setup(self, stage: str) -> None:
        """Place the objective's shards on this rank (the process group exists from here on)."""
        head = self.objective.head
        before = (head.spec.rank, head.spec.world_size)
        self.objective.shard(self.trainer.global_rank, self.trainer.world_size)
        if (head.spec.rank, head.spec.world_size) != before and self.start_weights:
            load_start_weights(self, self.start_weights)

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        self.objective.rebuild_graph()
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "uses_class_graph", False):
            datamodule.set_class_graph(self.objective.class_graph())

    def training_step(self, batch: TrainBatch, batch_idx: int) -> Tensor | None:
        out = self.model(batch.images)
        total, parts = self.objective(out, batch.labels, batch.visibility, self.model.qaconv)
        if self._skip_nonfinite(parts, batch_idx):
            return None
        self.objective.update_memory(out, batch.labels)
        self._log_training(parts, batch.images.shape[0])
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

    def _log_training(self, parts: dict[str, Tensor], batch_size: int) -> None:
        self.log_dict({f"train/{name}": value for name, value in parts.items()}, on_step=True, on_epoch=True,
                      batch_size=batch_size)
        self.log("loss", parts["loss"], prog_bar=True, on_step=True, on_epoch=False, logger=False,
                 batch_size=batch_size)
        if self.global_step % self.log_every_n_steps == 0:
            norm = torch.linalg.vector_norm(torch.cat([p.detach().flatten()
                                                       for p in self.model.occlusion_head.parameters()]))
            self.log("train/occlusion_head_weight_norm", norm, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ validation and test
    def on_validation_epoch_start(self) -> None:
        self._pair_scores = {}

    def validation_step(self, batch: PairBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        qaconv = self.model.qaconv if self.objective.uses_qaconv else None
        calibrate = dataloader_idx > 0 and self.objective.trains_occlusion_head
        scores = score_pair_batch(self.model.backbone, self.model.occlusion_head, qaconv, batch.images, batch.issame,
                                  batch.set_index, batch.global_index, self.objective.occlusion_aware,
                                  gate=self.model.embedding_gate, visibility=batch.visibility if calibrate else None)
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
            prefix = "" if loader == 0 else self.val_protocols[loader - 1].prefix
            metrics |= summarise_pairs(merged, self.val_set_names, self.eval_weights, prefix=prefix)
            if loader > 0 and merged.visibility_predicted is not None:
                metrics |= self._calibration(merged, self.val_protocols[loader - 1], prefix)
        self._pair_scores = {}
        if not metrics or self.trainer.sanity_checking:
            return
        metrics[f"{stage}_acc"] = metrics["avg_combined_acc"]
        self.val_metrics = metrics
        # Every rank holds the same gathered scores, so the values agree and need no further reduction.
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items() if k != f"{stage}_acc" and np.isfinite(v)})
        self.log(f"{stage}_acc", metrics[f"{stage}_acc"], prog_bar=True)

    @staticmethod
    def _calibration(scores: PairScores, protocol: OcclusionProtocol, prefix: str) -> dict[str, float]:
        """The occlusion head's calibration over the images ``protocol`` occludes (deduplicated pairs)."""
        unique = scores.deduplicated()
        sides = [side for side in (0, 1) if protocol.occluder(side) is not None]
        predicted, true = unique.visibility_predicted, unique.visibility_true
        assert predicted is not None and true is not None  # kept together by score_pair_batch
        return calibration_metrics(predicted[:, sides].reshape(-1, *predicted.shape[2:]),
                                   true[:, sides].reshape(-1, *true.shape[2:]), prefix)

    # ------------------------------------------------------------------ optimizer and checkpoints
    def configure_optimizers(self) -> dict[str, Any]:
        steps = max(1, int(self.trainer.estimated_stepping_batches) // max(1, self.trainer.max_epochs or 1))
        optimizer, scheduler = build_partial_sgd([self.model, self.objective], [self.objective.head], self.optim.lr,
                                                 self.optim.momentum, self.optim.weight_decay, steps,
                                                 self.optim.milestones, self.optim.gamma, self.optim.warmup_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Metadata and random states; under several ranks the whole head, memory and kernel momentum, gathered on
        rank 0 (every rank runs this hook; only rank 0 writes)."""
        checkpoint["oaml"] = self.metadata.to_dict()
        checkpoint["rng_states"] = _rng_states()
        if self.objective.head.spec.world_size == 1:
            return
        full = self.objective.full_state_dict(dst=0)
        if full is not None:
            checkpoint["state_dict"].update({f"objective.{k}": v for k, v in full.items()})
        optimizers = [o for o in self.trainer.optimizers if isinstance(o, PartialSGD)]
        for optimizer, state in zip(optimizers, checkpoint.get("optimizer_states", [])):
            optimizer.gather_state(state, dst=0)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = system_state_dict(checkpoint)  # a format-1 checkpoint resumes too
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
