"""The training driver behind ``oaml train`` and ``main.py``: fit, test the best checkpoint, or ``--evaluate``."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException

from oaml.config import OamlConfig, config_from_dict, validate
from oaml.constants import VAL_SET_NAMES
from oaml.data.datamodule import FaceDataModule
from oaml.data.samplers import PKSampler
from oaml.devices import check_gpu_count, gpu_memory_free, host_memory_available
from oaml.errors import CheckpointError, ConfigError
from oaml.evaluation.report import console_table
from oaml.training.run_folder import create_run_folder
from oaml.models.checkpoint import read_meta
from oaml.models.iresnet import feature_map_side, scaled_widths
from oaml.training.build import build_datamodule, build_loss, build_system, build_trainer, data_paths, world_size
from oaml.training.callbacks import SignalCheckpoint
from oaml.training.memory_estimate import RankMemory, check_rank_memory, format_rank_memory
from oaml.training.monitor import format_duration, run_log
from oaml.training.resume import check_resume, check_resume_classes, resume_folder
from oaml.training.system import OamlSystem
from oaml.training.weights import checkpoint_classes, evaluation_config, load_start_weights

__all__ = ["TrainingResult", "check_batches", "check_memory", "format_summary", "run_training", "summary_table"]

logger = logging.getLogger(__name__)

_EXPERIMENT_ENV = "OAML_EXPERIMENT_DIR"


@dataclass
class TrainingResult:
    """What a run produced.

    Attributes:
        experiment_dir: the run folder.
        best_checkpoint: ``checkpoints/best.ckpt`` (runs with validation), or None.
        last_checkpoint: ``checkpoints/last.ckpt``, or None (``fast_dev_run``, ``--evaluate``).
        val_metrics: the last validation's accuracies.
        test_metrics: the test of the best checkpoint (on the validation sets that selected it).
        stopped_by: ``"SIGINT"`` or ``"SIGTERM"`` when a signal stopped the run (after saving a resumable
            ``last.ckpt``), else None.
        set_names: the verification sets.
        is_global_zero: False in the other processes of a distributed run.
        steps: optimizer steps taken (in total, over resumes).
        wall_seconds: wall time of training and testing.
    """

    experiment_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    val_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    stopped_by: str | None = None
    set_names: list[str] = field(default_factory=list)
    is_global_zero: bool = True
    steps: int = 0
    wall_seconds: float = 0.0

    @property
    def interrupted(self) -> bool:
        """True when a signal stopped the run."""
        return self.stopped_by is not None

    @property
    def exit_status(self) -> int:
        """The process exit status: 0, or 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 0 if self.stopped_by is None else 128 + int(signal.Signals[self.stopped_by])


def _is_main_process() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def _experiment_dir(config: OamlConfig, resume_dir: Path | None = None) -> Path:
    """The run's folder, shared by every process of a distributed run: ``resume_dir`` when resuming in place.

    Lightning's own launcher re-runs this program for ranks > 0 with the parent's environment, so the
    parent exports the folder it created. Under external launchers (torchrun, SLURM) no process is the parent;
    the folder is then named after the job id, which every process sees.
    """
    if os.environ.get(_EXPERIMENT_ENV) and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return Path(os.environ[_EXPERIMENT_ENV])
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    if resume_dir is not None:
        path = resume_dir
        logger.info("resuming in %s", path)
    elif job and int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))) > 1:
        path = Path(config.system.output_dir) / f"{config.system.prefix}_job{job}"
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = create_run_folder(config.system.output_dir, config.system.prefix)
    os.environ[_EXPERIMENT_ENV] = str(path)
    return path


def summary_table(metrics: dict[str, float], set_names: list[str]) -> str:
    """A console table of the accuracies per set, protocol (clean, masked, ``occ_<protocol>``) and method."""
    rows = []
    protocols = [("", "clean"), ("masked_", "masked")]
    protocols += [(match.group(1), match.group(1)[4:-1]) for key in metrics
                  if (match := re.fullmatch(r"(occ_.+_)avg_adaface_acc", key))]
    for name in [*set_names, "avg"]:
        for prefix, protocol in protocols:
            values = [metrics.get(f"{prefix}{name}_{m}_acc") for m in ("adaface", "qaconv", "combined")]
            if all(v is None for v in values):
                continue
            rows.append([name, protocol, *("-" if v is None or v != v else f"{100 * v:.2f}" for v in values)])
    return console_table(rows, ["set", "protocol", "AdaFace %", "QAConv %", "combined %"])


