"""A1111 fidelity (#22): the request sequences real front ends send, replayed against a live uvicorn.

The payloads are those of the clients' published source: Open WebUI's images router (sizes from
its "WxH" setting, e.g. 100x100), LibreChat's StableDiffusion tool (txt2img, then png-info on a
data URL), SillyTavern's stable-diffusion endpoint (every field, many of them null) and
``webuiapi`` 0.9.17 (extras with its default upscaler "None"). Each test checks the fields the
client reads back.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from modules.api import create_app
from modules.config import load_settings
from modules.images import encode_image_base64, read_infotext
from modules.services import build_services
from tests.served import served

pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_models_dir):
    """(services, base URL) of a uvicorn server on a free port, on the tiny checkpoints."""
    data = tmp_path_factory.mktemp("a1111-clients")
    (data / "models").mkdir()
    shutil.copytree(tiny_models_dir, data / "models" / "Stable-diffusion")
    (data / "styles.csv").write_text("name,prompt,negative_prompt\nred,{prompt} in red,green\n")
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    with served(create_app(services)) as port:
        yield services, f"http://127.0.0.1:{port}"
    services.close()


def image_of(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def post(url: str, body: dict) -> requests.Response:
    return requests.post(url, json=body, timeout=300)


# ---------------------------------------------------------------------------------------------
# 1. sizes that are not multiples of 8


def test_open_webui_sequence_100x100(live):
    services, base = live
    # Open WebUI: the current model from options, the list of models, then txt2img with its "WxH" size
    options = requests.get(f"{base}/sdapi/v1/options", timeout=30).json()
    titles = [m["title"] for m in requests.get(f"{base}/sdapi/v1/sd-models", timeout=30).json()]
    assert options["sd_model_checkpoint"] in titles
    # set_image_model: an admin's model (a title from sd-models) goes to options
    r = post(f"{base}/sdapi/v1/options", {"sd_model_checkpoint": options["sd_model_checkpoint"]})
    assert r.status_code == 200 and r.json() is None
    r = post(f"{base}/sdapi/v1/txt2img", {"prompt": "a red circle", "batch_size": 1, "width": 100, "height": 100,
                                          "steps": 2, "negative_prompt": "blurry", "seed": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 1 and image_of(body["images"][0]).size == (96, 96)
    assert (info["width"], info["height"]) == (96, 96)  # the size drawn
    assert "Size: 96x96" in info["infotexts"][0]
    assert body["parameters"]["width"] == 100  # the request as sent
    assert any("width: 100 is not a multiple of 8; drawn at 96" in w for w in info["warnings"])


def test_img2img_odd_size_is_floored(live):
    _, base = live
    init = encode_image_base64(Image.new("RGB", (40, 40), (200, 30, 30)))
    r = post(f"{base}/sdapi/v1/img2img", {"init_images": [init], "width": 44, "height": 35, "steps": 2, "seed": 1,
                                          "denoising_strength": 0.5})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert image_of(r.json()["images"][0]).size == (40, 32)
    assert (info["width"], info["height"]) == (40, 32)
    assert len(info["warnings"]) == 2


def test_a_size_below_8_is_still_a_422_naming_it(live):
    _, base = live
    r = post(f"{base}/sdapi/v1/txt2img", {"prompt": "x", "width": 7, "steps": 1})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "width"]


# ---------------------------------------------------------------------------------------------
# 2. null means the default


def test_sillytavern_payload_with_nulls(live):
    _, base = live
    # SillyTavern's txt2img body, with the fields its settings leave unset sent as null
    body = {
        "prompt": "a cat", "negative_prompt": None, "sampler_name": None, "scheduler": None, "steps": 2,
        "cfg_scale": 7, "width": 32, "height": 32, "restore_faces": False, "enable_hr": False, "hr_upscaler": None,
        "hr_scale": None, "hr_second_pass_steps": None, "denoising_strength": None, "seed": None, "styles": None,
        "override_settings": None, "override_settings_restore_afterwards": True, "clip_skip": None,
        "send_images": True, "save_images": None, "alwayson_scripts": None, "script_args": None, "script_name": None,
        "subseed": None, "subseed_strength": None, "batch_size": None, "n_iter": None, "infotext": None,
    }
    r = post(f"{base}/sdapi/v1/txt2img", body)
    assert r.status_code == 200, r.text
    answer = r.json()
    info = json.loads(answer["info"])
    assert len(answer["images"]) == 1 and info["all_negative_prompts"] == [""]
    assert info["seed"] >= 0 and info["styles"] == [] and info["warnings"] == []
    assert info["sampler_name"] == "Euler"  # sampler_index's default, as in A1111's API
    params = answer["parameters"]
    assert params["hr_upscaler"] == "Latent" and params["denoising_strength"] == 0.75 and params["seed"] == -1
    assert params["override_settings"] == {} and params["batch_size"] == 1


def test_nulls_in_img2img_extras_and_controlnet_units(live):
    _, base = live
    init = encode_image_base64(Image.new("RGB", (32, 32), (20, 200, 20)))
    r = post(f"{base}/sdapi/v1/img2img", {"init_images": [init], "mask": None, "steps": 2, "width": 32, "height": 32,
                                          "denoising_strength": None, "mask_blur": None, "inpainting_fill": None,
                                          "resize_mode": None, "seed": 4})
    assert r.status_code == 200, r.text
    assert "Denoising strength: 0.75" in json.loads(r.json()["info"])["infotexts"][0]
    r = post(f"{base}/sdapi/v1/extra-single-image", {"image": init, "upscaler_1": "Lanczos", "upscaling_resize": None,
                                                     "resize_mode": None, "upscaler_2": None})
    assert r.status_code == 200, r.text
    assert image_of(r.json()["image"]).size == (64, 64)


# ---------------------------------------------------------------------------------------------
# 3. unknown styles and override checkpoint: ignored with a warning


def test_unknown_style_and_checkpoint_are_ignored_with_warnings(live):
    services, base = live
    body = {"prompt": "a cat", "steps": 1, "width": 32, "height": 32, "seed": 2, "styles": ["red", "no-such-style"],
            "override_settings": {"sd_model_checkpoint": "no-such-model.safetensors", "sd_vae": "nope.pt"}}
    r = post(f"{base}/sdapi/v1/txt2img", body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_prompts"] == ["a cat in red"] and info["all_negative_prompts"] == ["green"]
    assert info["sd_model_name"] == services.checkpoints.get(services.selected_checkpoint).model_name
    warnings = " | ".join(info["warnings"])
    assert "'no-such-style' not found in styles.csv" in warnings
    assert "sd_model_checkpoint: 'no-such-model.safetensors' is not installed" in warnings
    assert "sd_vae: 'nope.pt' is not in models/VAE" in warnings


def test_known_override_checkpoint_still_runs_on_it(live):
    _, base = live
    r = post(f"{base}/sdapi/v1/txt2img", {"prompt": "x", "steps": 1, "width": 32, "height": 32,
                                          "override_settings": {"sd_model_checkpoint": "tiny-b"}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["sd_model_name"] == "tiny-b" and info["warnings"] == []


# ---------------------------------------------------------------------------------------------
# 4. infotext fills the fields the body does not set


def test_infotext_fills_unset_fields_and_explicit_fields_win(live):
    _, base = live
    text = ("a green square\nNegative prompt: blurry\nSteps: 1, Sampler: Euler, CFG scale: 5, Seed: 42, "
            "Size: 40x24, Model: tiny-b, Clip skip: 2")
    r = post(f"{base}/sdapi/v1/txt2img", {"infotext": text, "steps": 2, "cfg_scale": 6})
    assert r.status_code == 200, r.text
    answer = r.json()
    info = json.loads(answer["info"])
    assert info["all_prompts"] == ["a green square"] and info["all_negative_prompts"] == ["blurry"]
    assert info["all_seeds"] == [42] and info["sampler_name"] == "Euler"
    assert (info["width"], info["height"]) == (40, 24) and info["sd_model_name"] == "tiny-b"
    assert info["steps"] == 2 and info["cfg_scale"] == 6  # explicit fields win
    assert info["clip_skip"] == 2
    assert "Steps: 2," in info["infotexts"][0] and "CFG scale: 6," in info["infotexts"][0]
    assert answer["parameters"]["seed"] == 42 and answer["parameters"]["prompt"] == "a green square"


def test_infotext_value_that_does_not_fit_is_left_out_with_a_warning(live):
    _, base = live
    r = post(f"{base}/sdapi/v1/txt2img", {"infotext": "x\nSteps: 900, Seed: 5, Size: 32x32"})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_seeds"] == [5] and info["steps"] == 50  # 900 is over the limit: A1111's API default
    assert any("infotext: steps" in w for w in info["warnings"])


# ---------------------------------------------------------------------------------------------
# LibreChat: txt2img, then png-info on a data URL


def test_librechat_sequence(live):
    _, base = live
    r = post(f"{base}/sdapi/v1/txt2img", {"prompt": "a tree", "negative_prompt": "fog", "steps": 2,
                                          "width": 32, "height": 32})
    assert r.status_code == 200, r.text
    image = r.json()["images"][0]
    r2 = post(f"{base}/sdapi/v1/png-info", {"image": f"data:image/png;base64,{image}"})
    assert r2.status_code == 200, r2.text
    assert r2.json()["info"].startswith("a tree\nNegative prompt: fog\nSteps: 2,")


# ---------------------------------------------------------------------------------------------
# 6. extras: upscaler "None" leaves the image as it is; face restoration is accepted with a warning


def test_webuiapi_extras_default_call_returns_the_image_unchanged(live):
    webuiapi = pytest.importorskip("webuiapi")
    _, base = live
    port = int(base.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
    image = Image.new("RGB", (24, 16), (10, 120, 200))
    r = api.extra_single_image(image)  # webuiapi's defaults: upscaler_1 "None", upscaling_resize 2
    assert r.image.size == (24, 16)
    assert r.image.convert("RGB").getpixel((3, 3)) == (10, 120, 200)
    r = api.extra_single_image(image, upscaler_1="Lanczos", upscaling_resize=2, gfpgan_visibility=0.5,
                               codeformer_visibility=0.3)
    assert r.image.size == (48, 32)
    assert "gfpgan_visibility: no face restorer is installed" in r.info
    assert "codeformer_visibility: no face restorer is installed" in r.info
    r = api.extra_batch_images([image, image.resize((8, 8))], upscaler_1="Lanczos", upscaling_resize=2)
    assert [im.size for im in r.images] == [(48, 32), (16, 16)]
    r = api.extra_batch_images([image])  # its defaults again: upscaler "None", unchanged
    assert [im.size for im in r.images] == [(24, 16)]


def test_extra_batch_images(live):
    _, base = live
    images = [{"data": encode_image_base64(Image.new("RGB", (16, 8 * (i + 1)), (i * 50, 0, 0))), "name": f"{i}.png"}
              for i in range(2)]
    r = post(f"{base}/sdapi/v1/extra-batch-images", {"imageList": images, "upscaler_1": "Lanczos",
                                                     "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    assert [image_of(i).size for i in r.json()["images"]] == [(32, 16), (32, 32)]
    assert "Postprocess upscaler: Lanczos" in r.json()["html_info"]
    bad = post(f"{base}/sdapi/v1/extra-batch-images", {"imageList": [images[0], {"data": "nope", "name": "x"}]})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "imageList", 1, "data"]


# ---------------------------------------------------------------------------------------------
# 7. the routes A1111 clients probe, in A1111's shapes


def test_routes_clients_probe(live):
    _, base = live
    for route in ("hypernetworks", "face-restorers", "realesrgan-models", "extensions"):
        r = requests.get(f"{base}/sdapi/v1/{route}", timeout=30)
        assert r.status_code == 200 and r.json() == [], route
    info = requests.get(f"{base}/sdapi/v1/script-info", timeout=30).json()
    assert {"name": "x/y/z plot", "is_alwayson": False, "is_img2img": False, "args": []} in info
    assert any(s["name"] == "outpainting mk2" and s["is_img2img"] for s in info)
    for route in ("unload-checkpoint", "reload-checkpoint", "refresh-embeddings", "refresh-vae"):
        r = requests.post(f"{base}/sdapi/v1/{route}", timeout=30)
        assert r.status_code == 200 and r.json() == {}, route
    types = requests.get(f"{base}/controlnet/control_types", timeout=30).json()["control_types"]
    assert types["All"]["default_option"] == "none" and "canny" in types["All"]["module_list"]
    assert types["Canny"]["module_list"] == ["none", "canny"] and types["Canny"]["default_option"] == "canny"
    # a job runs after an unload: the checkpoint is loaded again
    r = post(f"{base}/sdapi/v1/txt2img", {"prompt": "x", "steps": 1, "width": 32, "height": 32})
    assert r.status_code == 200, r.text


def test_interrogate_reads_the_shapes_world_back(live):
    """webuiapi's interrogate (model "clip") on a shapes-world scene gives its training caption."""
    from bundled.shapes import POSITIONS, Scene, render

    webuiapi = pytest.importorskip("webuiapi")
    _, base = live
    api = webuiapi.WebUIApi(host="127.0.0.1", port=int(base.rsplit(":", 1)[1]))
    for scene in (Scene("circle", "red", "blue", "large", "left", *POSITIONS["left"]),
                  Scene("square", "yellow", "black", "small", "top", *POSITIONS["top"])):
        assert api.interrogate(render(scene)).info == scene.caption()
    big = render(Scene("triangle", "green", "white", "large", "center", *POSITIONS["center"])).resize((512, 512))
    r = post(f"{base}/sdapi/v1/interrogate", {"image": encode_image_base64(big), "model": "shapes"})
    assert r.status_code == 200 and r.json() == {"caption": "a large green triangle in the center, white background"}


