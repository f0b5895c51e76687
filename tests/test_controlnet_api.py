"""ControlNet units over the A1111 API: ``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`` on
/sdapi/v1/txt2img and img2img (TestClient), the job API's ``controlnet_units``, and the PyPI client
``webuiapi``'s ControlNetUnit against a real uvicorn server."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api import create_app
from modules.config import load_settings
from modules.images import encode_image_base64
from modules.services import build_services
from tests.served import served
from tests.test_api import T2I, b64_to_image, png_b64, wait_job
from tests.test_controlnet_apply import square_map, tiny_controlnets_dir  # noqa: F401 - fixture

MAP = encode_image_base64(square_map())
UNIT = {"enabled": True, "module": "none", "model": "tiny-cn", "weight": 1.0, "image": MAP, "resize_mode": "Crop and Resize",
        "processor_res": 64, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced"}
ARGS_LOC = ["body", "alwayson_scripts", "controlnet", "args"]


def with_units(*units, key: str = "controlnet", **fields) -> dict:
    return {**T2I, **fields, "alwayson_scripts": {key: {"args": list(units)}}}


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_models_dir, tiny_controlnets_dir):  # noqa: F811
    data = tmp_path_factory.mktemp("cn-api")
    shutil.copytree(tiny_models_dir, data / "models" / "Stable-diffusion")
    shutil.copytree(tiny_controlnets_dir, data / "models" / "ControlNet")
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    with TestClient(create_app(services)) as client:
        yield services, client
    services.close()


@pytest.fixture
def client(api) -> TestClient:
    return api[1]


def info_of(response) -> dict:
    assert response.status_code == 200, response.text
    return json.loads(response.json()["info"])


def first_image(response) -> np.ndarray:
    return np.asarray(b64_to_image(response.json()["images"][0]).convert("RGB"), dtype=np.int16)


def test_txt2img_with_a_controlnet_unit(client):
    r = client.post("/sdapi/v1/txt2img", json=with_units(UNIT))
    text = info_of(r)["infotexts"][0]
    assert 'ControlNet 0: "Module: none, Model: tiny-cn, Weight: 1.0, Resize Mode: Crop and Resize' in text
    args = r.json()["parameters"]["alwayson_scripts"]["controlnet"]["args"]
    assert args[0]["image"] is None and args[0]["model"] == "tiny-cn"  # the input image is not echoed back
    plain = client.post("/sdapi/v1/txt2img", json=T2I)
    assert np.abs(first_image(r) - first_image(plain)).mean() > 1
    # the PNG carries it, and png-info reads it back
    parsed = client.post("/sdapi/v1/png-info", json={"image": r.json()["images"][0]}).json()["parameters"]
    assert parsed["ControlNet 0"].startswith("Module: none, Model: tiny-cn, Weight: 1.0")


def test_weight_zero_over_the_api_equals_no_unit(client):
    plain = client.post("/sdapi/v1/txt2img", json=T2I)
    zero = client.post("/sdapi/v1/txt2img", json=with_units({**UNIT, "weight": 0}))
    assert np.array_equal(first_image(plain), first_image(zero))


@pytest.mark.parametrize("image", [
    MAP,
    "data:image/png;base64," + MAP,
    {"image": MAP, "mask": None},
    {"image": MAP, "mask": encode_image_base64(Image.new("L", (32, 32), 0))},  # an empty canvas: the image is used
])
def test_unit_image_forms(client, image):
    reference = first_image(client.post("/sdapi/v1/txt2img", json=with_units(UNIT)))
    r = client.post("/sdapi/v1/txt2img", json=with_units({**UNIT, "image": image}))
    assert np.array_equal(first_image(r), reference)


def test_legacy_input_image_and_key_case(client):
    reference = first_image(client.post("/sdapi/v1/txt2img", json=with_units(UNIT)))
    legacy = {k: v for k, v in UNIT.items() if k != "image"} | {"input_image": MAP}
    assert np.array_equal(first_image(client.post("/sdapi/v1/txt2img", json=with_units(legacy))), reference)
    assert np.array_equal(first_image(client.post("/sdapi/v1/txt2img", json=with_units(UNIT, key="ControlNet"))), reference)
    # the extension's other old keys (guidance = guidance_end, lowvram = low_vram) and nulls (= defaults)
    old_keys = {**UNIT, "guidance": 0.5, "lowvram": True, "threshold_a": None, "pixel_perfect": None}
    r = client.post("/sdapi/v1/txt2img", json=with_units(old_keys))
    assert r.status_code == 200, r.text
    same = client.post("/sdapi/v1/txt2img", json=with_units({**UNIT, "guidance_end": 0.5, "low_vram": True}))
    assert np.array_equal(first_image(r), first_image(same))
    assert not np.array_equal(first_image(r), reference)


def test_a_drawn_mask_is_the_map(client):
    """A scribble drawn on the extension's canvas comes as the mask: it is the map, preprocessor none."""
    drawn = square_map().convert("L")
    r = client.post("/sdapi/v1/txt2img", json=with_units(
        {**UNIT, "module": "canny", "image": {"image": png_b64((10, 10, 10)), "mask": encode_image_base64(drawn)}}))
    assert "ControlNet 0: \"Module: none," in info_of(r)["infotexts"][0]
    reference = client.post("/sdapi/v1/txt2img", json=with_units(UNIT))
    assert np.array_equal(first_image(r), first_image(reference))


