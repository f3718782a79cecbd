"""``python -m oaml.study ARGS`` is ``oaml study ARGS`` (the study must be started under this guard: its runs train
in spawned worker processes)."""

import sys

from oaml.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