def check_batches(config: OamlConfig, datamodule: FaceDataModule) -> None:
    """Refuse a run whose training data cannot fill one batch (it would train nothing and exit 0).

    Raises:
        ConfigError: naming the batch, the identities it needs, what the data has and the largest batch that fits.
    """
    world = world_size(config)
    k, per_device = config.loss.instances_per_identity, config.train.batch_size // world
    dataset = datamodule.train_dataset
    assert dataset is not None  # set up by the caller
    if len(PKSampler(dataset.labels, per_device, k, world, 0)):
        return
    identities = dataset.num_classes
    largest = -(-identities // world) * k * world
    raise ConfigError(
        f"--batch_size {config.train.batch_size}: a batch takes {per_device // k} identities x {k} images on each of "
        f"{world} device(s), but {datamodule.train_path} has {identities} identities, so not one batch can be "
        f"formed; "
        f"use --batch_size {largest} or less (a multiple of {k * world}), or train on more identities")


def check_memory(config: OamlConfig, num_classes: int) -> RankMemory:
    """Log the memory each rank needs for the sharded head, the class memory and the optimizer state, and refuse a
    run where it does not fit.

    The budget is the free memory of the run's GPUs, plus for ``--class_memory_on_cpu`` the host's available memory
    shared by the node's ranks; on a CPU-only run everything lives on the host, shared by the node's processes.

    Raises:
        ConfigError: naming the sizes and the fixes (``--sample_rate``, ``--class_memory_on_cpu``, more ranks).
    """
    system, cpu_only = config.system, config.system.gpus == 0
    host = host_memory_available() // system.devices
    settings = dict(sample_rate=config.loss.sample_rate, k_nearest=config.loss.k_nearest,
                    feature_shape=(scaled_widths(config.model.width)[-1], *(2 * [feature_map_side(
                        config.data.input_size)])), memory_on_cpu=config.loss.class_memory_on_cpu and not cpu_only,
                    momentum=config.train.momentum > 0, class_memory=build_loss(config).uses_class_memory,
                    batch_size=config.train.batch_size)
    estimate = check_rank_memory(num_classes, world_size(config), host if cpu_only else gpu_memory_free(system.gpus),
                                 None if cpu_only else host, cpu_only=cpu_only, **settings)
    logger.info("memory per rank for the margin head, class memory and optimizer state: %s",
                format_rank_memory(estimate))
    if estimate.gathered_on_save > host_memory_available():
        logger.warning("a checkpoint gathers the whole head and class memory on rank 0's host (%.1f GiB) but %.1f GiB "
                       "is available there: saving will run out of memory", estimate.gathered_on_save / 2**30,
                       host_memory_available() / 2**30)
    return estimate


def _announce_validation(config: OamlConfig, set_names: list[str]) -> None:
    _, val_path = data_paths(config)
    if set_names:
        logger.info("validation on %s in %s; checkpoints/best.ckpt follows val_acc", ", ".join(set_names), val_path)
    else:
        logger.warning("no verification set (%s.bin) in %s: this run trains without validation and writes "
                       "checkpoints/last.ckpt only, no best.ckpt", "|".join(VAL_SET_NAMES), val_path)


def _resume_checks(config: OamlConfig) -> tuple[Path | None, int | None]:
    """For ``--resume_from_checkpoint``: check the config against the checkpoint's; return its run folder and its
    class count."""
    path = config.system.resume_from_checkpoint
    meta = read_meta(path)
    if meta is not None and meta.config is not None:
        check_resume(config, config_from_dict(meta.config), path)
    folder = resume_folder(path)
    if folder is None:
        logger.warning("%s is not inside a run folder (<run>/checkpoints/); the resumed run gets a new folder", path)
    return folder, None if meta is None else meta.num_classes


def _prepare(config: OamlConfig) -> tuple[FaceDataModule, list[str], Path | None]:
    """Everything that can fail on bad input, before a run folder exists: devices, resume, data, batch, memory."""
    validate(config)
    check_gpu_count(config.system.gpus)
    folder, classes = _resume_checks(config) if config.system.resume_from_checkpoint else (None, None)
    datamodule = build_datamodule(config)
    datamodule.prepare_data()
    datamodule.setup("validate")
    set_names = [n for ds in datamodule.val_datasets[:1] for n in ds.names]
    if config.system.evaluate:
        if not config.system.start_from_model_statedict:
            raise CheckpointError("--evaluate needs --start_from_model_statedict CHECKPOINT")
        if not set_names:
            raise FileNotFoundError(f"--evaluate: no verification .bin files found in {data_paths(config)[1]}")
    else:
        datamodule.setup("fit")
        check_batches(config, datamodule)
        check_memory(config, datamodule.num_classes)
        if config.system.resume_from_checkpoint:
            check_resume_classes(config.system.resume_from_checkpoint, classes, datamodule.num_classes,
                                 datamodule.train_path)
    return datamodule, set_names, folder


def run_training(config: OamlConfig) -> TrainingResult:
    """Train (or only evaluate) as ``config`` says and return where everything went.

    Bad input (devices, resume settings, data, batch size) is refused before a run folder is made. A resumed run
    continues in the checkpoint's run folder. Every finished run writes ``checkpoints/last.ckpt``; with
    validation also ``best.ckpt``, which is then tested. SIGINT and SIGTERM stop after the current step with a
    resumable ``last.ckpt`` (:attr:`TrainingResult.stopped_by`).

    Raises:
        ConfigError: on settings that cannot train (e.g. too few identities for the batch, absent GPUs).
        CheckpointError: on an unusable or mismatching checkpoint.
    """
    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    with run_log(enabled=_is_main_process()) as attach_log:
        datamodule, set_names, resume_dir = _prepare(config)
        experiment_dir = _experiment_dir(config, resume_dir)
        attach_log(experiment_dir / "train.log")
        try:
            if _is_main_process():
                config.save(experiment_dir / "config.yaml")
            if config.system.evaluate:
                return _evaluate_only(config, datamodule, experiment_dir, set_names)
            _announce_validation(config, set_names)
            system = build_system(config, datamodule.num_classes, datamodule.class_names, set_names)
            if config.system.start_from_model_statedict:
                load_start_weights(system, config.system.start_from_model_statedict)
            trainer = build_trainer(config, experiment_dir, monitor_validation=bool(set_names))
        except BaseException:
            if resume_dir is None:
                _discard(experiment_dir)
            raise
        return _fit_and_test(config, trainer, system, datamodule, experiment_dir, set_names)


def _fit_and_test(config: OamlConfig, trainer: pl.Trainer, system: OamlSystem, datamodule: FaceDataModule,
                  experiment_dir: Path, set_names: list[str]) -> TrainingResult:
    start = time.perf_counter()
    signal_cb = next(cb for cb in trainer.callbacks if isinstance(cb, SignalCheckpoint))
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=config.system.resume_from_checkpoint or None,
                    weights_only=True)
    except SIGTERMException:
        if signal_cb.stopped_by is None:
            raise
    ckpt_dir = experiment_dir / "checkpoints"
    best = ckpt_dir / "best.ckpt" if (ckpt_dir / "best.ckpt").is_file() else None
    last = ckpt_dir / "last.ckpt" if (ckpt_dir / "last.ckpt").is_file() else None
    result = TrainingResult(experiment_dir, best, last, dict(system.val_metrics), stopped_by=signal_cb.stopped_by,
                            set_names=set_names, is_global_zero=trainer.is_global_zero,
                            steps=trainer.global_step, wall_seconds=time.perf_counter() - start)
    if set_names and best is not None and result.stopped_by is None and not config.system.fast_dev_run:
        trainer.test(system, datamodule=datamodule, ckpt_path=str(best), weights_only=True, verbose=False)
        result.test_metrics = dict(system.val_metrics)
        result.wall_seconds = time.perf_counter() - start
    return result