def test_interrogate_without_a_caption_is_a_404_naming_what_is_missing(live):
    _, base = live
    rng = np.random.default_rng(0)
    photo = encode_image_base64(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    r = post(f"{base}/sdapi/v1/interrogate", {"image": photo, "model": "clip"})
    assert r.status_code == 404
    assert "reads only the bundled model's shapes world" in r.json()["detail"]
    assert "models/BLIP/model_base_caption_capfilt_large.pth" in r.json()["detail"]
    r = post(f"{base}/sdapi/v1/interrogate", {"image": photo, "model": "deepdanbooru"})
    assert r.status_code == 404 and "models/torch_deepdanbooru/" in r.json()["detail"]
    r = post(f"{base}/sdapi/v1/interrogate", {"image": photo, "model": "blip2"})
    assert r.status_code == 404 and "'blip2' not found" in r.json()["detail"]
    r = post(f"{base}/sdapi/v1/interrogate", {"model": "clip"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image"]


# ---------------------------------------------------------------------------------------------
# 11. options: A1111's keys, null answers, and the options clients set are honoured


@pytest.fixture
def fresh(data_dir):
    """(services, base URL) on a fresh data folder, for tests that change settings."""
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0}))
    with served(create_app(services)) as port:
        yield services, f"http://127.0.0.1:{port}"
    services.close()


