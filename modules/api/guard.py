"""The gate in front of every API route: HTTP Basic credentials and a body size limit.

The credentials are ``AuthPolicy.api`` (``modules.auth``): ``--api-auth``, or ``--gradio-auth``
when only that was given.

``ApiGuard`` is a plain ASGI middleware. It looks only at paths under ``/sdapi/``, ``/easel/`` and ``/controlnet/``
(the web UI mounted on the same app keeps its own ``--gradio-auth`` and upload rules) and, in
order:

1. with credentials configured, answers 401 with ``WWW-Authenticate: Basic`` unless the request
   carries one of them (compared with ``secrets.compare_digest``);
2. answers 413 when the body is larger than ``max_body_bytes``: at once from ``Content-Length``,
   or, for a body sent without one (chunked), by counting the bytes as they arrive.

Both answers are JSON ``{"detail": ..., "error": ...}`` like every other API error, and the server
goes on serving.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from modules.auth import basic_credentials, credentials_match, parse_credentials

__all__ = ["ApiGuard", "basic_credentials", "credentials_match", "parse_credentials", "send_error"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_PREFIXES = ("/sdapi/", "/easel/", "/controlnet/")
MAX_BODY_BYTES = 50 * 1024 * 1024  # 50 MiB: a few large base64 images with room to spare
REALM = "Easel API"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def send_error(send: Send, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
    """Answer with the API's JSON error body."""
    body = json.dumps({"detail": detail, "error": error}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def too_large_message(size: int | str, limit: int) -> str:
    return (f"the request body is {size} bytes; at most {limit} bytes ({limit // (1024 * 1024)} MiB) are accepted:"
            " send smaller or fewer images")


class ApiGuard:
    """ASGI middleware: Basic auth and a body size limit on the API paths (see the module docstring)."""

    def __init__(self, app: ASGIApp, credentials: list[tuple[str, str]] | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, extra_prefixes: list[str] | None = None) -> None:
        self.app = app
        self.credentials = list(credentials or [])
        self.max_body_bytes = max_body_bytes
        # the extensions' routes (on_app_started): the list is filled once their hooks ran, read per request
        self.extra_prefixes = extra_prefixes if extra_prefixes is not None else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith((*API_PREFIXES, *self.extra_prefixes)):
            await self.app(scope, receive, send)
            return
        if self.credentials and not credentials_match(basic_credentials(_header(scope, b"authorization")), self.credentials):
            await send_error(send, 401, "NotAuthenticated",
                             "this API needs HTTP Basic credentials (--api-auth, or --gradio-auth when only that is set):"
                             " send an Authorization: Basic header",
                             {"WWW-Authenticate": f'Basic realm="{REALM}"'})
            return
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await send_error(send, 400, "BadContentLength", f"Content-Length {length!r} is not a byte count")
                return
            if int(length) > self.max_body_bytes:
                await send_error(send, 413, "RequestTooLarge", too_large_message(int(length), self.max_body_bytes))
                return
            await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body without Content-Length: read it all, counting; refuse it past the limit, else replay it."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await send_error(send, 413, "RequestTooLarge", too_large_message(f"more than {size}", self.max_body_bytes))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
