"""--api-auth (HTTP Basic on every /sdapi and /easel route) and the request body limit, in-process
and on a real uvicorn server (which must stay up after refusing a request)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from modules import cli
from modules.api import create_app
from modules.api.guard import basic_credentials, credentials_match, parse_credentials
from modules.config import load_settings
from modules.services import build_services
from tests.test_api import make_data_dir, png_b64

USERS = [("alice", "s3cret"), ("bob", "pass:with:colons")]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def api_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every API route in the OpenAPI schema, path parameters filled with 'x'."""
    out = []
    for path, operations in app.openapi()["paths"].items():
        if path.startswith(("/sdapi/", "/easel/")):
            out.extend((method.upper(), path.replace("{job_id}", "x")) for method in operations)
    return out


@pytest.fixture(scope="module")
def paused_services(tmp_path_factory, tiny_models_dir):
    """Services whose worker never starts: nothing here needs a generation to run."""
    data = make_data_dir(tmp_path_factory.mktemp("api-guard"), tiny_models_dir)
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}), start=False)
    yield services
    services.close()


@contextlib.contextmanager
def running_server(app) -> Iterator[int]:
    """Serve ``app`` on a free loopback port with uvicorn in a thread; yield the port."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 20 s"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------------------------------------
# credentials


def test_parse_credentials():
    assert parse_credentials("alice:s3cret, bob:pass:with:colons\ncarol:x") == [
        ("alice", "s3cret"), ("bob", "pass:with:colons"), ("carol", "x")]
    for bad in ("alice", ":pw", "alice:", "", " , "):
        with pytest.raises(ValueError, match="--api-auth"):
            parse_credentials(bad)


def test_basic_header_parsing_and_matching():
    assert basic_credentials(basic("bob", "pass:with:colons")["Authorization"]) == ("bob", "pass:with:colons")
    assert basic_credentials("Bearer abc") is None
    assert basic_credentials("Basic !!!not-base64") is None
    assert basic_credentials("Basic " + base64.b64encode(b"no-colon").decode()) is None
    assert credentials_match(("alice", "s3cret"), USERS)
    assert not credentials_match(("alice", "pass:with:colons"), USERS)  # another user's password
    assert not credentials_match(("alice", "s3cre"), USERS)
    assert not credentials_match(None, USERS)


def test_every_api_route_needs_credentials(paused_services):
    app = create_app(paused_services, api_auth=USERS)
    routes = api_routes(app)
    assert len(routes) >= 25
    with TestClient(app) as client:
        for method, path in routes:
            for headers in ({}, basic("alice", "wrong"), basic("mallory", "s3cret"), {"Authorization": "Basic ???"}):
                r = client.request(method, path, headers=headers, json={})
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["www-authenticate"].startswith("Basic realm=")
                assert r.json()["error"] == "NotAuthenticated" and "--api-auth" in r.json()["detail"]
        # the right credentials get through (read-only routes: nothing runs a job here)
        for user, password in USERS:
            for method, path in routes:
                if method != "GET":
                    continue
                r = client.get(path, headers=basic(user, password))
                expected = 404 if path.endswith(("/jobs/x", "/train/x", "/install/x")) else 200  # unknown job ids
                assert r.status_code == expected, (path, r.text)
        # the schema and docs hold no data and stay open
        assert client.get("/openapi.json").status_code == 200


def test_without_api_auth_routes_are_open(paused_services):
    with TestClient(create_app(paused_services)) as client:
        assert client.get("/sdapi/v1/samplers").status_code == 200


def test_png_info_takes_base64_never_a_path(paused_services, tmp_path):
    """No route reads a file named by the client: a path where an image belongs is a 422."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(base64.b64decode(png_b64()))
    with TestClient(create_app(paused_services)) as client:
        for text in (str(secret), f"file://{secret}", "/etc/passwd"):
            r = client.post("/sdapi/v1/png-info", json={"image": text})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image"]
            r = client.post("/easel/v1/jobs", json={"type": "extras", "request": {"image": text}})
            assert r.status_code == 422


def test_cli_passes_api_auth_to_the_api_server(data_dir, monkeypatch):
    seen = {}

    def fake_serve_api_only(services, host, port, api_auth=None):
        seen.update(host=host, port=port, api_auth=api_auth)

    monkeypatch.setattr("modules.api.app.serve_api", fake_serve_api_only)
    code = cli.main(["--nowebui", "--port", "7999", "--api-auth", "alice:s3cret,bob:x", "--data-dir", str(data_dir)])
    assert code == 0
    assert seen == {"host": "127.0.0.1", "port": 7999, "api_auth": [("alice", "s3cret"), ("bob", "x")]}
    assert cli.serve_parser().parse_args([]).api_auth is None
    assert cli.main(["--nowebui", "--api-auth", "no-colon", "--data-dir", str(data_dir)]) == 2


def test_web_ui_server_attaches_the_guarded_api(paused_services):
    """webui.server mounts the API on Gradio's app with the credentials (the UI itself is not behind them)."""
    from fastapi import FastAPI

    from webui.server import add_api_routes

    app = FastAPI()
    with TestClient(app):
        pass  # the app has started: its middleware stack exists, as Gradio's does
    add_api_routes(app, paused_services, USERS)
    with TestClient(app) as client:
        assert client.get("/sdapi/v1/samplers").status_code == 401
        assert client.get("/sdapi/v1/samplers", headers=basic("alice", "s3cret")).status_code == 200


# ---------------------------------------------------------------------------------------------
# body size


def test_body_over_the_limit_is_413_from_content_length(paused_services):
    with TestClient(create_app(paused_services, max_body_bytes=2000)) as client:
        r = client.post("/sdapi/v1/png-info", json={"image": "A" * 5000})
        assert r.status_code == 413
        assert r.json()["error"] == "RequestTooLarge" and "at most 2000 bytes" in r.json()["detail"]
        assert client.post("/sdapi/v1/png-info", json={"image": png_b64()}).status_code == 200


def test_auth_is_checked_before_the_body_size(paused_services):
    with TestClient(create_app(paused_services, api_auth=USERS, max_body_bytes=100)) as client:
        assert client.post("/sdapi/v1/png-info", json={"image": "A" * 500}).status_code == 401
        r = client.post("/sdapi/v1/png-info", json={"image": "A" * 500}, headers=basic("alice", "s3cret"))
        assert r.status_code == 413


def _post_chunked(port: int, path: str, chunks: list[bytes], headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=iter(chunks), encode_chunked=True,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_real_server_refuses_big_bodies_and_stays_up(paused_services):
    import json

    app = create_app(paused_services, max_body_bytes=4000)
    with running_server(app) as port:
        # no Content-Length (chunked): counted as it arrives
        status, body = _post_chunked(port, "/sdapi/v1/png-info", [b'{"image": "', b"A" * 3000, b"A" * 3000, b'"}'])
        assert status == 413 and b"at most 4000 bytes" in body
        # chunked and small enough: the body reaches the route intact
        image = png_b64().encode()
        status, body = _post_chunked(port, "/sdapi/v1/png-info", [b'{"image": "', image[:50], image[50:], b'"}'])
        assert status == 200, body
        assert json.loads(body)["info"] == ""
        # with Content-Length: refused before reading
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/sdapi/v1/png-info", body=b"x" * 5000, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 413 and b"RequestTooLarge" in response.read()
        conn.close()
        # the server is still up
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/sdapi/v1/samplers")
        assert conn.getresponse().status == 200
        conn.close()
