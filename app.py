"""Easel's entry point: ``python app.py [flags]`` serves the web UI, ``python app.py generate ...``
and ``python app.py train ...`` run headless (see ``--help``).

The composition root: the command line (``modules.cli``) reads settings and builds the services;
this file hands it the web UI's server, so the core never imports the UI. It holds no logic.
"""

import sys

from modules.cli import main


def serve_ui(*args, **kwargs) -> None:
    """``webui.server.serve``, imported only when the UI is served (gradio is slow to import)."""
    from webui.server import serve

    serve(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main(serve_ui=serve_ui))