def test_options_carry_a1111_keys_and_post_answers_null(fresh):
    services, base = fresh
    options = requests.get(f"{base}/sdapi/v1/options", timeout=30).json()
    for key in ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "samples_format", "eta_noise_seed_delta",
                "enable_pnginfo", "sd_checkpoint_cache", "face_restoration_model", "img2img_color_correction",
                "live_previews_enable", "jpeg_quality", "show_progress_every_n_steps", "samples_save"):
        assert key in options, key
    assert len(options) > 80
    r = post(f"{base}/sdapi/v1/options", {"eta_noise_seed_delta": 31337, "jpeg_quality": 90})
    assert r.status_code == 200 and r.json() is None
    assert r.headers["Easel-Ignored-Options"] == "jpeg_quality"
    assert requests.get(f"{base}/sdapi/v1/options", timeout=30).json()["eta_noise_seed_delta"] == 31337
    assert json.loads(services.settings.config_file.read_text())["eta_noise_seed_delta"] == 31337
    # every value GET gives can be posted back
    assert post(f"{base}/sdapi/v1/options", requests.get(f"{base}/sdapi/v1/options", timeout=30).json()).status_code == 200


def test_clip_skip_option_is_the_default_of_requests(fresh):
    _, base = fresh
    assert post(f"{base}/sdapi/v1/options", {"CLIP_stop_at_last_layers": 2}).status_code == 200
    body = {"prompt": "x", "steps": 1, "width": 32, "height": 32, "seed": 1}
    info = json.loads(post(f"{base}/sdapi/v1/txt2img", body).json()["info"])
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    info = json.loads(post(f"{base}/sdapi/v1/txt2img", {**body, "clip_skip": 1}).json()["info"])
    assert info["clip_skip"] == 1 and "Clip skip" not in info["infotexts"][0]  # the request's own wins


