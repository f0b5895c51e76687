"""A local server that answers like the Hugging Face hub and like a plain file host, for install tests.

- ``HEAD/GET /{owner}/{name}/resolve/{revision}/{file}``: the hub's resolve route, with the headers
  ``huggingface_hub.get_hf_file_metadata`` reads (``X-Repo-Commit``, ``X-Linked-Etag`` = the
  sha256 of an LFS file, ``X-Linked-Size``, ``ETag``) and HTTP Range;
- ``GET /api/models/{owner}/{name}/tree/{revision}``: the file list ``HfApi.list_repo_files`` reads;
- ``GET /files/{key}`` and ``/api/download/models/{key}``: a plain host; the file name only in
  ``Content-Disposition`` (as Civitai's ``/api/download/models/123``), with Range.

``host.drop_first`` makes each response that starts at byte 0 close the connection after half the
body (a dropped connection); a path in ``host.stall`` sends half its body from byte 0, then waits for
``host.release`` before dropping (an install caught mid-file, to be killed); ``host.ranges`` records
the Range headers the server saw and ``host.sent`` the body bytes sent, by path.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import StreamingResponse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class ModelHost:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo id -> {path: bytes}
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # key -> (file name, bytes)
    drop_first: bool = False
    wrong_sha: set[str] = field(default_factory=set)  # repo paths whose X-Linked-Etag lies
    ranges: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # Authorization headers the resolve route saw
    seen: list[str] = field(default_factory=list)  # every request, as "METHOD /path"
    sent: Counter = field(default_factory=Counter)  # body bytes sent, by repo path or file key
    stall: set[str] = field(default_factory=set)  # paths whose first response stops halfway until release
    release: threading.Event = field(default_factory=threading.Event)


def body_response(request: Request, data: bytes, headers: dict[str, str], host: ModelHost, key: str) -> Response:
    """``data`` with Range support; with ``host.drop_first`` (or ``key`` in ``host.stall``), a response
    from byte 0 stops halfway."""
    headers = {**headers, "Accept-Ranges": "bytes"}
    start = 0
    status = 200
    if request.headers.get("range"):
        host.ranges.append(request.headers["range"])
        start = int(request.headers["range"].removeprefix("bytes=").split("-")[0])
        if start >= len(data):
            return Response(status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
    headers["Content-Length"] = str(len(data) - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    body = data[start:]
    drop = (host.drop_first or key in host.stall) and start == 0
    stall = key in host.stall and start == 0

    def chunks():
        half = len(body) // 2
        host.sent[key] += half
        yield body[:half]
        if stall:
            host.release.wait(60)
        if drop:
            raise ConnectionResetError("dropped on purpose")
        host.sent[key] += len(body) - half
        yield body[half:]

    return StreamingResponse(chunks(), status_code=status, headers=headers, media_type="application/octet-stream")


def tree_entry(path: str, data: bytes) -> dict:
    """A file as the hub's tree API lists it; weights are LFS files, with their sha256."""
    entry = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
    if path.endswith((".safetensors", ".bin", ".ckpt", ".pt")):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def create_host_app(host: ModelHost) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def record(request: Request, call_next):
        host.seen.append(f"{request.method} {request.url.path}")
        return await call_next(request)

    @app.api_route("/{owner}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    def resolve(owner: str, name: str, revision: str, path: str, request: Request) -> Response:
        data = host.repos.get(f"{owner}/{name}", {}).get(path)
        if request.headers.get("authorization"):
            host.tokens.append(request.headers["authorization"])
        if data is None:
            raise HTTPException(404, headers={"X-Error-Code": "EntryNotFound"})
        sha = hashlib.sha256(data + (b"!" if path in host.wrong_sha else b"")).hexdigest()
        headers = {"X-Repo-Commit": COMMIT, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                   "ETag": f'"{sha}"'}
        return body_response(request, data, headers, host, path)

    @app.get("/api/models/{owner}/{name}/tree/{revision}")
    def tree(owner: str, name: str, revision: str) -> list[dict]:
        files = host.repos.get(f"{owner}/{name}")
        if files is None:
            raise HTTPException(404, headers={"X-Error-Code": "RepoNotFound"})
        return [tree_entry(p, d) for p, d in files.items()]

    @app.get("/files/{key}")
    @app.get("/api/download/models/{key}")  # Civitai's shape
    def plain(key: str, request: Request) -> Response:
        if key == "login":
            raise HTTPException(401)
        if key not in host.files:
            raise HTTPException(404)
        name, data = host.files[key]
        return body_response(request, data, {"Content-Disposition": f'attachment; filename="{name}"'}, host, key)

    return app
