"""``oaml`` command line: the subcommands of the ``cli`` modules, assembled; only ``cli/`` reads ``sys.argv``.

Exit status: 0 on success, 2 on bad input (one line naming the argument, the value and what is allowed),
1 on a runtime failure, 128 + the signal number for a training run stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from oaml import __version__
from oaml.cli import data, evaluate, identify, study, tools, train
from oaml.cli.config_args import parameter_summary
from oaml.errors import OamlError

__all__ = ["build_parser", "main"]

log = logging.getLogger("oaml")

_GROUPS = (train, evaluate, identify, data, study, tools)


def build_parser() -> argparse.ArgumentParser:
    """The ``oaml`` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="oaml", description="Occlusion-robust face recognition: train, "
                                     "evaluate and deploy AdaFace + QAConv + occlusion-head models.",
                                     epilog=parameter_summary(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"oaml {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``oaml`` command line and return its exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the exact command, for the files that record it (oaml occlude's manifest)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except (OamlError, FileNotFoundError) as error:
        print(f"oaml {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
