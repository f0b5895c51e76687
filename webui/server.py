"""Serving the web UI (and the HTTP API on the same server), as ``app.py`` with no subcommand does.

``start`` launches Gradio without blocking and returns the running server; ``serve`` also blocks
until Ctrl+C. ``--share`` opens Gradio's tunnel; when it cannot be opened Gradio prints one
"Could not create share link" line and the local server keeps running.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from modules.api.guard import MAX_BODY_BYTES
from modules.auth import AuthPolicy
from modules.images import limit_decoded_pixels
from webui.app import CSS, create_ui
from webui.extensions import page_head

logger = logging.getLogger(__name__)
DEFAULT_PORT = 7860
QUEUE_MAX_SIZE = 256
THEMES = ("light", "dark")
JAVASCRIPT = Path(__file__).parent / "javascript"  # shortcuts.js, layout.js: loaded in name order


@dataclass
class Server:
    demo: gr.Blocks
    local_url: str
    share_url: str | None

    def close(self) -> None:
        self.demo.close()


def add_api_routes(app: Any, services, api_auth: list[tuple[str, str]] | None = None) -> None:
    """Mount the HTTP API (/sdapi/v1, /easel/v1) onto Gradio's FastAPI app, as A1111 does.

    ``api_auth``: HTTP Basic credentials every API route requires (--api-auth); None = open.
    """
    from modules.api import add_api

    # Starlette builds its middleware stack on the first request (Gradio's own start-up check
    # has made one): reset it so the API's guard can be added and its error handlers take effect.
    app.middleware_stack = None
    add_api(app, services, api_auth)
    app.middleware_stack = None


def theme_head(theme: str | None) -> str | None:
    """A1111's --theme: a script that reopens the page with Gradio's ``?__theme=light|dark`` (kept
    when the URL already names one); None for the browser's own choice."""
    if theme is None:
        return None
    if theme not in THEMES:
        raise ValueError(f"theme {theme!r}: choose one of {', '.join(THEMES)}")
    return ("<script>(function () {"
            " const url = new URL(window.location.href);"
            f" if (!url.searchParams.has('__theme')) {{ url.searchParams.set('__theme', '{theme}');"
            " window.location.replace(url.toString()); }"
            " })();</script>")


def scripts_head() -> str:
    """Every ``webui/javascript/*.js`` (keyboard shortcuts and button hints, phone scrolling, pixel-exact
    small results) as <script> tags for the <head>."""
    return "\n".join(f"<script>\n{path.read_text(encoding='utf-8')}\n</script>"
                     for path in sorted(JAVASCRIPT.glob("*.js")))


def start(services, host: str = "127.0.0.1", port: int = DEFAULT_PORT, share: bool = False, api: bool = False,
          auth: list[tuple[str, str]] | None = None, quiet: bool = False, theme: str | None = None,
          api_auth: list[tuple[str, str]] | None = None) -> Server:
    """Build the UI on ``services`` and launch it in the background; returns the running server.

    ``auth`` (--gradio-auth) and ``api_auth`` (--api-auth) make one ``AuthPolicy``: either alone
    protects the UI, every Gradio endpoint and the API alike. ``theme`` ("light" or "dark") opens
    the page in that mode; None follows the browser."""
    policy = AuthPolicy(tuple(auth or ()), tuple(api_auth or ()))
    limit_decoded_pixels(services.settings.max_input_pixels)  # Gradio decodes the UI's uploads itself
    demo = create_ui(services)
    head = "\n".join(part for part in (theme_head(theme), scripts_head(), page_head(services)) if part) or None
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=None)
    app_kwargs = {"lifespan": api_lifespan(services, list(policy.api) or None)} if api else None
    app, local_url, share_url = demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=True, auth=list(policy.ui) or None,
        show_error=True, quiet=quiet, footer_links=["api", "gradio"] if api else ["gradio"], head=head,
        app_kwargs=app_kwargs, max_file_size=MAX_BODY_BYTES,  # the API's body limit for the UI's uploads too
        css=CSS,
    )
    return Server(demo, local_url, share_url)


def api_lifespan(services, api_auth: list[tuple[str, str]] | None):
    """A lifespan for Gradio's app that attaches the HTTP API at server start-up, before the
    server accepts its first request (so no client ever sees the page without the API)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        add_api_routes(app, services, api_auth)
        yield

    return lifespan


def serve(services, host: str, port: int, share: bool, api: bool,
          auth: list[tuple[str, str]] | None = None, theme: str | None = None,
          api_auth: list[tuple[str, str]] | None = None) -> None:
    """Start the UI (and the API with ``api``, behind ``api_auth`` when given) and block until interrupted."""
    from modules.devices import freeze_startup_objects

    server = start(services, host, port, share, api, auth, theme=theme, api_auth=api_auth)
    freeze_startup_objects()
    try:
        server.demo.block_thread()
    finally:
        server.close()
