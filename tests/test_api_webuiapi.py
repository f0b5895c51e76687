"""A real server on a loopback port, driven by the PyPI client ``webuiapi`` (as A1111 users do)."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image

from modules.api import create_app
from modules.config import load_settings
from modules.services import build_services
from tests.served import served

webuiapi = pytest.importorskip("webuiapi")
uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture
def server(data_dir):
    """(services, webuiapi client) for a uvicorn server on a free 127.0.0.1 port, in a thread."""
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 1}))
    with served(create_app(services)) as port:
        yield services, webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=2)
    services.close()


def test_webuiapi_client_end_to_end(server):
    services, api = server
    # txt2img, with webuiapi's own payload (hires fields, scheduler "automatic", seed_resize 0, ...)
    r = api.txt2img(prompt="a red apple", negative_prompt="blurry", seed=5, width=32, height=32, steps=2)
    assert len(r.images) == 1 and r.image.size == (32, 32)
    assert r.info["all_seeds"] == [5] and r.info["sd_model_name"] == "tiny-a"
    assert r.parameters["width"] == 32

    # png-info reads the parameters back from the returned PNG
    info = api.png_info(r.image)
    assert info.info.startswith("a red apple\nNegative prompt: blurry\n")
    assert info.parameters["Seed"] == "5" and info.parameters["Steps"] == "2"

    # img2img with a mask (inpainting); webuiapi sends data: URLs
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    init = Image.new("RGB", (32, 32), (20, 200, 20))
    r = api.img2img(images=[init], mask_image=mask, prompt="grass", seed=3, width=32, height=32, steps=2,
                    denoising_strength=0.6, inpaint_full_res=False)
    assert r.image.size == (32, 32)
    assert "Denoising strength: 0.6" in r.info["infotexts"][0]

    # extra-single-image
    r = api.extra_single_image(init.resize((16, 16)), upscaler_1="Lanczos", upscaling_resize=2)
    assert r.image.size == (32, 32)

    # list methods
    assert "Euler a" in api.util_get_sampler_names()
    assert "Karras" in [s["label"] for s in api.get_schedulers()]
    b_title = next(t for t in api.util_get_model_names() if t.startswith("tiny-b.safetensors ["))
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert api.get_loras() == [] and api.get_sd_vae() == []
    assert [u["name"] for u in api.get_upscalers()][:2] == ["None", "Lanczos"]
    assert api.get_memory()["ram"]["total"] > 0
    assert api.get_cmd_flags()["api"] is True
    assert api.get_progress()["state"]["job_count"] == 0
    api.refresh_checkpoints()

    # model switch through options, as util_set_model does it
    api.util_set_model(b_title, find_closest=False)
    assert api.util_get_current_model() == b_title
    r = api.txt2img(prompt="x", seed=1, width=32, height=32, steps=1)
    assert r.info["sd_model_name"] == "tiny-b"


def test_webuiapi_progress_and_interrupt(server):
    services, api = server
    answer = {}
    thread = threading.Thread(target=lambda: answer.setdefault("r", api.txt2img(prompt="x", width=32, height=32, steps=150)))
    thread.start()
    deadline = time.monotonic() + 60
    progress = api.get_progress()
    while progress["state"]["sampling_step"] < 2:
        assert time.monotonic() < deadline, "no progress within 60 s"
        time.sleep(0.05)
        progress = api.get_progress()
    assert progress["state"]["job"] == "txt2img" and 0 < progress["progress"] < 1
    assert progress["current_image"]  # show_progress_every_n_steps=1
    api.interrupt()
    thread.join(60)
    assert not thread.is_alive()
    assert len(answer["r"].images) == 1 and answer["r"].info["interrupted"] is True  # the partial image
