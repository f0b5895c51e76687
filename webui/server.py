"""Serving the web UI (and the HTTP API on the same server), as ``app.py`` with no subcommand does.

``start`` launches Gradio without blocking and returns the running server; ``serve`` also blocks
until Ctrl+C. ``--share`` opens Gradio's tunnel; when it cannot be opened Gradio prints one
"Could not create share link" line and the local server keeps running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.app import create_ui

logger = logging.getLogger(__name__)
DEFAULT_PORT = 7860
QUEUE_MAX_SIZE = 256


@dataclass
class Server:
    demo: gr.Blocks
    local_url: str
    share_url: str | None

    def close(self) -> None:
        self.demo.close()


def add_api_routes(app: Any, services) -> None:
    """Mount the HTTP API (/sdapi/v1, /easel/v1) onto Gradio's FastAPI app, as A1111 does."""
    from modules.api import add_api

    add_api(app, services)
    # Starlette builds its exception middleware on the first request (Gradio's own start-up
    # check has made one): rebuild it so the API's error handlers take effect.
    app.middleware_stack = None


def start(services, host: str = "127.0.0.1", port: int = DEFAULT_PORT, share: bool = False, api: bool = False,
          auth: list[tuple[str, str]] | None = None, quiet: bool = False) -> Server:
    """Build the UI on ``services`` and launch it in the background; returns the running server."""
    demo = create_ui(services)
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=None)
    app, local_url, share_url = demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=True, auth=auth or None,
        show_error=True, quiet=quiet, footer_links=["api", "gradio"] if api else ["gradio"],
    )
    if api:
        add_api_routes(app, services)
    return Server(demo, local_url, share_url)


def serve(services, host: str, port: int, share: bool, api: bool,
          auth: list[tuple[str, str]] | None = None) -> None:
    """Start the UI (and the API with ``api``) and block until interrupted; then shut down."""
    server = start(services, host, port, share, api, auth)
    if host == "0.0.0.0" and not auth:
        print("warning: --listen without --gradio-auth: anyone on your network can use this UI")
    try:
        server.demo.block_thread()
    finally:
        server.close()


def serve_api_only(services, host: str, port: int) -> None:
    """A1111's --nowebui: the HTTP API alone, on uvicorn."""
    import uvicorn

    from modules.api import create_app

    uvicorn.run(create_app(services), host=host, port=port)