def test_samples_format_and_enable_pnginfo_shape_the_images(fresh):
    _, base = fresh
    body = {"prompt": "a fox", "steps": 1, "width": 32, "height": 32, "seed": 1}
    assert post(f"{base}/sdapi/v1/options", {"samples_format": "jpg"}).status_code == 200
    r = post(f"{base}/sdapi/v1/txt2img", body)
    image = image_of(r.json()["images"][0])
    assert image.format == "JPEG"
    read = post(f"{base}/sdapi/v1/png-info", {"image": r.json()["images"][0]}).json()
    assert read["info"].startswith("a fox\nSteps: 1,")  # the infotext rides in the EXIF UserComment
    r = post(f"{base}/sdapi/v1/txt2img", {**body, "override_settings": {"samples_format": "webp"}})
    assert image_of(r.json()["images"][0]).format == "WEBP"
    assert post(f"{base}/sdapi/v1/options", {"samples_format": "png", "enable_pnginfo": False}).status_code == 200
    r = post(f"{base}/sdapi/v1/txt2img", body)
    image = image_of(r.json()["images"][0])
    assert image.format == "PNG" and "parameters" not in image.info
    assert json.loads(r.json()["info"])["infotexts"][0].startswith("a fox")  # info still has it


def test_samples_format_names_the_saved_files_format(fresh):
    services, base = fresh
    body = {"prompt": "a fox", "steps": 1, "width": 32, "height": 32, "seed": 1, "save_images": True}
    for name, fmt, extension in (("jpg", "JPEG", ".jpg"), ("webp", "WEBP", ".webp"), ("png", "PNG", ".png")):
        assert post(f"{base}/sdapi/v1/options", {"samples_format": name}).status_code == 200
        info = json.loads(post(f"{base}/sdapi/v1/txt2img", body).json()["info"])
        path = Path(info["paths"][0])
        assert path.suffix == extension and path.is_file()
        with Image.open(path) as saved:
            assert saved.format == fmt
        assert read_infotext(path).startswith("a fox\nSteps: 1,")  # PNG chunk or EXIF UserComment
    files = sorted(p.name for p in path.parent.iterdir())
    assert [f.split("-")[0] for f in files] == ["00000", "00001", "00002"]  # one numbering across formats


