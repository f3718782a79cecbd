"""The only place that turns an :class:`~oaml.config.OamlConfig` into a datamodule, a system and a Trainer."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.strategies import DDPStrategy

from oaml import __version__
from oaml.config import OamlConfig
from oaml.errors import ConfigError
from oaml.constants import VAL_SET_NAMES
from oaml.data.datamodule import FaceDataModule, TrainData, VerificationData
from oaml.data.occluders import OcclusionProtocol, parse_protocols
from oaml.data.transforms import TrainTransform
from oaml.devices import check_gpu_count
from oaml.fileio import cache_root, is_writable_dir
from oaml.losses import CombinedLoss
from oaml.models import ClassMemory, FaceModel, build_face_model
from oaml.models.checkpoint import CheckpointMeta
from oaml.models.partial_fc import PartialFC
from oaml.training.callbacks import BatchPreview, SignalCheckpoint, SkippedImagesSummary
from oaml.training.checkpoint_io import AtomicCheckpointIO
from oaml.training.monitor import LossCurves, OamlProgressBar, ThroughputMonitor
from oaml.training.objective import TrainingObjective
from oaml.training.system import OamlSystem, OptimSettings

__all__ = ["build_datamodule", "build_loss", "build_model", "build_objective", "build_system", "build_trainer",
           "check_data_paths", "checkpoint_meta", "data_paths", "val_check_interval", "val_protocols", "world_size"]

logger = logging.getLogger(__name__)


def world_size(config: OamlConfig) -> int:
    """Processes of the run: devices per node x nodes."""
    return config.system.devices * config.system.num_nodes


def data_paths(config: OamlConfig) -> tuple[Path, Path]:
    """``(train path, validation folder)``: ``data_root`` joined with the two relative paths."""
    root = Path(config.data.data_root)
    return root / config.data.train_data_path, root / config.data.val_data_path


def check_data_paths(config: OamlConfig) -> None:
    """Check that the paths a run needs exist: the training data (unless ``--evaluate``), and for
    ``--evaluate`` the validation folder.

    Raises:
        ConfigError: naming the flag and the missing path.
    """
    train_path, val_path = data_paths(config)
    if config.system.evaluate:
        if not val_path.is_dir():
            raise ConfigError(f"--val_data_path: validation folder not found: {val_path} "
                              f"(data_root={config.data.data_root!r})")
        return
    if not train_path.exists():
        raise ConfigError(f"--train_data_path: training data not found: {train_path} "
                          f"(data_root={config.data.data_root!r}); expected train.rec/train.idx or identity folders")
    if config.data.use_mxrecord and train_path.suffix != ".rec" and not (train_path / "train.rec").is_file():
        raise ConfigError(f"--use_mxrecord: no train.rec in {train_path}; drop the flag to read identity folders")
    for flag, value in (("resume_from_checkpoint", config.system.resume_from_checkpoint),
                        ("start_from_model_statedict", config.system.start_from_model_statedict)):
        if value and not Path(value).is_file():
            raise ConfigError(f"--{flag}: checkpoint not found: {value}")


def _memfile_dir(val_path: Path) -> Path:
    """Converted verification sets go next to the .bin files, or to a cache folder if that is read-only."""
    if is_writable_dir(val_path):
        return val_path / "memfiles"
    digest = hashlib.sha256(str(val_path.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "memfiles" / digest


def build_datamodule(config: OamlConfig) -> FaceDataModule:
    """The datamodule of ``config`` from built parts: the training transform and data, the verification sets; the
    batch size is divided over all devices of all nodes."""
    train_path, val_path = data_paths(config)
    train = None
    if not config.system.evaluate:
        subset = None
        if config.data.train_data_subset:
            subset = Path(config.data.subset_index) if config.data.subset_index else \
                train_path / "ms1mv2_train_subset_index.txt"
        augment = config.augment
        try:
            transform = TrainTransform(augment.mask_prob, augment.flip_prob, augment.crop_augmentation_prob,
                                       augment.low_res_augmentation_prob, augment.photometric_augmentation_prob,
                                       config.channel_order, config.train.seed, occluders=augment.occluders)
        except ValueError as error:
            raise ConfigError(f"--occluders: {error}") from None
        world, k = world_size(config), config.loss.instances_per_identity
        per_device = config.train.batch_size // world
        if config.loss.graph_sampler and per_device // k - 1 > config.loss.k_nearest:
            logger.warning("--graph_sampler: a batch takes %d classes, a seed and %d neighbours, but the class graph "
                           "holds --k_nearest %d; the rest of each batch is drawn at random", per_device // k,
                           per_device // k - 1, config.loss.k_nearest)
        train = TrainData(train_path, transform, per_device, k, config.train.seed, config.data.max_bad_fraction,
                          subset_index=subset, graph_sampler=config.loss.graph_sampler)
    verification = None
    if val_path.is_dir():
        verification = VerificationData(val_path, _memfile_dir(val_path), config.channel_order,
                                        config.eval.val_batch_size, val_protocols(config), config.train.seed)
    return FaceDataModule(train, verification, num_workers=config.system.workers, pin_memory=config.system.gpus > 0)


def val_protocols(config: OamlConfig) -> tuple[OcclusionProtocol, ...]:
    """The occlusion protocols validation runs besides the clean pairs, in loader order: the masked protocol
    (``masked_protocol``), then ``val_occluders``.

    Raises:
        ConfigError: naming ``--val_occluders`` for an unknown occluder or a malformed protocol.
    """
    try:
        return parse_protocols((["mask"] if config.eval.masked_protocol else []) + [config.eval.val_occluders])
    except ValueError as error:
        raise ConfigError(f"--val_occluders: {error}") from None


def build_loss(config: OamlConfig) -> CombinedLoss:
    """The combined objective with the configured weights."""
    loss = config.loss
    return CombinedLoss(loss.adaface_loss_weight, loss.qaconv_loss_weight, loss.occlusion_loss_weight,
                        loss.triplet_weight, loss.triplet_margin)


def build_objective(config: OamlConfig, model: FaceModel, num_classes: int) -> TrainingObjective:
    """The sharded margin head, the class memory (when the class-memory loss is on) and the weighted losses of
    ``config``, built for rank 0 of the run's world size (``OamlSystem.setup`` places them on their rank)."""
    world, loss = world_size(config), build_loss(config)
    embedding = model.backbone.embedding_size
    head = PartialFC(config.model.head, embedding, num_classes, world_size=world, sample_rate=config.loss.sample_rate,
                     seed=config.train.seed, m=config.model.m, h=config.model.h, s=config.model.s,
                     t_alpha=config.model.t_alpha)
    memory = None
    if loss.uses_class_memory:
        qa = model.qaconv
        memory = ClassMemory(num_classes, qa.num_features, qa.height, qa.width, config.loss.k_nearest,
                             device="cpu" if config.loss.class_memory_on_cpu else None, embedding_size=embedding,
                             world_size=world)
    return TrainingObjective(head, loss, memory, occlusion_aware=config.loss.occlusion_method != "none",
                             occlusion_detach=config.loss.occlusion_detach)


