"""Seed-compatible training entry point: ``python main.py ARGS`` is ``oaml train ARGS``."""

import sys

from oaml.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
