"""The /controlnet routes (sd-webui-controlnet's API) through FastAPI's TestClient."""

from __future__ import annotations

import base64
import io
import threading
import time

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bundled.shapes import Scene, render
from modules.api import create_app
from modules.config import load_settings
from modules.controlnet.models import legacy_model_hash
from modules.images import encode_image_base64
from modules.services import build_services
from tests.tiny_controlnet import write_controlnet

STAR = Scene("star", "yellow", "green", "large", "right", 0.73, 0.5)


def b64_to_array(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_models_dir):
    import shutil

    root = tmp_path_factory.mktemp("cn-api")
    shutil.copytree(tiny_models_dir, root / "models" / "Stable-diffusion")
    path = write_controlnet(root / "models" / "ControlNet", "control_tiny_canny")
    services = build_services(load_settings(root, {"show_progress_every_n_steps": 0}))
    with TestClient(create_app(services)) as client:
        yield services, client, path
    services.close()


def detect(client: TestClient, **body) -> dict:
    r = client.post("/controlnet/detect", json=body)
    return {"status": r.status_code, **r.json()}


def test_version_settings_and_model_list(api):
    services, client, path = api
    assert client.get("/controlnet/version").json() == {"version": 2}
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}
    title = f"control_tiny_canny [{legacy_model_hash(path)}]"
    assert client.get("/controlnet/model_list").json() == {"model_list": [title]}
    second = write_controlnet(path.parent, "control_tiny_depth", seed=1, yaml=False)
    try:
        listed = client.get("/controlnet/model_list", params={"update": "true"}).json()["model_list"]
        assert listed == [title, f"control_tiny_depth [{legacy_model_hash(second)}]"]  # no restart needed
    finally:
        second.unlink()


def test_module_list_with_details_and_aliases(api):
    client = api[1]
    body = client.get("/controlnet/module_list").json()
    assert body["module_list"][:3] == ["none", "canny", "invert"]
    assert body["module_detail"]["canny"]["sliders"][1] == {"name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255}
    aliased = client.get("/controlnet/module_list", params={"alias_names": "true"}).json()
    assert "invert (from white bg & black line)" in aliased["module_list"] and "depth_midas" in aliased["module_list"]
    assert set(aliased["module_detail"]) == set(aliased["module_list"])


def test_detect_canny_returns_opencvs_edges_for_each_image(api):
    client = api[1]
    star = render(STAR)
    plain = Image.new("RGB", (64, 64), (90, 90, 90))
    images = [encode_image_base64(star), encode_image_base64(plain)]
    body = detect(client, controlnet_module="canny", controlnet_input_images=images, controlnet_processor_res=64,
                  controlnet_threshold_a=60, controlnet_threshold_b=150)
    assert body["status"] == 200 and body["info"] == "Success" and len(body["images"]) == 2
    first = b64_to_array(body["images"][0])
    assert np.array_equal(first[:, :, 0], cv2.Canny(np.asarray(star), 60, 150)) and first.any()
    assert not b64_to_array(body["images"][1]).any()  # a flat image has no edges


def test_detect_runs_as_a_queued_job(tiny_models_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_models_dir, tmp_path / "models" / "Stable-diffusion")
    services = build_services(load_settings(tmp_path, {"show_progress_every_n_steps": 0}), start=False)
    try:
        with TestClient(create_app(services)) as client:
            answer: dict = {}
            image = encode_image_base64(render(STAR))
            thread = threading.Thread(target=lambda: answer.update(detect(
                client, controlnet_module="invert", controlnet_input_images=[image], controlnet_processor_res=32)))
            thread.start()
            deadline = time.monotonic() + 30
            while not services.queue.pending() and time.monotonic() < deadline:
                time.sleep(0.02)
            [job] = services.queue.pending()
            assert job.kind == "controlnet_detect" and job.request.module == "invert"
            services.queue.start()
            thread.join(30)
            assert answer["status"] == 200
            assert b64_to_array(answer["images"][0]).shape == (32, 32, 3)
    finally:
        services.close()


@pytest.mark.parametrize("body, loc, text", [
    ({"controlnet_module": "sobel"}, ["body", "controlnet_module"], "unknown preprocessor 'sobel'"),
    ({"controlnet_module": "canny", "controlnet_input_images": []}, ["body", "controlnet_input_images"], "no image given"),
    ({"controlnet_module": "canny", "controlnet_threshold_a": 300}, ["body", "controlnet_threshold_a"], "outside canny's"),
    ({"controlnet_module": "canny", "controlnet_processor_res": 9000}, ["body", "controlnet_processor_res"], "outside 1..4096"),
])
def test_bad_fields_are_422_naming_the_field(api, body, loc, text):
    client = api[1]
    body = {"controlnet_input_images": [encode_image_base64(render(STAR))], **body}
    r = client.post("/controlnet/detect", json=body)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == loc and text in error["msg"]


def test_bad_base64_names_the_image(api):
    client = api[1]
    images = [encode_image_base64(render(STAR)), "bm90IGFuIGltYWdl"]  # the second is base64 of plain text
    r = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": images})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "controlnet_input_images", 1]


def test_empty_scribble_and_missing_annotator_are_400_with_the_reason(api):
    client = api[1]
    blank = encode_image_base64(Image.new("RGB", (64, 64), "white"))
    body = detect(client, controlnet_module="scribble", controlnet_input_images=[blank])
    assert body["status"] == 400 and "the scribble is empty: draw something" in body["detail"]
    body = detect(client, controlnet_module="softedge_hed", controlnet_input_images=[blank])
    assert body["status"] == 400 and "ControlNet/annotators/ControlNetHED.pth" in body["detail"]


def test_controlnet_routes_are_behind_the_api_guard(api):
    services = api[0]
    with TestClient(create_app(services, api_auth=[("user", "secret")])) as client:
        assert client.get("/controlnet/model_list").status_code == 401
        assert client.post("/controlnet/detect", json={}).status_code == 401
        assert client.get("/controlnet/version", auth=("user", "secret")).json() == {"version": 2}


def test_module_list_lists_the_extensions_modules_and_those_easel_cannot_run_say_so(api):
    client = api[1]
    body = client.get("/controlnet/module_list").json()
    for name in ("inpaint_only", "reference_only", "depth_leres", "ip-adapter_clip_sd15", "tile_resample"):
        assert name in body["module_list"] and body["module_detail"][name]["sliders"]
    assert body["module_list"].index("canny") < body["module_list"].index("depth_leres")  # Easel's own first
    aliased = client.get("/controlnet/module_list", params={"alias_names": "true"}).json()["module_list"]
    assert "inpaint_global_harmonious" in aliased and "seg_ofade20k" in aliased and "t2ia_color_grid" in aliased
    r = client.post("/controlnet/detect", json={"controlnet_module": "inpaint_only",
                                                "controlnet_input_images": [encode_image_base64(render(STAR))]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "controlnet_module"]
    assert "not available in Easel" in r.json()["detail"][0]["msg"]
