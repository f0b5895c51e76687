"""Interrupt and Skip keep what was made (A1111): the finished images and the partial one, decoded from
where sampling stopped, with their infotexts; over /sdapi/v1 and /easel/v1, on tiny checkpoints.

The interrupt or skip is pressed from inside the per-step hook at a chosen step, so the tests are exact:
"during step k of iteration n" is not a race with the worker.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api import create_app
from modules.config import load_settings
from modules.infotext import parse_infotext
from modules.processing import common
from modules.services import build_services
from tests.test_api import make_data_dir

STEPS = 6
BODY = {"prompt": "a red apple", "negative_prompt": "blurry", "steps": STEPS, "width": 32, "height": 32, "seed": 7,
        "n_iter": 2, "sampler_name": "Euler"}


def pixels(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_models_dir):
    data = make_data_dir(tmp_path_factory.mktemp("api-interrupt"), tiny_models_dir)
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    with TestClient(create_app(services)) as client:
        yield services, client
    services.close()


@pytest.fixture(scope="module")
def reference(api) -> dict:
    """The same request, not interrupted: two finished images."""
    r = api[1].post("/sdapi/v1/txt2img", json=BODY)
    assert r.status_code == 200
    return r.json()


class Pressed(list):
    """The steps the hook saw after the press (none: sampling stopped right there), and ``estimate``:
    the denoised latents of the step it was pressed in, decoded (what the partial image must be)."""

    estimate: np.ndarray | None = None


def press_at(monkeypatch, services, action: str, at_step: int) -> Pressed:
    """Press Interrupt (or Skip) through the API's queue once the request has done ``at_step`` steps in all."""
    real = common.step_hook
    after = Pressed()

    def hook(ctx, pipe, done_before, steps, total, strength=1.0):
        inner = real(ctx, pipe, done_before, steps, total, strength)

        def on_step(index, calls, latents):
            done = done_before + index + 1
            if done > at_step:
                after.append(done)
            if done == at_step:
                getattr(services.queue, action)()
                image = common.decode_latents(ctx.model.pipe, latents)[0]
                after.estimate = np.asarray(image.convert("RGB"), dtype=np.int16)
            inner(index, calls, latents)

        return on_step

    monkeypatch.setattr(common, "step_hook", hook)
    return after


def test_interrupt_in_the_second_iteration_returns_the_finished_and_the_partial_image(api, reference, monkeypatch):
    services, client = api
    after = press_at(monkeypatch, services, "interrupt", STEPS + 2)  # step 2 of iteration 2
    r = client.post("/sdapi/v1/txt2img", json=BODY)
    assert r.status_code == 200
    body = r.json()
    info = json.loads(body["info"])
    assert after == []  # sampling stopped after the step it was pressed in
    assert len(body["images"]) == 2 and info["interrupted"] is True
    assert info["all_seeds"] == [7, 8] and len(info["infotexts"]) == 2
    for text, seed in zip(info["infotexts"], (7, 8), strict=True):
        params = parse_infotext(text)
        assert params["Seed"] == str(seed) and params["Steps"] == str(STEPS) and params["Prompt"] == "a red apple"
    first, partial = (pixels(image) for image in body["images"])
    finished = [pixels(image) for image in reference["images"]]
    assert np.array_equal(first, finished[0])  # the first iteration was finished
    assert np.array_equal(partial, after.estimate)  # decoded from step 2's estimate of the clean latents
    assert not np.array_equal(partial, finished[1])  # ...not the finished image
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    # the next request is not interrupted: the flag belonged to that job
    monkeypatch.undo()
    again = client.post("/sdapi/v1/txt2img", json=BODY).json()
    assert json.loads(again["info"])["interrupted"] is False
    assert np.array_equal(pixels(again["images"][1]), finished[1])


def test_skip_keeps_the_partial_image_and_goes_on_with_the_next_iteration(api, reference, monkeypatch):
    services, client = api
    after = press_at(monkeypatch, services, "skip", 3)  # step 3 of iteration 1
    r = client.post("/sdapi/v1/txt2img", json=BODY)
    assert r.status_code == 200
    info = json.loads(r.json()["info"])
    assert after == list(range(STEPS + 1, 2 * STEPS + 1))  # iteration 2 ran all its steps
    assert info["interrupted"] is False and info["skipped_images"] == 1
    assert info["all_seeds"] == [7, 8] and len(info["infotexts"]) == 2
    partial, second = (pixels(image) for image in r.json()["images"])
    finished = [pixels(image) for image in reference["images"]]
    assert np.array_equal(partial, after.estimate) and not np.array_equal(partial, finished[0])
    assert np.array_equal(second, finished[1])


def test_interrupted_img2img_keeps_its_partial_image(api, monkeypatch):
    services, client = api
    init = base64.b64encode(_png((40, 160, 40))).decode()
    press_at(monkeypatch, services, "interrupt", 1)
    body = {**BODY, "init_images": [init], "denoising_strength": 1.0}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 1 and info["interrupted"] is True and info["all_seeds"] == [7]
    assert parse_infotext(info["infotexts"][0])["Denoising strength"] == "1"


def test_deleting_a_running_job_interrupts_it_and_its_status_shows_what_it_made(api, monkeypatch):
    services, client = api
    real = common.step_hook

    def hook(ctx, pipe, done_before, steps, total, strength=1.0):
        inner = real(ctx, pipe, done_before, steps, total, strength)

        def on_step(index, calls, latents):
            if done_before + index + 1 == 2:
                job = services.queue.current()
                answer = client.delete(f"/easel/v1/jobs/{job.id}").json()
                assert answer == {"id": job.id, "state": "running", "cancelled": True}
            inner(index, calls, latents)

        return on_step

    monkeypatch.setattr(common, "step_hook", hook)
    job = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {**BODY, "save_images": False}}).json()
    from tests.test_api import wait_job

    status = wait_job(client, job["id"])
    assert status["state"] == "done" and status["interrupted"] is True
    assert len(status["result"]["images"]) == 1 and status["result"]["info"]["interrupted"] is True
    assert status["result"]["info"]["all_seeds"] == [7]


def test_cancelling_a_queued_job_discards_it(data_dir):
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0}), start=False)
    try:
        with TestClient(create_app(services)) as client:
            job = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": BODY}).json()
            assert client.delete(f"/easel/v1/jobs/{job['id']}").json()["state"] == "cancelled"
            status = client.get(f"/easel/v1/jobs/{job['id']}").json()
            assert status["state"] == "cancelled" and status["interrupted"] is False and status["result"] is None
    finally:
        services.close()


def _png(color) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(out, format="PNG")
    return out.getvalue()
