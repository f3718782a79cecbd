"""One small function per subcommand: resolve the arguments, call the library, return an exit status."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from oaml.cli.eval_commands import embed_command, eval_command
from oaml.cli.tool_commands import align_command, convert_command, export_command

if TYPE_CHECKING:
    from oaml.training.run import TrainingResult

__all__ = ["run"]



def _make_synthetic(args: argparse.Namespace) -> int:
    from oaml.data.synthetic import make_synthetic

    formats = ("rec", "folder") if args.format == "both" else (args.format,)
    summary = make_synthetic(args.out, identities=args.identities, images=args.images, seed=args.seed,
                             formats=formats, val_pairs=args.val_pairs, workers=args.workers)
    spec = summary.spec
    state = "reused (already made with these settings)" if summary.cached else f"made in {summary.seconds:.1f} s"
    print(f"{summary.out_dir}: {summary.num_images} training images of {spec.identities} identities "
          f"({', '.join(spec.formats)}), {summary.num_val_images} held-out images in 5 verification sets of "
          f"{spec.pairs_per_set} pairs; seed {spec.seed}; {state}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from oaml.cli.main import config_from_args
    from oaml.config import check_data_paths

    from oaml.training.run import run_training

    config = config_from_args(args)
    check_data_paths(config)
    return _print_summary(run_training(config))


def _demo(args: argparse.Namespace) -> int:
    from oaml.training.demo import run_demo

    return _print_summary(run_demo(args.cache_dir, args.epochs))


def _study(args: argparse.Namespace) -> int:
    from oaml.study.runs import options_from_args, run_study

    for name, path in run_study(options_from_args(args)).items():
        print(f"{name}: {path}")
    return 0


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


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _train,
    "make-synthetic": _make_synthetic,
    "eval": eval_command,
    "demo": _demo,
    "convert": convert_command,
    "export": export_command,
    "align": align_command,
    "embed": embed_command,
    "study": _study,
}


def run(args: argparse.Namespace) -> int:
    """Dispatch ``args.command`` to its handler."""
    return HANDLERS[args.command](args)
