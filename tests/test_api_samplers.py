"""Every one of A1111's 240 sampler x schedule-type pairs over ``/sdapi/v1/txt2img``: each answers
200, names what ran in its infotext, and the same request rebuilt from that infotext (A1111's
``infotext`` field) draws the same image, bit for bit. Also A1111's leniency for unknown names."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules import samplers
from modules.api import create_app
from modules.config import load_settings
from modules.services import build_services
from tests.test_api import make_data_dir


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_models_dir):
    data = make_data_dir(tmp_path_factory.mktemp("api-samplers"), tiny_models_dir)
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    with TestClient(create_app(services)) as client:
        yield client
    services.close()


def txt2img(client: TestClient, **fields) -> dict:
    body = {"prompt": "a red circle", "negative_prompt": "blurry", "seed": 5, "steps": 3, "cfg_scale": 5,
            "width": 32, "height": 32, **fields}
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def pixels(answer: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))), dtype=np.int16)


@pytest.mark.parametrize("sampler", samplers.SAMPLER_NAMES)
def test_every_schedule_type_with_this_sampler_answers_and_reproduces_from_its_infotext(client, sampler):
    for schedule in samplers.SCHEDULE_TYPES:
        answer = txt2img(client, sampler_name=sampler, scheduler=schedule)
        info = json.loads(answer["info"])
        ran = samplers.effective_schedule_type(sampler, schedule)
        assert (info["sampler_name"], info["infotexts"][0].count(f"Schedule type: {ran},")) == (sampler, 1), schedule
        assert info["warnings"] == []
        again = client.post("/sdapi/v1/txt2img", json={"infotext": info["infotexts"][0]}).json()
        assert json.loads(again["info"])["infotexts"][0] == info["infotexts"][0]
        assert np.array_equal(pixels(again), pixels(answer)), f"{sampler} / {schedule} did not reproduce"


@pytest.mark.parametrize(("sampler", "scheduler", "ran", "warned"), [
    ("Euler a", "Karras", ("Euler a", "Karras"), None),  # Open WebUI
    ("DDIM", "normal", ("DDIM", "Normal"), None),  # SillyTavern's defaults
    ("k_euler_a", "karras", ("Euler a", "Karras"), None),
    ("Euler z", None, ("DPM++ 2M", "Karras"), "sampler_name"),  # unknown: the default sampler
    ("Euler", "Karas", ("Euler", "Uniform"), "scheduler"),  # unknown schedule: Automatic
])
def test_names_are_lenient_as_a1111(client, sampler, scheduler, ran, warned):
    info = json.loads(txt2img(client, sampler_name=sampler, scheduler=scheduler)["info"])
    assert info["infotexts"][0].count(f"Sampler: {ran[0]}, Schedule type: {ran[1]},") == 1
    if warned:
        assert len(info["warnings"]) == 1 and info["warnings"][0].startswith(f"{warned}:")
    else:
        assert info["warnings"] == []


def test_sampler_parameters_reach_the_run_and_the_infotext(client):
    plain = txt2img(client, sampler_name="Euler a")
    calm = txt2img(client, sampler_name="Euler a", eta=0.0)
    assert "Eta: 0," in json.loads(calm["info"])["infotexts"][0]
    assert np.abs(pixels(plain) - pixels(calm)).max() > 0
    churned = txt2img(client, sampler_name="Euler", s_churn=1.0)
    assert "Sigma churn: 1," in json.loads(churned["info"])["infotexts"][0]
    bad = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "eta": -1})
    assert bad.status_code == 422 and "eta" in bad.text
