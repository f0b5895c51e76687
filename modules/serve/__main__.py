"""``python -m modules.serve [flags]``: what ``./launch.sh serve`` runs (see modules.serve.cli)."""

import sys

from modules.serve.cli import main

sys.exit(main())