def build_model(config: OamlConfig) -> FaceModel:
    """The backbone, occlusion head and QAConv matcher of ``config``."""
    method = config.loss.occlusion_method
    return build_face_model(config.model.arch, config.model.width, config.data.input_size,
                            visibility="normalised" if method == "normalised" else "scaling",
                            embedding_gate=config.model.embedding_gate, detach_gate=config.loss.occlusion_detach)


def build_system(config: OamlConfig, num_classes: int, class_names: list[str] | None = None,
                 val_set_names: list[str] | None = None) -> OamlSystem:
    """Model and objective of ``config`` wrapped in an :class:`OamlSystem`."""
    model = build_model(config)
    objective = build_objective(config, model, num_classes)
    train = config.train
    optim = OptimSettings(train.lr, train.momentum, train.weight_decay, train.lr_milestones, train.lr_gamma,
                          train.warmup_epochs)
    return OamlSystem(model, objective, optim, eval_weights=(config.eval.eval_adaface_weight,
                                                             config.eval.eval_qaconv_weight),
                      val_protocols=val_protocols(config),
                      val_set_names=val_set_names or list(VAL_SET_NAMES), max_nonfinite_steps=train.max_nonfinite_steps,
                      log_every_n_steps=train.log_every_n_steps,
                      metadata=checkpoint_meta(config, num_classes, class_names or []),
                      start_weights=config.system.start_from_model_statedict or None)


def checkpoint_meta(config: OamlConfig, num_classes: int, class_names: list[str]) -> CheckpointMeta:
    """The metadata every checkpoint of a run carries (:class:`~oaml.models.checkpoint.CheckpointMeta`)."""
    return CheckpointMeta(arch=config.model.arch, width=config.model.width, input_size=config.data.input_size,
                          channel_order=config.channel_order, occlusion_method=config.loss.occlusion_method,
                          num_classes=num_classes, class_names=tuple(class_names), version=__version__,
                          embedding_gate=config.model.embedding_gate, config=config.to_dict())


def val_check_interval(epochs: int) -> float:
    """The seed's rule: validate once per epoch for runs longer than 4 epochs, else every tenth of an epoch."""
    return 1.0 if epochs > 4 else 0.1