def test_img2img_inpaint_and_outpaint_with_units(client):
    init = png_b64((30, 160, 60))
    unit = {**UNIT, "image": ""}  # as webuiapi sends "no image": the init image
    r = client.post("/sdapi/v1/img2img", json={**with_units(unit), "init_images": [init], "denoising_strength": 0.8})
    assert "ControlNet 0:" in info_of(r)["infotexts"][0]
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    r = client.post("/sdapi/v1/img2img", json={**with_units(UNIT), "init_images": [init], "mask": encode_image_base64(mask),
                                               "inpaint_full_res": False, "mask_blur": 0})
    assert "ControlNet 0:" in info_of(r)["infotexts"][0] and "Mask blur: 0" in info_of(r)["infotexts"][0]
    r = client.post("/sdapi/v1/img2img", json={**with_units(unit), "init_images": [init], "script_name": "outpainting mk2",
                                               "script_args": [None, 16, 4, ["right"]]})
    info = info_of(r)
    assert "ControlNet 0:" in info["infotexts"][0] and (info["width"], info["height"]) == (48, 32)


def test_job_api_takes_controlnet_units(client):
    r = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {
        "prompt": "x", "steps": 2, "seed": 1, "controlnet_units": [{"model": "tiny-cn", "image": MAP}]}})
    assert r.status_code == 202 or r.status_code == 200, r.text
    done = wait_job(client, r.json()["id"])
    assert done["state"] == "done", done
    assert "ControlNet 0:" in done["result"]["info"]["infotexts"][0]
    r = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {"controlnet_units": [{"image": "%%"}]}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "request", "controlnet_units", 0, "image"]


@pytest.mark.parametrize("units, loc, message", [
    ([["tiny-cn", "none", 1.0]], [0, "enabled"], "boolean"),  # positional: enabled comes first
    ([[]], [0], "field order"),
    ([[True, "none", "tiny-cn", 1.0, MAP] + [None] * 14], [0], "at most 18"),
    ([{**UNIT, "module": "reference_only"}], [0, "module"], "not available in Easel"),
    ([{**UNIT, "module": "no-such-module"}], [0, "module"], "unknown preprocessor"),
    ([{**UNIT, "weight": 5}], [0, "weight"], "less than or equal to 2"),
    ([{**UNIT, "guidance_start": 0.9, "guidance_end": 0.1}], [0, "guidance_end"], "guidance_start"),
    ([{**UNIT, "control_mode": "Loudest"}], [0, "control_mode"], "Balanced"),
    ([{**UNIT, "resize_mode": 7}], [0, "resize_mode"], "Just Resize"),
    ([{**UNIT, "image": "@@not base64@@"}], [0, "image"], ""),
    ([{**UNIT, "image": {"image": 5}}], [0, "image", "image"], "base64"),
    ([UNIT] * 4, [], "at most 3"),
])
def test_bad_units_are_422_naming_the_field(client, units, loc, message):
    r = client.post("/sdapi/v1/txt2img", json=with_units(*units))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ARGS_LOC + loc and message in detail["msg"]


@pytest.mark.parametrize("scripts, loc", [
    ({"controlnet": {}}, ["body", "alwayson_scripts", "controlnet"]),
    ({"controlnet": {"args": "x"}}, ["body", "alwayson_scripts", "controlnet"]),
    ({"adetailer": {"args": []}}, ["body", "alwayson_scripts"]),
])
def test_bad_alwayson_scripts(client, scripts, loc):
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "alwayson_scripts": scripts})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc


def test_units_in_two_places_is_a_422(client):
    r = client.post("/sdapi/v1/txt2img", json={**with_units(UNIT), "controlnet_units": [UNIT]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "controlnet_units"]


@pytest.mark.parametrize("unit, message", [
    ({**UNIT, "model": "nope"}, "ControlNet unit 0: model: 'nope' not found"),
    ({**UNIT, "model": "tiny-sd2-cn"}, "is an SD 2.x ControlNet, but the checkpoint is SD 1.x"),
    ({**UNIT, "image": None}, "ControlNet unit 0: image: no control image"),
])
def test_units_that_cannot_run_are_400(client, unit, message):
    r = client.post("/sdapi/v1/txt2img", json=with_units(unit))
    assert r.status_code == 400 and message in r.text


def test_empty_args_and_disabled_units_change_nothing(client):
    plain = first_image(client.post("/sdapi/v1/txt2img", json=T2I))
    assert np.array_equal(first_image(client.post("/sdapi/v1/txt2img", json=with_units())), plain)
    off = client.post("/sdapi/v1/txt2img", json=with_units({**UNIT, "enabled": False}))
    assert np.array_equal(first_image(off), plain) and "ControlNet" not in info_of(off)["infotexts"][0]


# ---------------------------------------------------------------------------------------------
# the webuiapi client


webuiapi = pytest.importorskip("webuiapi")
uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture
def server(api):
    with served(create_app(api[0])) as port:
        yield webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=2)


