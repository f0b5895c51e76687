"""Concurrency on a real uvicorn server: 50 mixed requests on two checkpoints with a model switch in
the middle all complete on the model they named; an interrupt stops only the running request."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from modules.api import create_app
from modules.config import load_settings
from modules.services import build_services
from tests.test_api import png_b64
from tests.test_api_guard import running_server

SMALL = {"prompt": "a cat", "steps": 1, "width": 16, "height": 16, "cfg_scale": 1.0}


@pytest.fixture
def server(data_dir):
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0, "max_queue": 200}))
    with running_server(create_app(services)) as port:
        yield services, f"http://127.0.0.1:{port}"
    services.close()


def test_fifty_mixed_requests_across_two_checkpoints(server):
    services, base = server
    init = png_b64(size=(16, 16))

    def call(i: int) -> tuple[int, str, httpx.Response]:
        model = "tiny-a" if i % 2 == 0 else "tiny-b"
        body = {**SMALL, "seed": i, "override_settings": {"sd_model_checkpoint": f"{model}.safetensors"}}
        route = "txt2img" if (i // 2) % 2 == 0 else "img2img"
        if route == "img2img":
            body["init_images"] = [init]
        with httpx.Client(timeout=120) as client:
            return i, model, client.post(f"{base}/sdapi/v1/{route}", json=body)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=12) as pool:
        first = [pool.submit(call, i) for i in range(25)]
        switch = httpx.post(f"{base}/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-b.safetensors"}, timeout=60)
        second = [pool.submit(call, i) for i in range(25, 50)]
        outcomes = [f.result() for f in first + second]
    assert switch.status_code == 200 and switch.headers["Easel-Model-Switch-Job"]
    assert len(outcomes) == 50
    for i, model, response in outcomes:
        assert response.status_code == 200, (i, response.text)
        info = json.loads(response.json()["info"])
        assert info["all_seeds"] == [i]
        assert len(response.json()["images"]) == 1
        assert f"Model: {model}," in info["infotexts"][0], (i, info["infotexts"][0])
        assert info["sd_model_name"] == model
    assert services.queue.job_count() == 0
    assert time.monotonic() - start < 60


def test_interrupt_stops_the_running_request_and_the_waiting_ones_complete(server):
    services, base = server
    answers: dict[str, httpx.Response] = {}

    def post(name: str, body: dict) -> None:
        with httpx.Client(timeout=120) as client:
            answers[name] = client.post(f"{base}/sdapi/v1/txt2img", json=body)

    long = threading.Thread(target=post, args=("long", {**SMALL, "steps": 150, "seed": 1}))
    long.start()
    deadline = time.monotonic() + 60
    while services.queue.current() is None or services.queue.current().progress.snapshot().step < 1:
        assert time.monotonic() < deadline, "the long request did not start"
        time.sleep(0.02)
    waiting = [threading.Thread(target=post, args=(f"w{i}", {**SMALL, "seed": 10 + i})) for i in range(3)]
    for t in waiting:
        t.start()
    while len(services.queue.pending()) < 3:
        assert time.monotonic() < deadline, "the waiting requests were not queued"
        time.sleep(0.02)
    assert httpx.post(f"{base}/sdapi/v1/interrupt").status_code == 200
    for t in [long, *waiting]:
        t.join(60)
    long_answer = answers["long"].json()
    assert len(long_answer["images"]) == 1 and json.loads(long_answer["info"])["interrupted"] is True  # the partial
    for i in range(3):
        r = answers[f"w{i}"]
        assert r.status_code == 200 and len(r.json()["images"]) == 1
        assert json.loads(r.json()["info"])["all_seeds"] == [10 + i]
