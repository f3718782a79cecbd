"""Training system: the LightningModule, the builders that read the config, the driver and the demo."""

from __future__ import annotations

from oaml.training.build import build_datamodule, build_system, build_trainer
from oaml.training.run import TrainingResult, format_summary, run_training
from oaml.training.system import OamlSystem, OptimSettings

__all__ = ["OamlSystem", "OptimSettings", "TrainingResult", "build_datamodule", "build_system", "build_trainer",
           "format_summary", "run_training"]
