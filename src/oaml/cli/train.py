"""``oaml train`` (= ``python main.py``) and ``oaml demo``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from oaml.cli.config_args import add_config_arguments, config_from_args

if TYPE_CHECKING:
    from oaml.training.run import TrainingResult

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``demo`` subcommands."""
    train = sub.add_parser("train", help="train (or --evaluate) a model", description="Train a model.")
    add_config_arguments(train)
    train.set_defaults(handler=_train)
    demo = sub.add_parser("demo", help="train a small model on built-in synthetic faces and print accuracies",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--cache-dir", default=None, help="where the synthetic data and the run go "
                      "(default: <cache root>/demo)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: those of tiny_cpu)")
    demo.set_defaults(handler=_demo)


def _train(args: argparse.Namespace) -> int:
    from oaml.training.build import check_data_paths
    from oaml.training.run import run_training

    config = config_from_args(args)
    check_data_paths(config)
    return _print_summary(run_training(config))


def _demo(args: argparse.Namespace) -> int:
    from oaml.training.demo import run_demo

    return _print_summary(run_demo(args.cache_dir, args.epochs))


def _print_summary(result: TrainingResult) -> int:
    """Print the run's summary (rank 0), append it to its ``train.log``, and return the exit status."""
    from oaml.training.run import format_summary

    if result.is_global_zero:
        text = format_summary(result)
        print(text)
        log = result.experiment_dir / "train.log"
        if log.is_file():
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(text + "\n")
    return result.exit_status
