"""Seed-compatible evaluation entry point: ``python main_eval.py ARGS`` is ``oaml eval ARGS``."""

import sys

from oaml.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
