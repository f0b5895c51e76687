"""Easel's entry point: ``python app.py generate ...`` (see ``--help``).

The composition root: it reads settings, builds the services and hands them to the chosen
front end. It holds no logic of its own.
"""

import sys

from modules.cli import main

if __name__ == "__main__":
    sys.exit(main())
