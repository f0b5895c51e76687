"""The /easel/v1/models routes: install by URL through the API, follow it, list, delete; refusals."""

from __future__ import annotations

import base64
import time
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from modules.api import create_app
from modules.config import load_settings
from modules.services import build_services
from tests.model_host import ModelHost, create_host_app
from tests.served import served
from tests.test_installer import lora_bytes


@pytest.fixture
def host():
    h = ModelHost()
    h.files["7"] = ("api-lora.safetensors", lora_bytes(7))
    with served(create_host_app(h)) as port:
        h.base = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield h


def make_services(data_dir, allow_downloads: bool = True):
    return build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0}), allow_downloads=allow_downloads)


@pytest.fixture
def online_services(data_dir):
    s = make_services(data_dir)
    s.installer.target = replace(s.installer.target, allow_private_hosts=True)  # the test host is 127.0.0.1
    yield s
    s.close()


def wait_install(client: TestClient, job_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/easel/v1/models/install/{job_id}").json()
        if body["state"] not in ("queued", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_install_follow_list_delete(online_services, host, data_dir):
    client = TestClient(create_app(online_services))
    r = client.post("/easel/v1/models/install", json={"source": f"{host.base}/files/7"})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/easel/v1/models/install/{r.json()['id']}"
    done = wait_install(client, r.json()["id"])
    assert done["state"] == "done", done
    assert done["result"]["type"] == "lora" and done["progress"] == 1.0
    assert done["result"]["path"] == "models/Lora/api-lora.safetensors"  # the server's folders are not shown
    assert (data_dir / "models/Lora/api-lora.safetensors").is_file()
    assert "api-lora" in [f.name for f in online_services.networks.loras.list()]  # listed without a restart

    listed = client.get("/easel/v1/models", params={"hashes": True}).json()
    row = next(m for m in listed if m["name"] == "api-lora.safetensors")
    assert row["type"] == "lora" and row["size"] > 0 and len(row["short_hash"]) == 10

    r = client.delete("/easel/v1/models/lora/api-lora.safetensors")
    assert r.status_code == 200 and r.json()["deleted"]
    assert not (data_dir / "models/Lora/api-lora.safetensors").exists()
    assert "api-lora" not in [f.name for f in online_services.networks.loras.list()]


def test_downloads_off_is_a_400_saying_how(data_dir):
    services = make_services(data_dir, allow_downloads=False)
    try:
        r = TestClient(create_app(services)).post("/easel/v1/models/install",
                                                   json={"source": "stabilityai/stable-diffusion-xl-base-1.0"})
        assert r.status_code == 400 and "--allow-downloads" in r.json()["detail"]
    finally:
        services.close()


def test_refusals(online_services, tmp_path):
    client = TestClient(create_app(online_services))
    local = tmp_path / "x.safetensors"
    local.write_bytes(lora_bytes())
    r = client.post("/easel/v1/models/install", json={"source": str(local)})
    assert r.status_code == 400 and "--allow-server-paths" in r.json()["detail"]
    r = client.post("/easel/v1/models/install", json={"source": "o/n", "dest": "/etc"})
    assert r.status_code == 422  # a client never names a destination
    r = client.post("/easel/v1/models/install", json={"source": "o/n", "sha256": "abc"})
    assert r.status_code == 422
    assert client.get("/easel/v1/models/install/nope").status_code == 404
    assert client.delete("/easel/v1/models/install/nope").status_code == 404
    r = client.delete("/easel/v1/models/checkpoint/../../config.json")
    assert r.status_code in (400, 404)
    assert client.delete("/easel/v1/models/nonsense/x.safetensors").status_code == 400


def test_installs_need_the_api_credentials(online_services, host):
    client = TestClient(create_app(online_services, api_auth=[("u", "p")]))
    assert client.post("/easel/v1/models/install", json={"source": f"{host.base}/files/7"}).status_code == 401
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    r = client.post("/easel/v1/models/install", json={"source": f"{host.base}/files/7"}, headers=auth)
    assert r.status_code == 202


def test_clients_cannot_install_from_the_servers_network(data_dir, host):
    services = make_services(data_dir)
    try:
        r = TestClient(create_app(services)).post("/easel/v1/models/install", json={"source": f"{host.base}/files/7"})
        assert r.status_code == 400 and "private network" in r.json()["detail"]
    finally:
        services.close()


def test_start_up_downloads_nothing(data_dir, host, monkeypatch):
    """Even with --allow-downloads and the hub at a local host, building the services (start-up) and
    listing the models makes no request."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", host.base)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    services = make_services(data_dir)
    try:
        assert TestClient(create_app(services)).get("/easel/v1/models").status_code == 200
        assert host.seen == []
        import httpx

        httpx.get(f"{host.base}/files/7")
        assert host.seen == ["GET /files/7"]  # the host does record requests
    finally:
        services.close()


def test_a_second_install_of_the_same_source_is_a_409(online_services, host, data_dir):
    host.stall.add("7")  # the first install is caught mid-file
    client = TestClient(create_app(online_services))
    try:
        first = client.post("/easel/v1/models/install", json={"source": f"{host.base}/files/7"})
        assert first.status_code == 202, first.text
        deadline = time.monotonic() + 30
        while host.sent["7"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        again = client.post("/easel/v1/models/install", json={"source": f"{host.base}/files/7"})
        assert again.status_code == 409, again.text
        assert again.json()["error"] == "AlreadyInstalling" and first.json()["id"] in again.json()["detail"]
    finally:
        host.release.set()
    done = wait_install(client, first.json()["id"])
    assert done["state"] == "done", done
    assert (data_dir / "models/Lora/api-lora.safetensors").read_bytes() == host.files["7"][1]
