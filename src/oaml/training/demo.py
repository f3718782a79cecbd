"""``oaml demo``: synthetic faces -> a small model trained with the full objective -> accuracy table.

Everything lands in a cache folder (``<cache root>/demo`` by default, see :func:`oaml.fileio.cache_root`): the
synthetic dataset (made once and reused), and the experiment folder with the checkpoints, ``metrics.csv`` and
``preview.png``. The recipe is the packaged ``tiny_cpu`` configuration: the ir_18 layout at width 0.125 (about
1/64 of the full network's compute), so the whole demo takes a few minutes on two cores. It trains in fp32: at
this width bf16 autocast is about 4x slower on the CPU (measured on the 2-core development machine: 117 vs
27 img/s for a training step at batch 64, see docs/benchmarks.md); bf16 pays off only at full width.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from oaml.config import OamlConfig, config_from_dict, load_config_file, validate
from oaml.data.synthetic import make_synthetic
from oaml.fileio import cache_root
from oaml.training.run import TrainingResult, run_training

__all__ = ["DEMO_DATA", "demo_config", "run_demo"]

logger = logging.getLogger(__name__)

DEMO_DATA = {"identities": 200, "images": 12, "seed": 0, "val_pairs": 200}
"""Size of the demo's synthetic dataset: 2,400 training images, 200 pairs per verification set."""


def default_cache_dir() -> Path:
    """``<cache root>/demo`` (:func:`oaml.fileio.cache_root`)."""
    return cache_root() / "demo"


def demo_config(data_dir: Path, output_dir: Path, epochs: int | None = None) -> OamlConfig:
    """The demo's configuration: the packaged ``tiny_cpu`` recipe on the demo data.

    Another number of epochs scales the schedule with it (milestones at 5/8 and 7/8, validation twice).
    """
    flat: dict[str, object] = {"data_root": str(data_dir.parent), "train_data_path": data_dir.name,
                               "val_data_path": data_dir.name, "prefix": "demo", "output_dir": str(output_dir)}
    if epochs is not None:
        flat |= {"epochs": epochs, "lr_milestones": [max(1, epochs * 5 // 8), max(2, epochs * 7 // 8)],
                 "val_every_n_epochs": max(1, epochs // 2)}
    config = config_from_dict(load_config_file("tiny_cpu"), flat)
    validate(config)
    return config


def run_demo(cache_dir: str | os.PathLike[str] | None = None, epochs: int | None = None) -> TrainingResult:
    """Make (or reuse) the synthetic data, train and test the best checkpoint."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data_dir = root / "synthetic"
    summary = make_synthetic(data_dir, **DEMO_DATA)
    logger.info("synthetic data in %s (%s)", data_dir, "reused" if summary.cached else
                f"made in {summary.seconds:.0f} s")
    return run_training(demo_config(data_dir, root / "experiments", epochs))
