"""A1111 scripts over HTTP: GET /sdapi/v1/scripts, "outpainting mk2" on img2img, "x/y/z plot" on txt2img/img2img."""

from __future__ import annotations

import json

import pytest

from tests.test_api import T2I, b64_to_image, client, png_b64, shared  # noqa: F401 - fixtures

# A1111's x/y/z args: x_type, x_values, x_dropdown, y_type, y_values, y_dropdown, z_type, z_values, z_dropdown, ...
NOTHING_Z = [0, "", []]


def test_scripts_lists_what_runs(client):  # noqa: F811
    builtins = ["controlnet", "extra options", "refiner", "sampler", "seed"]
    assert client.get("/sdapi/v1/scripts").json() == {
        "txt2img": ["x/y/z plot", *builtins], "img2img": ["outpainting mk2", "x/y/z plot", *builtins, "soft inpainting"]}


@pytest.mark.parametrize(("route", "name"), [("txt2img", "outpainting mk2"), ("txt2img", "Loopback"),
                                             ("img2img", "prompt matrix")])
def test_unknown_script_is_422_listing_the_available_ones(client, route, name):  # noqa: F811
    body = {**T2I, "script_name": name, "init_images": [png_b64()]}
    r = client.post(f"/sdapi/v1/{route}", json=body)
    assert r.status_code == 422
    error = r.json()["detail"][0]
    assert error["loc"] == ["body", "script_name"] and name in error["msg"] and "'x/y/z plot'" in error["msg"]


def test_outpainting_mk2_extends_the_canvas_and_keeps_the_original(client):  # noqa: F811
    body = {**T2I, "init_images": [png_b64((250, 10, 10))], "denoising_strength": 1.0,
            "script_name": "Outpainting mk2", "script_args": [None, 16, 0, ["right", "down"], 1.0, 0.05]}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    image = b64_to_image(r.json()["images"][0]).convert("RGB")
    assert image.size == (48, 48)
    assert image.getpixel((4, 4)) == (250, 10, 10) and image.getpixel((28, 28)) == (250, 10, 10)
    info = json.loads(r.json()["info"])
    assert "Mask blur: 0" in info["infotexts"][0] and "Masked content: original" in info["infotexts"][0]


def test_outpainting_mk2_defaults_and_bad_args(client):  # noqa: F811
    base = {**T2I, "steps": 1, "init_images": [png_b64(size=(16, 16))], "script_name": "outpainting mk2"}
    r = client.post("/sdapi/v1/img2img", json={**base, "script_args": [None, 8]})  # the rest: A1111's defaults
    assert r.status_code == 200, r.text
    assert b64_to_image(r.json()["images"][0]).size == (32, 32)  # 8 px on all four sides
    r = client.post("/sdapi/v1/img2img", json={**base, "script_args": [None, 12]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "script_args", 1]
    r = client.post("/sdapi/v1/img2img", json={**base, "script_args": [None, 8, 4, ["sideways"]]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "script_args", 3]
    r = client.post("/sdapi/v1/img2img", json={**base, "script_args": [None, "x"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "script_args", 1]


def test_xyz_plot_on_txt2img_by_index_and_dropdown(client):  # noqa: F811
    # x: A1111 txt2img axis 11 = "Checkpoint name" (values from the dropdown); y: 4 = "Steps"
    args = [11, "", ["tiny-a.safetensors", "tiny-b.safetensors"], 4, "1, 2", [], *NOTHING_Z, True, False]
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "script_name": "X/Y/Z plot", "script_args": args})
    assert r.status_code == 200, r.text
    images = [b64_to_image(b) for b in r.json()["images"]]
    assert len(images) == 5  # the grid, then the four cells (row by row: y outer, x inner)
    assert images[0].width > 64 and images[0].height > 64
    assert all(im.size == (32, 32) for im in images[1:])
    info = json.loads(r.json()["info"])
    cells = info["infotexts"][1:]
    assert ["Model: tiny-a" in t for t in cells] == [True, False, True, False]
    assert ["Model: tiny-b" in t for t in cells] == [False, True, False, True]
    assert ["Steps: 1," in t for t in cells] == [True, True, False, False]
    assert info["all_seeds"] == [7] * 5 and info["index_of_first_image"] == 1


def test_xyz_plot_on_img2img_by_label(client):  # noqa: F811
    args = ["Denoising", "0.2, 0.6", [], "Nothing", "", [], *NOTHING_Z]
    r = client.post("/sdapi/v1/img2img", json={**T2I, "steps": 2, "init_images": [png_b64()],
                                                "script_name": "x/y/z plot", "script_args": args})
    assert r.status_code == 200, r.text
    texts = json.loads(r.json()["info"])["infotexts"]
    assert len(r.json()["images"]) == 3
    assert "Denoising strength: 0.2" in texts[1] and "Denoising strength: 0.6" in texts[2]


@pytest.mark.parametrize(
    ("args", "index", "words"),
    [([2, "1, 2", [], *[0, "", []], *NOTHING_Z], 0, "Var. seed"),  # an A1111 axis Easel lacks
     ([99, "1", []], 0, "axis index 99"),
     (["Warp factor", "1", []], 0, "Warp factor"),
     ([4, "1", [], 0, "", [], 6, "5, 7", []], 6, "no Z axis"),
     ([4, {"a": 1}, []], 1, "comma-separated")],
)
def test_xyz_plot_bad_axes_are_422_naming_the_arg(client, args, index, words):  # noqa: F811
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "script_name": "x/y/z plot", "script_args": args})
    assert r.status_code == 422, r.text
    error = r.json()["detail"][0]
    assert error["loc"] == ["body", "script_args", index] and words in error["msg"]


def test_xyz_plot_bad_values_and_limits_are_400(client):  # noqa: F811
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "script_name": "x/y/z plot",
                                                "script_args": [9, "Euler a, Warp Drive", []]})
    assert r.status_code == 400 and "Warp Drive" in r.json()["detail"]
    many = ", ".join(str(i) for i in range(1, 10))
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "script_name": "x/y/z plot",
                                                "script_args": [4, many, [], 6, many, []]})
    assert r.status_code == 400 and "81 cells" in r.json()["detail"]
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "steps": 150, "batch_size": 8, "script_name": "x/y/z plot",
                                                "script_args": [6, "5, 7, 9", []]})
    assert r.status_code == 400 and "3600 sampling steps over 3 grid cells" in r.json()["detail"]