def test_webuiapi_controlnet_unit(server):
    shape = square_map((64, 64), (16, 16, 48, 48))
    unit = webuiapi.ControlNetUnit(image=shape, module="canny", model="tiny-cn", weight=0.9, processor_res=64,
                                   threshold_a=100, threshold_b=200, control_mode=2, resize_mode="Just Resize")
    r = server.txt2img(prompt="a square", seed=5, width=32, height=32, steps=2, controlnet_units=[unit])
    assert r.image.size == (32, 32)
    text = r.info["infotexts"][0]
    assert ('ControlNet 0: "Module: canny, Model: tiny-cn, Weight: 0.9, Resize Mode: Just Resize, Low Vram: False,'
            ' Processor Res: 64, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0,'
            ' Pixel Perfect: False, Control Mode: ControlNet is more important"') in text
    assert server.png_info(r.image).parameters["ControlNet 0"].startswith("Module: canny")
    # img2img: a unit without an image uses the init image
    r = server.img2img(images=[shape.resize((32, 32))], prompt="a square", seed=5, width=32, height=32, steps=2,
                       denoising_strength=0.7, controlnet_units=[webuiapi.ControlNetUnit(module="none", model="tiny-cn")])
    assert "ControlNet 0: \"Module: none, Model: tiny-cn" in r.info["infotexts"][0]


def test_a_unit_without_enabled_is_off_as_the_extension_defaults_and_says_so(client):
    """sd-webui-controlnet's current ControlNetUnit defaults to disabled: a unit that leaves ``enabled`` out
    (or sends null) does not run; info.warnings names it."""
    plain = first_image(client.post("/sdapi/v1/txt2img", json=T2I))
    for unit in ({k: v for k, v in UNIT.items() if k != "enabled"}, {**UNIT, "enabled": None}):
        r = client.post("/sdapi/v1/txt2img", json=with_units(unit))
        info = info_of(r)
        assert "ControlNet 0:" not in info["infotexts"][0] and np.array_equal(first_image(r), plain)
        assert len(r.json()["images"]) == 1  # no detected map: the unit did not run
        assert any(w.startswith('alwayson_scripts.controlnet.args.0: no "enabled"') for w in info["warnings"])
    on = client.post("/sdapi/v1/txt2img", json=with_units(UNIT))
    assert "ControlNet 0:" in info_of(on)["infotexts"][0] and info_of(on)["warnings"] == []


def test_detected_maps_are_appended_to_images_unless_save_detected_map_is_false(client):
    canny = {**UNIT, "module": "canny", "threshold_a": 100, "threshold_b": 200, "resize_mode": "Just Resize"}
    r = client.post("/sdapi/v1/txt2img", json=with_units(canny, UNIT, batch_size=2))
    info = info_of(r)
    images = [b64_to_image(text) for text in r.json()["images"]]
    assert len(images) == 2 + 2 and len(info["infotexts"]) == 2  # 2 generated, then one map per unit
    assert [im.size for im in images] == [(32, 32)] * 4
    square = np.asarray(b64_to_image(MAP).convert("RGB"))
    assert np.array_equal(np.asarray(images[3].convert("RGB")), square)  # module none: the map as sent
    from modules.controlnet.apply import fit_map

    detect = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [MAP],
                                                     "controlnet_processor_res": 64, "controlnet_threshold_a": 100,
                                                     "controlnet_threshold_b": 200}).json()
    fitted = fit_map(b64_to_image(detect["images"][0]).convert("RGB"), 32, 32, 0)  # canny's map at the output size
    assert np.array_equal(np.asarray(images[2].convert("RGB")), np.asarray(fitted)) and np.asarray(fitted).max() > 0
    kept = client.post("/sdapi/v1/txt2img", json=with_units({**canny, "save_detected_map": False}, UNIT, batch_size=2))
    assert len(kept.json()["images"]) == 3
    assert np.array_equal(np.asarray(b64_to_image(kept.json()["images"][2]).convert("RGB")), square)
    nothing = client.post("/sdapi/v1/txt2img", json=with_units({**UNIT, "save_detected_map": False}))
    assert len(nothing.json()["images"]) == 1
    sent = client.post("/sdapi/v1/txt2img", json=with_units(UNIT, send_images=False))
    assert sent.json()["images"] == []


def test_units_as_positional_lists_in_the_extensions_field_order(client):
    reference = client.post("/sdapi/v1/txt2img", json=with_units(UNIT))
    positional = [True, "none", "tiny-cn", 1.0, MAP, "Crop and Resize", False, 64, -1, -1, 0.0, 1.0, False, "Balanced"]
    for body in (with_units(positional), with_units(*positional)):  # a list per unit, or one unit flattened
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert info_of(r)["infotexts"] == info_of(reference)["infotexts"]
        assert r.json()["images"] == reference.json()["images"]
    short = client.post("/sdapi/v1/txt2img", json=with_units([True, "none", "tiny-cn", 0.5, MAP]))
    assert "Weight: 0.5" in info_of(short)["infotexts"][0]  # the fields left out take their defaults
