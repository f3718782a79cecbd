"""The training driver behind ``oaml train`` and ``main.py``: fit, test the best checkpoint, or ``--evaluate``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from oaml.config import OamlConfig, config_from_dict
from oaml.errors import CheckpointError
from oaml.evaluation.report import console_table
from oaml.experiment import create_experiment_dir
from oaml.models import extract_prefixed
from oaml.models.checkpoint import backbone_state_dict, read_checkpoint
from oaml.training.build import build_datamodule, build_system, build_trainer
from oaml.training.callbacks import SignalCheckpoint
from oaml.training.system import OamlSystem

__all__ = ["TrainingResult", "format_summary", "load_start_weights", "run_training", "summary_table"]

logger = logging.getLogger(__name__)

_EXPERIMENT_ENV = "OAML_EXPERIMENT_DIR"


@dataclass
class TrainingResult:
    """What a run produced. ``is_global_zero`` is False in the other processes of a distributed run."""

    experiment_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    val_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    set_names: list[str] = field(default_factory=list)
    is_global_zero: bool = True


def _experiment_dir(config: OamlConfig) -> Path:
    """The run's folder, shared by every process of a distributed run.

    Lightning's own launcher re-runs this program for ranks > 0 with the parent's environment, so the
    parent exports the folder it created. Under external launchers (torchrun, SLURM) no process is the parent;
    the folder is then named after the job id, which every process sees.
    """
    if os.environ.get(_EXPERIMENT_ENV) and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return Path(os.environ[_EXPERIMENT_ENV])
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    if job and int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))) > 1:
        path = Path(config.system.output_dir) / f"{config.system.prefix}_job{job}"
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = create_experiment_dir(config.system.output_dir, config.system.prefix)
    os.environ[_EXPERIMENT_ENV] = str(path)
    return path


def load_start_weights(system: OamlSystem, path: str | os.PathLike[str]) -> None:
    """Initialise ``system`` from ``--start_from_model_statedict``.

    Our checkpoints load strictly. A released AdaFace checkpoint (backbone under ``model.``, ``head.*``) loads
    the backbone strictly and the head when its class count matches; the occlusion head and QAConv keep their
    fresh initialisation, with a warning that lists them.

    Raises:
        CheckpointError: on an unknown layout or mismatching keys.
    """
    checkpoint = dict(read_checkpoint(path))
    state = checkpoint.get("state_dict", checkpoint)
    if any(key.startswith("model.backbone.") for key in state):
        own = {k: v for k, v in state.items() if not k.startswith("class_memory.") or system.class_memory}
        missing, unexpected = system.load_state_dict(own, strict=False)
        missing = [k for k in missing if not k.startswith("class_memory.")]
        if missing or unexpected:
            raise CheckpointError(f"{path}: does not match this model; missing keys {missing[:10]} "
                                  f"({len(missing)}), unexpected keys {unexpected[:10]} ({len(unexpected)})")
        return
    backbone_state = backbone_state_dict(checkpoint, str(path))
    try:
        system.model.backbone.load_state_dict(backbone_state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: backbone weights do not match --arch/--width: {error}") from None
    head_state = extract_prefixed(state, "head.")
    kernel = head_state.get("kernel")
    if kernel is not None and kernel.shape == system.head.kernel.shape:
        system.head.load_state_dict(head_state, strict=False)
    else:
        logger.warning("%s: head not loaded (%s); it starts fresh", path,
                       "absent" if kernel is None else f"{tuple(kernel.shape)} vs {tuple(system.head.kernel.shape)}")
    fresh = [f"model.occlusion_head.{n}" for n, _ in system.model.occlusion_head.named_parameters()] + \
            [f"model.qaconv.{n}" for n, _ in system.model.qaconv.named_parameters()]
    logger.warning("%s is a backbone-only checkpoint: initialised fresh: %s", path, ", ".join(fresh))


def summary_table(metrics: dict[str, float], set_names: list[str]) -> str:
    """A console table of clean and masked accuracies per set and method."""
    rows = []
    for name in [*set_names, "avg"]:
        for prefix, protocol in (("", "clean"), ("masked_", "masked")):
            values = [metrics.get(f"{prefix}{name}_{m}_acc") for m in ("adaface", "qaconv", "combined")]
            if all(v is None for v in values):
                continue
            rows.append([name, protocol, *("-" if v is None or v != v else f"{100 * v:.2f}" for v in values)])
    return console_table(rows, ["set", "protocol", "AdaFace %", "QAConv %", "combined %"])


def run_training(config: OamlConfig) -> TrainingResult:
    """Train (or only evaluate) as ``config`` says and return where everything went."""
    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    experiment_dir = _experiment_dir(config)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        config.save(experiment_dir / "config.yaml")
    datamodule = build_datamodule(config)
    datamodule.prepare_data()
    datamodule.setup("validate")
    set_names = [n for ds in datamodule.val_datasets[:1] for n in ds.names]
    has_val = bool(set_names)
    if config.system.evaluate:
        return _evaluate_only(config, datamodule, experiment_dir, set_names)
    system = build_system(config, datamodule.num_classes, datamodule.class_names, set_names)
    if config.system.start_from_model_statedict:
        load_start_weights(system, config.system.start_from_model_statedict)
    trainer = build_trainer(config, experiment_dir, monitor_validation=has_val)
    trainer.fit(system, datamodule=datamodule, ckpt_path=config.system.resume_from_checkpoint or None,
                weights_only=True)
    signal_cb = next(cb for cb in trainer.callbacks if isinstance(cb, SignalCheckpoint))
    ckpt_dir = experiment_dir / "checkpoints"
    best = ckpt_dir / "best.ckpt" if (ckpt_dir / "best.ckpt").is_file() else None
    last = ckpt_dir / "last.ckpt" if (ckpt_dir / "last.ckpt").is_file() else None
    result = TrainingResult(experiment_dir, best, last, dict(system.val_metrics), interrupted=signal_cb.interrupted,
                            set_names=set_names, is_global_zero=trainer.is_global_zero)
    if has_val and best is not None and not result.interrupted and not config.system.fast_dev_run:
        trainer.test(system, datamodule=datamodule, ckpt_path=str(best), weights_only=True, verbose=False)
        result.test_metrics = dict(system.val_metrics)
    return result


def _evaluate_only(config: OamlConfig, datamodule: Any, experiment_dir: Path, set_names: list[str]) -> TrainingResult:
    if not set_names:
        raise FileNotFoundError(f"--evaluate: no verification .bin files found in {datamodule.val_dir}")
    path = config.system.start_from_model_statedict
    if not path:
        raise CheckpointError("--evaluate needs --start_from_model_statedict CHECKPOINT")
    checkpoint = dict(read_checkpoint(path))
    config = _with_checkpoint_model(config, checkpoint.get("oaml", {}).get("config"))
    num_classes = int(checkpoint.get("oaml", {}).get("num_classes", 0)) or _released_classes(checkpoint)
    system = build_system(config, num_classes, checkpoint.get("oaml", {}).get("class_names"), set_names)
    load_start_weights(system, path)
    trainer = build_trainer(config, experiment_dir, monitor_validation=False)
    trainer.validate(system, datamodule=datamodule, verbose=False)
    return TrainingResult(experiment_dir, None, None, dict(system.val_metrics), set_names=set_names,
                          is_global_zero=trainer.is_global_zero)


def _with_checkpoint_model(config: OamlConfig, saved: dict[str, Any] | None) -> OamlConfig:
    """Our checkpoints carry their config: the model, the loss branches and the input convention come from it."""
    if not saved:
        return config
    merged = config.to_dict()
    merged["model"], merged["loss"] = saved["model"], saved["loss"]
    merged["data"] |= {k: saved["data"][k] for k in ("channel_order", "input_size")}
    return config_from_dict(merged)


def _released_classes(checkpoint: dict[str, Any]) -> int:
    kernel = checkpoint.get("state_dict", checkpoint).get("head.kernel")
    return int(kernel.shape[1]) if isinstance(kernel, torch.Tensor) and kernel.dim() == 2 else 2


def format_summary(result: TrainingResult) -> str:
    """The accuracy table of a run and where its files are, for the console."""
    lines = []
    metrics = result.test_metrics or result.val_metrics
    if metrics:
        stage = "test (best checkpoint)" if result.test_metrics else "validation"
        lines.append(f"\nAccuracies, {stage}:\n{summary_table(metrics, result.set_names)}")
    lines.append(f"experiment: {result.experiment_dir}")
    for label, path in (("best checkpoint", result.best_checkpoint), ("last checkpoint", result.last_checkpoint)):
        if path is not None:
            lines.append(f"{label}: {path}")
    lines.append(f"metrics: {result.experiment_dir / 'metrics.csv'}")
    preview = result.experiment_dir / "preview.png"
    if preview.is_file():
        lines.append(f"training preview: {preview}")
    return "\n".join(lines)