def _discard(experiment_dir: Path) -> None:
    """Remove the folder of a launch that failed before training (it holds nothing but config and log)."""
    if _is_main_process() and {p.name for p in experiment_dir.iterdir()} <= {"config.yaml", "train.log"}:
        shutil.rmtree(experiment_dir, ignore_errors=True)


def _evaluate_only(config: OamlConfig, datamodule: Any, experiment_dir: Path, set_names: list[str]) -> TrainingResult:
    path = config.system.start_from_model_statedict
    meta = read_meta(path)
    config = evaluation_config(config, meta)
    system = build_system(config, checkpoint_classes(path, meta), list(meta.class_names) if meta else None,
                          set_names)
    load_start_weights(system, path)
    trainer = build_trainer(config, experiment_dir, monitor_validation=False)
    trainer.validate(system, datamodule=datamodule, verbose=False)
    return TrainingResult(experiment_dir, None, None, dict(system.val_metrics), set_names=set_names,
                          is_global_zero=trainer.is_global_zero)


def format_summary(result: TrainingResult) -> str:
    """The accuracy table of a run, how it ended and where its files are, for the console and ``train.log``."""
    lines = []
    metrics = result.test_metrics or result.val_metrics
    if metrics:
        stage = ("test of the best checkpoint, on the validation sets that selected it (optimistic)"
                 if result.test_metrics else "validation")
        lines.append(f"\nAccuracies, {stage}:\n{summary_table(metrics, result.set_names)}")
    if result.stopped_by is not None:
        resume = result.last_checkpoint or result.experiment_dir / "checkpoints" / "last.ckpt"
        lines.append(f"interrupted by {result.stopped_by} after {result.steps} steps; resume with: "
                     f"oaml train --resume_from_checkpoint {resume}")
    if result.wall_seconds:
        lines.append(f"wall time: {format_duration(result.wall_seconds)} ({result.steps} steps)")
    lines.append(f"experiment: {result.experiment_dir}")
    files = (("best checkpoint", result.best_checkpoint), ("last checkpoint", result.last_checkpoint),
             ("metrics", result.experiment_dir / "metrics.csv"), ("loss curves", result.experiment_dir / "loss.png"),
             ("log", result.experiment_dir / "train.log"), ("training preview", result.experiment_dir / "preview.png"))
    lines += [f"{label}: {path}" for label, path in files if path is not None and path.is_file()]
    return "\n".join(lines)
