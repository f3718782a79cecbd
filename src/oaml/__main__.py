"""``python -m oaml`` runs the command-line interface."""

import sys

from oaml.cli.main import main

sys.exit(main())
