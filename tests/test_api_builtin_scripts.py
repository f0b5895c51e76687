"""A1111's built-in always-on scripts (Seed, Sampler, Refiner, Soft Inpainting, Extra options) and the
fields Easel now implements (mask_blur_x/_y, latent_mask, s_min_uncond, hr_checkpoint_name), through /sdapi/v1."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from modules.images import encode_image_base64
from tests.test_api import T2I, b64_to_image, client, shared  # noqa: F401 - fixtures
from tests.tiny_models import noise_image

SOFT_ARGS = [True, 1, 0.5, 4, 0, 0.5, 2]


def post(client, route: str, body: dict) -> tuple[list[Image.Image], dict, dict]:  # noqa: F811
    r = client.post(f"/sdapi/v1/{route}", json=body)
    assert r.status_code == 200, r.text
    return [b64_to_image(i) for i in r.json()["images"]], json.loads(r.json()["info"]), r.json()["parameters"]


def inpaint_body(**kw) -> dict:
    image = noise_image(128, 32, seed=3)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (56, 0, 72, 32))
    return {"prompt": "a dog", "steps": 4, "seed": 5, "width": 128, "height": 32, "denoising_strength": 0.9,
            "init_images": [encode_image_base64(image)], "mask": encode_image_base64(mask), "mask_blur": 4,
            "inpaint_full_res": False, **kw}


def test_seed_and_sampler_scripts_fill_the_fields_the_body_left_out(client):  # noqa: F811
    body = {"prompt": "x", "width": 32, "height": 32, "alwayson_scripts": {
        "Seed": {"args": [99, True, 5, 0.5, 0, 0]}, "Sampler": {"args": [3, "Euler", "Karras"]}}}
    images, info, _ = post(client, "txt2img", body)
    assert info["all_seeds"] == [99] and info["steps"] == 3 and info["warnings"] == []
    assert info["subseed"] == 5 and info["subseed_strength"] == 0.5
    assert info["sampler_name"] == "Euler" and info["scheduler"] == "Karras"
    text = info["infotexts"][0]
    assert "Steps: 3" in text and "Seed: 99" in text and "Variation seed: 5" in text and "Schedule type: Karras" in text
    # the same picture as the fields themselves
    same, _, _ = post(client, "txt2img", {"prompt": "x", "width": 32, "height": 32, "seed": 99, "subseed": 5,
                                          "subseed_strength": 0.5, "steps": 3, "sampler_name": "Euler",
                                          "scheduler": "Karras"})
    assert images[0].tobytes() == same[0].tobytes()
    # the Extra checkbox off: no variation seed (A1111's setup)
    _, info, _ = post(client, "txt2img", {**body, "alwayson_scripts": {"Seed": {"args": [99, False, 5, 0.5, 0, 0]}}})
    assert info["subseed_strength"] == 0 and "Variation seed" not in info["infotexts"][0]


def test_explicit_fields_win_over_script_args_with_a_warning(client):  # noqa: F811
    body = {**T2I, "steps": 1, "alwayson_scripts": {"seed": {"args": [99]}, "sampler": {"args": [2, None, None]},
                                                    "Refiner": {"args": [False, "", 0.8]}}}
    _, info, _ = post(client, "txt2img", body)
    assert info["all_seeds"] == [7] and info["steps"] == 1
    assert info["warnings"] == ["alwayson_scripts.seed.args.0: 99 not used: the request's seed (7) wins",
                                "alwayson_scripts.sampler.args.0: 2 not used: the request's steps (1) wins"]
    # args not sent (or null) fill nothing: no conflict with the body's seed, the variation seed comes in
    _, info, _ = post(client, "txt2img", {**T2I, "steps": 1, "alwayson_scripts": {"Seed": {"args": [None, True, 5, 0.5]},
                                                                                 "Sampler": {"args": []}}})
    assert info["warnings"] == [] and info["all_seeds"] == [7] and info["subseed_strength"] == 0.5 and info["steps"] == 1


def test_refiner_script_sets_the_refiner(client):  # noqa: F811
    body = {**T2I, "steps": 4, "alwayson_scripts": {"Refiner": {"args": [True, "tiny-b", 0.5]}}}
    images, info, _ = post(client, "txt2img", body)
    assert "Refiner: tiny-b" in info["infotexts"][0] and "Refiner switch at: 0.5" in info["infotexts"][0]
    plain, _, _ = post(client, "txt2img", {**T2I, "steps": 4})
    assert images[0].tobytes() != plain[0].tobytes()
    off, info, _ = post(client, "txt2img", {**body, "alwayson_scripts": {"Refiner": {"args": [False, "tiny-b", 0.5]}}})
    assert off[0].tobytes() == plain[0].tobytes() and "Refiner" not in info["infotexts"][0]


def test_bad_script_args_are_422_naming_the_arg(client):  # noqa: F811
    cases = [("txt2img", {"Seed": {"args": ["abc"]}}, ["body", "alwayson_scripts", "Seed", "args", 0]),
             ("txt2img", {"Sampler": {"args": [500]}}, ["body", "alwayson_scripts", "Sampler", "args", 0]),
             ("txt2img", {"Sampler": {"args": [1, 2, 3, 4]}}, ["body", "alwayson_scripts", "Sampler", "args"]),
             ("txt2img", {"Seed": {"args": "nope"}}, ["body", "alwayson_scripts", "Seed", "args"]),
             ("img2img", {"Soft Inpainting": {"args": [True, 1, 0.5, 0]}},
              ["body", "alwayson_scripts", "Soft Inpainting", "args", 3]),
             ("img2img", {"Soft Inpainting": {"args": [True, "x"]}},
              ["body", "alwayson_scripts", "Soft Inpainting", "args", 1])]
    for route, scripts, loc in cases:
        body = {**T2I, "alwayson_scripts": scripts}
        if route == "img2img":
            body = inpaint_body(alwayson_scripts=scripts)
        r = client.post(f"/sdapi/v1/{route}", json=body)
        assert r.status_code == 422, (scripts, r.text)
        assert r.json()["detail"][0]["loc"] == loc, scripts


def test_extra_options_args_set_nothing_with_a_warning(client):  # noqa: F811
    _, info, _ = post(client, "txt2img", {**T2I, "steps": 1, "alwayson_scripts": {"Extra options": {"args": [2]}}})
    assert info["warnings"] == ["alwayson_scripts.Extra options: 1 args set nothing: Easel's tabs show no settings in"
                                " Extra options (A1111's extra_options_txt2img/img2img are empty); use override_settings"]


def test_soft_inpainting_script_blends_softly_and_reads_back(client):  # noqa: F811
    init = noise_image(128, 32, seed=3)
    hard, _, _ = post(client, "img2img", inpaint_body())
    soft, info, _ = post(client, "img2img", inpaint_body(alwayson_scripts={"Soft Inpainting": {"args": SOFT_ARGS}}))
    d_soft = np.abs(np.asarray(soft[0]).astype(int) - np.asarray(init).astype(int)).sum(2)
    assert d_soft[:, :20].max() == 0 and d_soft[:, 108:].max() == 0  # outside: the original
    assert soft[0].tobytes() != hard[0].tobytes()
    text = info["infotexts"][0]
    assert "Soft inpainting enabled: True" in text and "Soft inpainting preservation strength: 0.5" in text
    assert info["warnings"] == []
    again, _, _ = post(client, "img2img", inpaint_body(infotext=text))  # the infotext turns it on again
    assert again[0].tobytes() == soft[0].tobytes()
    off, _, _ = post(client, "img2img", inpaint_body(alwayson_scripts={"soft inpainting": {"args": [False]}}))
    assert off[0].tobytes() == hard[0].tobytes()


def test_mask_blur_x_y_and_latent_mask_through_the_api(client):  # noqa: F811
    base = inpaint_body(steps=2, mask_blur=None)
    wide, info, _ = post(client, "img2img", {**base, "mask_blur_x": 12, "mask_blur_y": 0})
    plain, _, _ = post(client, "img2img", base)
    assert wide[0].tobytes() != plain[0].tobytes() and info["warnings"] == []
    assert "Mask blur" not in info["infotexts"][0]
    both, _, params = post(client, "img2img", {**base, "mask_blur": 4, "mask_blur_x": 12, "mask_blur_y": 0})
    assert both[0].tobytes() == plain[0].tobytes()  # mask_blur sent sets both ways, as in A1111
    small = Image.new("L", (128, 32), 0)
    small.paste(255, (60, 8, 68, 24))
    latent, info, params = post(client, "img2img", {**base, "latent_mask": encode_image_base64(small)})
    assert latent[0].tobytes() != plain[0].tobytes() and info["warnings"] == []
    assert params["latent_mask"] is None  # images are not echoed
    r = client.post("/sdapi/v1/img2img", json={**base, "latent_mask": "%%%"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "latent_mask"]


def test_s_min_uncond_and_hr_checkpoint_name(client):  # noqa: F811
    plain, _, _ = post(client, "txt2img", {**T2I, "steps": 4})
    ngms, info, _ = post(client, "txt2img", {**T2I, "steps": 4, "s_min_uncond": 100})
    assert ngms[0].tobytes() != plain[0].tobytes() and "NGMS: 100" in info["infotexts"][0] and info["warnings"] == []
    hr = {**T2I, "steps": 2, "enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.6}
    same, _, _ = post(client, "txt2img", hr)
    other, info, _ = post(client, "txt2img", {**hr, "hr_checkpoint_name": "tiny-b"})
    assert other[0].size == same[0].size == (48, 48) and other[0].tobytes() != same[0].tobytes()
    text = info["infotexts"][0]
    assert "Hires checkpoint: tiny-b" in text and info["warnings"] == []
    again, _, _ = post(client, "txt2img", {**hr, "infotext": text})
    assert again[0].tobytes() == other[0].tobytes()
    own, info, _ = post(client, "txt2img", {**hr, "hr_checkpoint_name": "Use same checkpoint"})
    assert own[0].tobytes() == same[0].tobytes() and "Hires checkpoint" not in info["infotexts"][0]
    r = client.post("/sdapi/v1/txt2img", json={**hr, "hr_checkpoint_name": "nope"})
    assert r.status_code in (400, 404) and "hr_checkpoint_name" in r.text


def test_script_info_describes_the_builtin_args(client):  # noqa: F811
    info = {(s["name"], s["is_img2img"]): s for s in client.get("/sdapi/v1/script-info").json()}
    seed = info[("seed", False)]
    assert seed["is_alwayson"] and [a["label"] for a in seed["args"]] == [
        "Seed", "Extra", "Variation seed", "Variation strength", "Resize seed from width", "Resize seed from height"]
    soft = info[("soft inpainting", True)]["args"]
    assert soft[0] == {"label": "Soft inpainting", "value": False, "minimum": None, "maximum": None, "step": None,
                       "choices": None}
    assert (soft[3]["label"], soft[3]["value"], soft[3]["minimum"]) == ("Transition contrast boost", 4.0, 1.0)
    assert ("soft inpainting", False) not in info
