"""One small function per subcommand: resolve the arguments, call the library, return an exit status."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from oaml.cli.eval_commands import embed_command, eval_command

__all__ = ["run"]

log = logging.getLogger("oaml")


def _not_available(command: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        print(f"oaml {command}: not available yet in oaml {_version()}", file=sys.stderr)
        return 2

    return handler


def _version() -> str:
    from oaml import __version__

    return __version__


def _make_synthetic(args: argparse.Namespace) -> int:
    from oaml.data.synthetic import make_synthetic

    formats = ("rec", "folder") if args.format == "both" else (args.format,)
    summary = make_synthetic(args.out, identities=args.identities, images=args.images, seed=args.seed,
                             formats=formats, val_pairs=args.val_pairs, workers=args.workers)
    print(summary)
    return 0


def _train(args: argparse.Namespace) -> int:
    from oaml.cli.main import config_from_args
    from oaml.config import check_data_paths

    from oaml.training.run import run_training

    config = config_from_args(args)
    check_data_paths(config)
    run_training(config)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from oaml.training.demo import run_demo

    run_demo(args.cache_dir, args.epochs)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _train,
    "make-synthetic": _make_synthetic,
    "eval": eval_command,
    "demo": _demo,
    "convert": _not_available("convert"),
    "export": _not_available("export"),
    "align": _not_available("align"),
    "embed": embed_command,
}


def run(args: argparse.Namespace) -> int:
    """Dispatch ``args.command`` to its handler."""
    return HANDLERS[args.command](args)