def test_bad_option_values_are_named(fresh):
    services, base = fresh
    for values, field in (({"samples_format": "gif"}, "samples_format"), ({"CLIP_stop_at_last_layers": 13},
                                                                            "CLIP_stop_at_last_layers"),
                          ({"eta_noise_seed_delta": -1}, "eta_noise_seed_delta")):
        r = post(f"{base}/sdapi/v1/options", values)
        assert r.status_code == 422, values
        assert r.json()["detail"][0]["loc"] == ["body", field]
    assert not services.settings.config_file.exists()


# ---------------------------------------------------------------------------------------------
# 14. response schemas in /openapi.json


def test_openapi_has_response_schemas_for_the_lists(live):
    _, base = live
    schema = requests.get(f"{base}/openapi.json", timeout=30).json()
    expected = {"/sdapi/v1/samplers": "SamplerItem", "/sdapi/v1/schedulers": "SchedulerItem",
                "/sdapi/v1/upscalers": "UpscalerItem", "/sdapi/v1/sd-vae": "SDVaeItem",
                "/sdapi/v1/prompt-styles": "PromptStyleItem", "/sdapi/v1/latent-upscale-modes": "LatentUpscalerModeItem",
                "/sdapi/v1/hypernetworks": "HypernetworkItem", "/sdapi/v1/script-info": "ScriptInfo",
                "/sdapi/v1/loras": "LoraItem", "/sdapi/v1/sd-models": "SDModelItem"}
    for path, model in expected.items():
        content = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert content["type"] == "array" and content["items"]["$ref"].endswith("/" + model), path
    options = schema["paths"]["/sdapi/v1/options"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert options["$ref"].endswith("/OptionsResponse")
    props = schema["components"]["schemas"]["SamplerItem"]["properties"]
    assert set(props) == {"name", "aliases", "options"}


def test_ignored_option_names_reach_the_header_percent_encoded(fresh):
    _, base = fresh
    r = post(f"{base}/sdapi/v1/options", {"ĀB\r\nSet-Cookie: x": 1, "plain": 2})
    assert r.status_code == 200 and r.json() is None
    assert r.headers["Easel-Ignored-Options"] == "%C4%80B%0D%0ASet-Cookie%3A%20x,plain"
    assert "Set-Cookie" not in r.headers


# ---------------------------------------------------------------------------------------------
# contract: every field of A1111's request models is in Easel's (kept as data: A1111 1.10's
# StableDiffusionProcessingTxt2Img/Img2Img API models and its extras requests, modules/api/models.py)

A1111_PROCESSING = {
    "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
    "seed_resize_from_w", "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width",
    "height", "restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength",
    "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings",
    "override_settings_restore_afterwards", "refiner_checkpoint", "refiner_switch_at", "disable_extra_networks",
    "firstpass_image", "comments", "sampler_index", "script_name", "script_args", "send_images", "save_images",
    "alwayson_scripts", "force_task_id", "infotext",
}
A1111_FIELDS = {
    "Txt2ImgBody": A1111_PROCESSING | {
        "enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps",
        "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
        "hr_negative_prompt"},
    "Img2ImgBody": A1111_PROCESSING | {
        "init_images", "resize_mode", "image_cfg_scale", "mask", "mask_blur_x", "mask_blur_y", "mask_blur",
        "mask_round", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert",
        "initial_noise_multiplier", "latent_mask", "include_init_images"},
    "ExtrasBody": {
        "resize_mode", "show_extras_results", "gfpgan_visibility", "codeformer_visibility", "codeformer_weight",
        "upscaling_resize", "upscaling_resize_w", "upscaling_resize_h", "upscaling_crop", "upscaler_1", "upscaler_2",
        "extras_upscaler_2_visibility", "upscale_first", "image"},
    "ExtrasBatchBody": {
        "resize_mode", "show_extras_results", "gfpgan_visibility", "codeformer_visibility", "codeformer_weight",
        "upscaling_resize", "upscaling_resize_w", "upscaling_resize_h", "upscaling_crop", "upscaler_1", "upscaler_2",
        "extras_upscaler_2_visibility", "upscale_first", "imageList"},
    "PngInfoBody": {"image"},
    "InterrogateBody": {"image", "model"},
}


def test_openapi_request_models_have_every_a1111_field(live):
    _, base = live
    components = requests.get(f"{base}/openapi.json", timeout=30).json()["components"]["schemas"]
    for model, fields in A1111_FIELDS.items():
        missing = fields - set(components[model]["properties"])
        assert not missing, f"{model} lacks A1111's {sorted(missing)}"


def test_fields_easel_does_not_implement_are_named_in_warnings(live):
    _, base = live
    body = {"prompt": "x", "steps": 1, "width": 32, "height": 32, "tiling": True, "eta": 0.5, "restore_faces": True,
            "do_not_save_samples": True, "s_noise": 1.0, "s_min_uncond": 0.2, "comments": None}
    r = post(f"{base}/sdapi/v1/txt2img", body)
    assert r.status_code == 200, r.text
    warnings = json.loads(r.json()["info"])["warnings"]
    assert warnings == ["restore_faces: True was ignored: no face restorer is installed in Easel"]  # s_min_uncond runs
    assert "NGMS: 0.2" in json.loads(r.json()["info"])["infotexts"][0]
    init = encode_image_base64(Image.new("RGB", (32, 32)))
    r = post(f"{base}/sdapi/v1/img2img", {"init_images": [init], "steps": 1, "mask_blur": 8, "mask_blur_x": 8,
                                          "mask_blur_y": 2, "image_cfg_scale": 1.5, "firstpass_image": init})
    assert r.status_code == 200, r.text
    warnings = json.loads(r.json()["info"])["warnings"]
    assert [w.split(":")[0] for w in warnings] == ["firstpass_image", "image_cfg_scale"]  # mask_blur_x/_y run
    assert r.json()["parameters"]["firstpass_image"] is None  # images are not echoed


# ---------------------------------------------------------------------------------------------
# 8. A1111's built-in always-on scripts run (their args fill the fields the body left out;
# tests/test_api_builtin_scripts.py has the details)


def test_builtin_alwayson_scripts_run(live):
    _, base = live
    listed = requests.get(f"{base}/sdapi/v1/scripts", timeout=30).json()
    assert "controlnet" in listed["txt2img"] and "controlnet" in listed["img2img"]  # openOutpaint looks for it
    assert "soft inpainting" in listed["img2img"] and "soft inpainting" not in listed["txt2img"]
    body = {"prompt": "x", "width": 32, "height": 32, "alwayson_scripts": {
        "Seed": {"args": [99, True, 5, 0.5, 0, 0]}, "Sampler": {"args": [1, "Euler", "Karras"]},
        "Refiner": {"args": [False, "", 0.8]}, "Extra options": {"args": []}, "ControlNet": {"args": []}}}
    r = post(f"{base}/sdapi/v1/txt2img", body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_seeds"] == [99] and info["steps"] == 1 and info["subseed_strength"] == 0.5
    assert info["warnings"] == []
    r = post(f"{base}/sdapi/v1/txt2img", {**body, "seed": 7})
    info = json.loads(r.json()["info"])
    assert info["all_seeds"] == [7]  # an explicit field wins, with a warning
    assert info["warnings"] == ["alwayson_scripts.Seed.args.0: 99 not used: the request's seed (7) wins"]
    init = encode_image_base64(Image.new("RGB", (32, 32)))
    mask = encode_image_base64(Image.new("L", (32, 32), 255))
    r = post(f"{base}/sdapi/v1/img2img", {"init_images": [init], "mask": mask, "steps": 1, "width": 32, "height": 32,
                                          "alwayson_scripts": {"soft inpainting": {"args": [True, 1, 0.5, 4, 0, 0.5, 2]}}})
    assert r.status_code == 200, r.text
    assert "Soft inpainting enabled: True" in json.loads(r.json()["info"])["infotexts"][0]
    r = post(f"{base}/sdapi/v1/txt2img", {**body, "alwayson_scripts": {"ADetailer": {"args": []}}})
    assert r.status_code == 422
    assert "ADetailer not found" in r.json()["detail"][0]["msg"] and "'seed'" in r.json()["detail"][0]["msg"]
    r = post(f"{base}/sdapi/v1/txt2img", {**body, "alwayson_scripts": {"Soft Inpainting": {"args": []}}})
    assert r.status_code == 422  # an img2img script


# ---------------------------------------------------------------------------------------------
# openOutpaint: its start-up probes, then a dream (txt2img) and an img2img with a mask, with its
# own stableDiffusionData defaults (nulls, sampler_index "DDIM", hr_upscaler "None", mask "")


def test_openoutpaint_sequence(live):
    _, base = live
    assert requests.get(f"{base}/sdapi/v1/options", timeout=30).json().get("use_scale_latent_for_hires_fix") is None
    for route in ("prompt-styles", "samplers", "upscalers", "sd-models", "progress", "scripts"):
        assert requests.get(f"{base}/sdapi/v1/{route}", timeout=30).status_code == 200, route
    data = {"prompt": "a boat", "negative_prompt": "", "seed": 11, "cfg_scale": None, "sampler_index": "DDIM",
            "steps": 2, "denoising_strength": 1, "mask_blur": 0, "batch_size": None, "width": 64, "height": 64,
            "n_iter": None, "mask": "", "init_images": [], "inpaint_full_res": False, "inpainting_fill": 1,
            "outpainting_fill": 2, "enable_hr": False, "restore_faces": False, "hr_scale": 2.0, "hr_upscaler": "None",
            "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_square_aspect": False, "styles": []}
    r = post(f"{base}/sdapi/v1/txt2img", data)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["sampler_name"] == "DDIM" and info["all_seeds"] == [11] and info["cfg_scale"] == 7.0
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    r = post(f"{base}/sdapi/v1/img2img", {**data, "init_images": [r.json()["images"][0]],
                                          "mask": encode_image_base64(mask.convert("RGB"))})
    assert r.status_code == 200, r.text
    assert image_of(r.json()["images"][0]).size == (64, 64)


# ---------------------------------------------------------------------------------------------
# SillyTavern (src/endpoints/stable-diffusion.js): ping, lists, get/set model (polling progress until
# idle), then generate: txt2img with its whole body, which also carries its own url and auth fields


def test_sillytavern_sequence(fresh):
    _, base = fresh
    get = lambda route: requests.get(f"{base}/sdapi/v1/{route}", timeout=30)  # noqa: E731
    assert get("options").status_code == 200  # ping
    upscalers = [x["name"] for x in get("upscalers").json()]
    latent = [x["name"] for x in get("latent-upscale-modes").json()]
    assert upscalers[0] == "None" and "Latent" in latent  # it splices the latent ones in after "None"
    assert isinstance([x["model_name"] for x in get("sd-vae").json()], list)
    assert "Euler a" in [x["name"] for x in get("samplers").json()]
    assert "karras" in [x["name"] for x in get("schedulers").json()]
    titles = [x["title"] for x in get("sd-models").json()]
    assert get("options").json()["sd_model_checkpoint"] in titles  # get-model
    b_title = next(t for t in titles if t.startswith("tiny-b.safetensors"))
    assert post(f"{base}/sdapi/v1/options", {"sd_model_checkpoint": b_title}).status_code == 200  # set-model
    for _ in range(100):  # it polls until progress 0 and job_count 0
        progress = get("progress").json()
        if progress["progress"] == 0.0 and progress["state"]["job_count"] == 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the model switch never finished")
    assert "forge_preset" not in get("options").json()  # so it drops override_settings.forge_additional_modules
    body = {"url": base, "auth": "", "prompt": "a cat", "negative_prompt": "lowres", "sampler_name": "DPM++ 2M",
            "scheduler": "karras", "steps": 2, "cfg_scale": 7, "width": 40, "height": 40, "restore_faces": False,
            "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2, "hr_additional_modules": [],
            "denoising_strength": 0.7, "hr_second_pass_steps": 0, "seed": 12, "clip_skip": 2,
            "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "Automatic"},
            "override_settings_restore_afterwards": True, "save_images": True, "send_images": True,
            "do_not_save_grid": False, "do_not_save_samples": False}
    r = post(f"{base}/sdapi/v1/txt2img", body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert image_of(answer["images"][0]).size == (40, 40)
    info = json.loads(answer["info"])
    assert info["sd_model_name"] == "tiny-b" and info["all_seeds"] == [12] and info["clip_skip"] == 2
    assert info["warnings"] == [] and len(info["paths"]) == 1  # it asked to save


def test_tiling_is_honoured_for_that_request(live):
    services, base = live
    body = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "seed": 3}
    plain = post(f"{base}/sdapi/v1/txt2img", body).json()
    tiled = post(f"{base}/sdapi/v1/txt2img", {**body, "tiling": True}).json()
    assert json.loads(tiled["info"])["warnings"] == [] and tiled["parameters"]["tiling"] is True
    assert image_of(tiled["images"][0]).tobytes() != image_of(plain["images"][0]).tobytes()
    again = post(f"{base}/sdapi/v1/txt2img", body).json()  # the next request pads with zeros again
    assert image_of(again["images"][0]).tobytes() == image_of(plain["images"][0]).tobytes()
    text = json.loads(tiled["info"])["infotexts"][0]
    assert "Tiling: True" in text and "Tiling" not in json.loads(plain["info"])["infotexts"][0]  # A1111's key
    reread = post(f"{base}/sdapi/v1/txt2img", {"infotext": text, "steps": 2, "width": 32, "height": 32}).json()
    assert reread["parameters"]["tiling"] is True  # read back from the infotext, as A1111 reads it
    assert image_of(reread["images"][0]).tobytes() == image_of(tiled["images"][0]).tobytes()


def test_img2img_noise_multiplier_and_mask_round_as_a1111(live):
    _, base = live
    gradient = Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1)))
    body = {"prompt": "a red circle", "init_images": [encode_image_base64(Image.new("RGB", (32, 32), (40, 90, 200)))],
            "steps": 4, "width": 32, "height": 32, "seed": 5, "denoising_strength": 0.6, "sampler_name": "Euler"}
    plain = post(f"{base}/sdapi/v1/img2img", body).json()
    quiet = post(f"{base}/sdapi/v1/img2img", {**body, "initial_noise_multiplier": 0.5}).json()
    info = json.loads(quiet["info"])
    assert info["warnings"] == [] and "Noise multiplier: 0.5" in info["infotexts"][0]
    assert "Noise multiplier" not in json.loads(plain["info"])["infotexts"][0]  # 1.0 is not written, as in A1111
    assert image_of(quiet["images"][0]).tobytes() != image_of(plain["images"][0]).tobytes()
    same = post(f"{base}/sdapi/v1/img2img", {**body, "initial_noise_multiplier": None}).json()  # null: 1.0
    assert image_of(same["images"][0]).tobytes() == image_of(plain["images"][0]).tobytes()
    reread = post(f"{base}/sdapi/v1/img2img", {**body, "infotext": info["infotexts"][0]}).json()
    assert reread["parameters"]["initial_noise_multiplier"] == 0.5
    bad = post(f"{base}/sdapi/v1/img2img", {**body, "initial_noise_multiplier": -1})
    assert bad.status_code == 422 and "initial_noise_multiplier" in bad.text
    inpaint = {**body, "mask": encode_image_base64(gradient), "mask_blur": 0, "inpaint_full_res": False,
               "inpainting_fill": 1}
    rounded = post(f"{base}/sdapi/v1/img2img", inpaint).json()
    soft = post(f"{base}/sdapi/v1/img2img", {**inpaint, "mask_round": False}).json()
    assert json.loads(soft["info"])["warnings"] == []
    assert image_of(soft["images"][0]).tobytes() != image_of(rounded["images"][0]).tobytes()