class _AppendingWriter(_ExperimentWriter):
    """Lightning's CSV writer, except that it continues an existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="", encoding="utf-8") as handle:
                self.metrics_keys = sorted(next(csv.reader(handle), []))


class RunCSVLogger(CSVLogger):
    """``metrics.csv`` directly in the run folder, appended to when a run is resumed there."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _loggers(config: OamlConfig, experiment_dir: Path) -> list[Logger]:
    loggers: list[Logger] = [RunCSVLogger(experiment_dir, name="", version="")]
    if config.system.tensorboard:
        from lightning.fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE, _TENSORBOARDX_AVAILABLE

        if not (_TENSORBOARD_AVAILABLE or _TENSORBOARDX_AVAILABLE):
            raise ImportError('--tensorboard needs the tensorboard extra: pip install "oaml[tensorboard]"')
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(experiment_dir, name="", version="tensorboard", default_hp_metric=False))
    if config.system.wandb:
        try:
            from lightning.pytorch.loggers import WandbLogger
            import wandb  # noqa: F401
        except ImportError:
            raise ImportError('--wandb needs the wandb extra: pip install "oaml[wandb]"') from None
        loggers.append(WandbLogger(project=config.system.wandb_project, name=experiment_dir.name,
                                   save_dir=str(experiment_dir), offline=config.system.wandb_offline))
    return loggers


def _strategy(config: OamlConfig, loss: CombinedLoss) -> str | DDPStrategy:
    if world_size(config) == 1:
        return "auto"
    if config.system.distributed_backend == "ddp_spawn":
        return "ddp_spawn"
    # Disabled branches leave parameters without gradients; only then does DDP need to search for them.
    unused = (not loss.uses_adaface or not loss.uses_qaconv or not loss.uses_occlusion
              or config.system.distributed_backend == "ddp_find_unused_parameters_true")
    return DDPStrategy(find_unused_parameters=unused)


def _checkpoints(checkpoint_dir: Path, monitor_validation: bool) -> list[ModelCheckpoint]:
    """``last.ckpt`` at the end of every training epoch (whether or not validation runs), and ``best.ckpt`` at the
    validations that improve ``val_acc``."""
    last = ModelCheckpoint(checkpoint_dir, filename="last", save_top_k=1, save_on_train_epoch_end=True,
                           enable_version_counter=False)
    if not monitor_validation:
        return [last]
    best = ModelCheckpoint(checkpoint_dir, filename="best", monitor="val_acc", mode="max", save_top_k=1,
                           save_on_train_epoch_end=False, enable_version_counter=False)
    return [best, last]


def build_trainer(config: OamlConfig, experiment_dir: Path, monitor_validation: bool,
                  max_epochs: int | None = None) -> pl.Trainer:
    """A Lightning Trainer: devices, DDP, precision, checkpoints (best + last), CSV/TensorBoard/W&B logs,
    monitoring and signals.

    Raises:
        ConfigError: if ``--gpus`` asks for more GPUs than this machine has.
        ImportError: naming the extra of a requested logger that is not installed.
    """
    check_gpu_count(config.system.gpus)
    gpu = config.system.gpus > 0
    precision = ("16-mixed" if gpu else "bf16-mixed") if config.system.use_16bit else "32-true"
    checkpoint_dir = experiment_dir / "checkpoints"
    epochs = max_epochs or config.train.epochs
    log_every = config.train.log_every_n_steps
    callbacks = [*_checkpoints(checkpoint_dir, monitor_validation), LearningRateMonitor("step"),
                 ThroughputMonitor(log_every), OamlProgressBar(refresh_rate=10), LossCurves(experiment_dir),
                 SignalCheckpoint(checkpoint_dir), SkippedImagesSummary(config.data.max_bad_fraction),
                 BatchPreview(experiment_dir / "preview.png", config.channel_order)]
    return pl.Trainer(
        accelerator="gpu" if gpu else "cpu", devices=config.system.devices, num_nodes=config.system.num_nodes,
        strategy=_strategy(config, build_loss(config)), precision=precision, max_epochs=epochs,
        callbacks=callbacks, logger=_loggers(config, experiment_dir), default_root_dir=experiment_dir,
        val_check_interval=val_check_interval(epochs), check_val_every_n_epoch=config.eval.val_every_n_epochs,
        num_sanity_val_steps=0,
        accumulate_grad_batches=config.train.accumulate_grad_batches,
        gradient_clip_val=config.train.gradient_clip_val or None, use_distributed_sampler=False,
        fast_dev_run=config.system.fast_dev_run, limit_train_batches=config.train.limit_train_batches,
        deterministic=config.system.deterministic or None, log_every_n_steps=min(log_every, 50),
        plugins=[AtomicCheckpointIO()], enable_model_summary=False)
