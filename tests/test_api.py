"""The HTTP API (/sdapi/v1 and /easel/v1) through FastAPI's TestClient, on tiny checkpoints."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api import create_app
from modules.api.models import Img2ImgBody, Txt2ImgBody
from modules.config import load_settings
from modules.images import encode_image_base64
from modules.services import build_services

T2I = {"prompt": "a red apple", "negative_prompt": "blurry", "steps": 2, "width": 32, "height": 32, "seed": 7}


def b64_to_image(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def png_b64(color=(200, 30, 30), size=(32, 32)) -> str:
    return encode_image_base64(Image.new("RGB", size, color))


def make_data_dir(root, tiny_models_dir):
    (root / "models").mkdir(parents=True)
    shutil.copytree(tiny_models_dir, root / "models" / "Stable-diffusion")
    return root


def wait_job(client: TestClient, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/easel/v1/jobs/{job_id}", params={"preview": "false"}).json()
        if body["state"] not in ("queued", "running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_models_dir):
    """One services + client for tests that do not change settings (loading models once)."""
    data = make_data_dir(tmp_path_factory.mktemp("api-shared"), tiny_models_dir)
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    with TestClient(create_app(services)) as client:
        yield services, client
    services.close()


@pytest.fixture
def client(shared) -> TestClient:
    return shared[1]


@pytest.fixture
def paused(data_dir):
    """Services whose worker has not started, so jobs stay queued until the test starts it."""
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0, "max_queue": 4}), start=False)
    with TestClient(create_app(services)) as client:
        yield services, client
    services.close()


# ---------------------------------------------------------------------------------------------
# txt2img


def test_txt2img_returns_images_parameters_and_info_json(client, shared):
    services = shared[0]
    r = client.post("/sdapi/v1/txt2img", json=T2I)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    assert len(body["images"]) == 1
    image = b64_to_image(body["images"][0])
    assert image.size == (32, 32)
    assert image.info["parameters"].startswith("a red apple\nNegative prompt: blurry\n")
    assert isinstance(body["info"], str)
    info = json.loads(body["info"])
    assert info["all_prompts"] == ["a red apple"]
    assert info["all_negative_prompts"] == ["blurry"]
    assert info["all_seeds"] == [7]
    assert info["sd_model_name"] == "tiny-a"
    a = services.checkpoints.get("tiny-a")
    assert info["sd_model_hash"] == services.checkpoints.short_hash(a)
    assert "Seed: 7" in info["infotexts"][0] and "Steps: 2" in info["infotexts"][0]
    assert info["infotexts"][0] == image.info["parameters"]
    assert body["parameters"]["steps"] == 2 and body["parameters"]["prompt"] == "a red apple"
    # A1111's API does not save unless asked
    assert info["paths"] == []
    assert not (services.settings.data_dir / "outputs").exists()


def test_txt2img_same_seed_same_pixels_and_send_images_false(client):
    one = client.post("/sdapi/v1/txt2img", json=T2I).json()
    two = client.post("/sdapi/v1/txt2img", json=T2I).json()
    assert b64_to_image(one["images"][0]).tobytes() == b64_to_image(two["images"][0]).tobytes()
    quiet = client.post("/sdapi/v1/txt2img", json={**T2I, "send_images": False})
    assert quiet.status_code == 200
    assert quiet.json()["images"] == []
    assert json.loads(quiet.json()["info"])["all_seeds"] == [7]


def test_api_bodies_carry_a1111_api_defaults():
    body = Txt2ImgBody()
    assert (body.width, body.height, body.steps, body.cfg_scale) == (512, 512, 50, 7.0)
    assert body.save_images is False and body.send_images is True
    assert body.seed == -1 and body.batch_size == 1 and body.n_iter == 1
    assert body.override_settings_restore_afterwards is True
    assert body.sampler_index == "Euler" and body.denoising_strength == 0.75
    i2i = Img2ImgBody()
    assert (i2i.width, i2i.steps, i2i.denoising_strength, i2i.mask_blur, i2i.inpainting_fill) == (512, 50, 0.75, 4, 0)
    assert i2i.save_images is False and i2i.inpaint_full_res is True


def test_without_a_sampler_the_default_is_euler_as_in_a1111s_api(client):
    # A1111's API models give sampler_index the default "Euler", used when sampler_name is not given
    body = {k: v for k, v in T2I.items() if k not in ("sampler_name", "sampler_index", "scheduler")}
    r = client.post("/sdapi/v1/txt2img", json={**body, "steps": 1})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["sampler_name"] == "Euler" and r.json()["parameters"]["sampler_index"] == "Euler"
    assert "Sampler: Euler, Schedule type: Uniform," in info["infotexts"][0]  # Automatic: Euler's own, Uniform
    # sampler_index sent as null: A1111's default sampler, here the setting default_sampler
    r = client.post("/sdapi/v1/txt2img", json={**body, "steps": 1, "sampler_name": None, "sampler_index": None})
    assert json.loads(r.json()["info"])["sampler_name"] == "DPM++ 2M"
    # the job API keeps the setting default_sampler (DPM++ 2M, Automatic = Karras)
    job = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {**body, "steps": 1}}).json()
    assert wait_job(client, job["id"])["result"]["info"]["sampler_name"] == "DPM++ 2M"


def test_sampler_index_is_accepted(client):
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "sampler_index": "Euler", "steps": 1})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["sampler_name"] == "Euler"
    assert "Sampler: Euler," in info["infotexts"][0]


def test_unknown_sampler_falls_back_to_the_default_with_a_warning(client):
    # A1111 1.10's API: an unknown sampler is the default one, an unknown schedule type Automatic
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "steps": 1, "sampler_name": "Warp Drive", "scheduler": "Wobbly"})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["sampler_name"] == "DPM++ 2M" and "Schedule type: Karras" in info["infotexts"][0]
    assert info["warnings"][0].startswith("sampler_name: 'Warp Drive' is not a sampler; the default, 'DPM++ 2M'")
    assert info["warnings"][1].startswith("scheduler: 'Wobbly' is unknown")
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "steps": 1, "sampler_name": "DPM++ 2M Karras",
                                                "scheduler": "Exponential"})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "Schedule type: Karras" in info["infotexts"][0] and info["warnings"][0].startswith("scheduler: 'Exponential'")
    # the job API keeps the core's strict check
    r = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {"sampler_name": "Warp Drive"}})
    assert r.status_code == 400 and "Euler a" in r.json()["detail"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [({"steps": "many"}, "steps"), ({"width": 4}, "width"), ({"cfg_scale": [1]}, "cfg_scale"),
     ({"seed": "x"}, "seed"), ({"batch_size": 0}, "batch_size"), ({"override_settings": 3}, "override_settings")],
)
def test_wrongly_typed_field_is_422_naming_it(client, patch, field):
    r = client.post("/sdapi/v1/txt2img", json={**T2I, **patch})
    assert r.status_code == 422
    assert ["body", field] in [e["loc"][:2] for e in r.json()["detail"]]


def test_not_json_and_non_object_bodies_are_422(client):
    assert client.post("/sdapi/v1/txt2img", content=b"{nope", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/sdapi/v1/txt2img", json=[1, 2]).status_code == 422


def test_unknown_extra_fields_are_ignored(client):
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "steps": 1, "restore_faces": False, "tiling": False,
                                                "eta": 1.0, "do_not_save_samples": False, "made_up": {"x": 1}})
    assert r.status_code == 200, r.text
    assert "made_up" not in r.json()["parameters"]


def test_unknown_scripts_are_refused_not_ignored(client):
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "script_name": "prompt matrix"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "script_name"]
    assert "'x/y/z plot'" in r.json()["detail"][0]["msg"]


def test_override_settings_checkpoint_and_clip_skip(client):
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "steps": 1, "override_settings": {
        "sd_model_checkpoint": "tiny-b.safetensors", "CLIP_stop_at_last_layers": 2}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["sd_model_name"] == "tiny-b"
    assert "Clip skip: 2" in info["infotexts"][0]
    # the override is for that request only
    after = json.loads(client.post("/sdapi/v1/txt2img", json={**T2I, "steps": 1}).json()["info"])
    assert after["sd_model_name"] == "tiny-a" and "Clip skip" not in after["infotexts"][0]


def test_bad_override_values_are_named(client):
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "override_settings": {"CLIP_stop_at_last_layers": 99}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "override_settings", "CLIP_stop_at_last_layers"]
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "override_settings": {"sd_model_checkpoint": 5}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "override_settings", "sd_model_checkpoint"]
    r = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {"override_settings": {"CLIP_stop_at_last_layers": 0}}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "request", "override_settings", "CLIP_stop_at_last_layers"]


def test_save_images_true_saves_unless_samples_save_is_off(client, shared):
    services = shared[0]
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "steps": 1, "save_images": True})
    paths = json.loads(r.json()["info"])["paths"]
    assert len(paths) == 1
    saved = services.settings.data_dir / "outputs" / "txt2img-images"
    assert saved in __import__("pathlib").Path(paths[0]).parents
    with Image.open(paths[0]) as im:
        assert im.info["parameters"] == json.loads(r.json()["info"])["infotexts"][0]
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "steps": 1, "save_images": True,
                                                "override_settings": {"samples_save": False}})
    assert json.loads(r.json()["info"])["paths"] == []


# ---------------------------------------------------------------------------------------------
# images in: base64 forms, png-info


def test_png_info_reads_back_the_parameters_raw_and_data_url(client):
    made = client.post("/sdapi/v1/txt2img", json=T2I).json()
    raw = made["images"][0]
    infotext = json.loads(made["info"])["infotexts"][0]
    for form in (raw, "data:image/png;base64," + raw):
        r = client.post("/sdapi/v1/png-info", json={"image": form})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["info"] == infotext
        p = body["parameters"]
        assert p["Prompt"] == "a red apple" and p["Negative prompt"] == "blurry"
        assert p["Seed"] == "7" and p["Steps"] == "2" and p["Size-1"] == "32" and p["Model"] == "tiny-a"


def test_png_info_of_an_image_without_parameters(client):
    r = client.post("/sdapi/v1/png-info", json={"image": png_b64()})
    assert r.status_code == 200
    assert r.json()["info"] == "" and r.json()["parameters"] == {}


@pytest.mark.parametrize("bad", ["not base64 at all!!", base64.b64encode(b"plain text, not an image").decode(),
                                 "data:text/plain,hello", ""])
def test_bad_base64_image_is_422_naming_the_field(client, bad):
    r = client.post("/sdapi/v1/png-info", json={"image": bad})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "image"]
    r = client.post("/sdapi/v1/img2img", json={**T2I, "init_images": [png_b64(), bad]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "init_images", 1]


def test_img2img_needs_an_init_image_and_a_readable_mask(client):
    r = client.post("/sdapi/v1/img2img", json=T2I)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "init_images"]
    r = client.post("/sdapi/v1/img2img", json={**T2I, "init_images": [png_b64()], "mask": "%%%"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "mask"]


def test_img2img_and_inpainting(client):
    init = png_b64((250, 10, 10))
    r = client.post("/sdapi/v1/img2img", json={**T2I, "steps": 2, "init_images": ["data:image/png;base64," + init],
                                                "denoising_strength": 0.5})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "Denoising strength: 0.5" in info["infotexts"][0]
    assert r.json()["parameters"]["init_images"] is None  # include_init_images is False
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))  # repaint the left half only
    r = client.post("/sdapi/v1/img2img", json={**T2I, "steps": 2, "init_images": [init], "mask": encode_image_base64(mask),
                                                "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False,
                                                "denoising_strength": 1.0})
    assert r.status_code == 200, r.text
    out = b64_to_image(r.json()["images"][0]).convert("RGB")
    assert out.size == (32, 32)
    # the unmasked right half keeps the init image's colour
    assert out.getpixel((28, 16)) == (250, 10, 10)
    assert "Mask blur" in json.loads(r.json()["info"])["infotexts"][0]


def test_extra_single_image_upscales(client):
    r = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(size=(16, 12)), "upscaling_resize": 2,
                                                           "upscaler_1": "Lanczos"})
    assert r.status_code == 200, r.text
    assert b64_to_image(r.json()["image"]).size == (32, 24)
    r = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(), "upscaler_1": "Nonexistent"})
    assert r.status_code == 400 and "upscaler_1" in r.json()["detail"]
    r = client.post("/sdapi/v1/extra-single-image", json={"image": "???"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image"]


# ---------------------------------------------------------------------------------------------
# lists and status


def test_list_routes(client, shared):
    services = shared[0]
    names = [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert "Euler a" in names and "DPM++ 2M" in names
    assert "Karras" in [s["label"] for s in client.get("/sdapi/v1/schedulers").json()]
    models = client.get("/sdapi/v1/sd-models").json()
    by_name = {m["model_name"]: m for m in models}
    assert set(by_name) == {"tiny-a", "tiny-b", "tiny-folder"}
    a = by_name["tiny-a"]
    assert a["title"] == f"tiny-a.safetensors [{a['hash']}]" and a["sha256"].startswith(a["hash"])
    assert a["filename"].endswith("tiny-a.safetensors") and a["config"].endswith("tiny-a.yaml")
    assert by_name["tiny-folder"]["hash"] is None
    ups = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert ups[:3] == ["None", "Lanczos", "Nearest"] and "Latent" not in ups
    assert {"name": "Latent (nearest-exact)"} in client.get("/sdapi/v1/latent-upscale-modes").json()
    assert client.get("/sdapi/v1/sd-vae").json() == []
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert client.get("/sdapi/v1/loras").json() == []
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["data_dir"] == str(services.settings.data_dir) and flags["lowvram"] is False
    mem = client.get("/sdapi/v1/memory").json()
    assert mem["ram"]["total"] > 0 and mem["ram"]["free"] + mem["ram"]["used"] == mem["ram"]["total"]
    assert "error" in mem["cuda"] or "system" in mem["cuda"]


def test_prompt_styles_come_from_styles_csv(client, shared):
    path = shared[0].settings.data_dir / "styles.csv"
    path.write_text('name,prompt,negative_prompt\nnoir,"{prompt}, black and white",color\n')
    try:
        assert client.get("/sdapi/v1/prompt-styles").json() == [
            {"name": "noir", "prompt": "{prompt}, black and white", "negative_prompt": "color"}]
    finally:
        path.unlink()


def test_refresh_checkpoints_finds_new_files(client, shared):
    folder = shared[0].settings.data_dir / "models" / "Stable-diffusion"
    shutil.copy(folder / "tiny-b.safetensors", folder / "tiny-c.safetensors")
    try:
        assert "tiny-c" not in [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()]
        assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        assert "tiny-c" in [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()]
    finally:
        (folder / "tiny-c.safetensors").unlink()
        client.post("/sdapi/v1/refresh-checkpoints")


def test_progress_when_idle(client):
    body = client.get("/sdapi/v1/progress").json()
    assert body["progress"] == 0 and body["eta_relative"] == 0
    assert body["state"]["job_count"] == 0 and body["current_image"] is None


def test_openapi_documents_every_route(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("txt2img", "img2img", "extra-single-image", "png-info", "progress", "interrupt", "skip", "options",
                 "sd-models", "refresh-checkpoints", "samplers", "schedulers", "upscalers", "latent-upscale-modes",
                 "sd-vae", "prompt-styles", "embeddings", "loras", "cmd-flags", "memory"):
        assert f"/sdapi/v1/{path}" in paths, path
    assert "/easel/v1/jobs" in paths and "/easel/v1/jobs/{job_id}" in paths
    t2i = schema["components"]["schemas"]["Txt2ImgBody"]["properties"]
    assert t2i["width"]["default"] == 512 and t2i["steps"]["default"] == 50 and t2i["save_images"]["default"] is False
    assert client.get("/docs").status_code == 200


# ---------------------------------------------------------------------------------------------
# options


def test_options_round_trip_and_persistence(services):
    with TestClient(create_app(services)) as client:
        opts = client.get("/sdapi/v1/options").json()
        a = services.checkpoints.get("tiny-a")
        assert opts["sd_model_checkpoint"] == services.checkpoints.title(a)
        assert opts["sd_checkpoint_hash"] == services.checkpoints.sha256(a)
        assert opts["samples_save"] is True and opts["outdir_txt2img_samples"] == "outputs/txt2img-images"
        assert opts["CLIP_stop_at_last_layers"] == 1
        # posting back everything GET gave is accepted and changes nothing
        assert client.post("/sdapi/v1/options", json=opts).status_code == 200
        r = client.post("/sdapi/v1/options", json={"samples_save": False, "default_steps": 30,
                                                   "outdir_txt2img_samples": "outputs/mine", "some_a1111_option": 1})
        assert r.status_code == 200, r.text
        assert r.json() is None  # A1111 answers null
        assert r.headers["Easel-Ignored-Options"] == "some_a1111_option"
        assert "Easel-Model-Switch-Job" not in r.headers
        saved = json.loads(services.settings.config_file.read_text())
        assert saved["samples_save"] is False and saved["default_steps"] == 30
        assert saved["outdir_txt2img_samples"] == "outputs/mine"
        again = client.get("/sdapi/v1/options").json()
        assert again["samples_save"] is False and again["default_steps"] == 30
        assert services.settings.default_steps == 30
        reloaded = load_settings(services.settings.data_dir)
        assert reloaded.default_steps == 30 and reloaded.samples_save is False


@pytest.mark.parametrize(
    ("values", "field"),
    [({"default_steps": "lots", "samples_save": False}, "default_steps"),
     ({"samples_save": False, "max_queue": 0}, "max_queue"),
     ({"samples_save": False, "outdir_txt2img_samples": "/etc"}, "outdir_txt2img_samples"),
     ({"samples_save": False, "outdir_img2img_samples": "../../elsewhere"}, "outdir_img2img_samples"),
     ({"samples_save": False, "sd_model_checkpoint": "no-such-model"}, "sd_model_checkpoint"),
     ({"samples_save": False, "data_dir": "/tmp"}, "data_dir"),
     ({"samples_save": False, "CLIP_stop_at_last_layers": 0}, "CLIP_stop_at_last_layers"),
     ({"samples_save": False, "samples_format": "gif"}, "samples_format")],
)
def test_bad_option_is_422_and_nothing_is_saved(services, values, field):
    with TestClient(create_app(services)) as client:
        before = services.settings
        r = client.post("/sdapi/v1/options", json=values)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", field]
        assert services.settings is before and services.settings.samples_save is True
        assert not services.settings.config_file.exists()


def test_model_switch_via_options_is_queued_behind_earlier_jobs(paused):
    services, client = paused
    first = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {**T2I, "steps": 1}})
    assert first.status_code == 202
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-b.safetensors [ignored]"})
    assert r.status_code == 200, r.text
    assert r.json() is None
    switch_id = r.headers["Easel-Model-Switch-Job"]
    assert switch_id is not None
    second = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {**T2I, "steps": 1}})
    assert [j["id"] for j in client.get("/easel/v1/jobs").json()] == [first.json()["id"], switch_id, second.json()["id"]]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-b.safetensors [")
    assert json.loads(services.settings.config_file.read_text())["sd_model_checkpoint"] == "tiny-b.safetensors"
    services.queue.start()
    done_first = wait_job(client, first.json()["id"])
    done_second = wait_job(client, second.json()["id"])
    assert done_first["state"] == "done" and done_second["state"] == "done"
    assert done_first["result"]["info"]["sd_model_name"] == "tiny-a"
    assert done_second["result"]["info"]["sd_model_name"] == "tiny-b"


# ---------------------------------------------------------------------------------------------
# the async job API and the queue


def test_async_job_lifecycle(client):
    r = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {**T2I, "save_images": False}})
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["kind"] == "txt2img" and created["state"] in ("queued", "running", "done")
    assert r.headers["location"] == f"/easel/v1/jobs/{created['id']}"
    done = wait_job(client, created["id"])
    assert done["state"] == "done" and done["error"] is None and done["position"] == -1
    assert done["progress"] == {"step": 2, "total": 2, "fraction": 1.0, "eta": 0.0}
    assert b64_to_image(done["result"]["images"][0]).size == (32, 32)
    assert done["result"]["info"]["all_seeds"] == [7]
    assert done["finished"] >= done["started"] >= done["created"]


def test_async_job_bad_input(client):
    assert client.get("/easel/v1/jobs/nope").status_code == 404
    assert client.delete("/easel/v1/jobs/nope").status_code == 404
    r = client.post("/easel/v1/jobs", json={"type": "dance", "request": {}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body"
    r = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {"steps": "x"}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "steps"
    r = client.post("/easel/v1/jobs", json={"type": "img2img", "request": {"init_images": ["@@"]}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "request", "init_images", 0]
    r = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {"sampler_name": "nope"}})
    assert r.status_code == 400 and "Euler a" in r.json()["detail"]


def test_cancel_queued_job_and_429_when_full(data_dir):
    services = build_services(load_settings(data_dir, {"max_queue": 1}), start=False)
    try:
        with TestClient(create_app(services)) as client:
            first = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": T2I})
            assert first.status_code == 202 and first.json()["position"] == 1
            full = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": T2I})
            assert full.status_code == 429
            assert int(full.headers["retry-after"]) >= 1
            assert "max_queued=1" in full.json()["detail"] and full.json()["error"] == "QueueFull"
            assert client.post("/sdapi/v1/txt2img", json=T2I).status_code == 429
            r = client.delete(f"/easel/v1/jobs/{first.json()['id']}")
            assert r.status_code == 200 and r.json() == {"id": first.json()["id"], "state": "cancelled", "cancelled": True}
            assert client.get(f"/easel/v1/jobs/{first.json()['id']}").json()["state"] == "cancelled"
            again = client.delete(f"/easel/v1/jobs/{first.json()['id']}")
            assert again.json()["cancelled"] is False
            assert client.post("/easel/v1/jobs", json={"type": "txt2img", "request": T2I}).status_code == 202
    finally:
        services.close()


def test_progress_preview_and_interrupt_of_a_running_blocking_request(services):
    with TestClient(create_app(services)) as client:
        assert client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 1}).status_code == 200
        answer: dict = {}

        def call() -> None:
            answer["r"] = client.post("/sdapi/v1/txt2img", json={**T2I, "steps": 150})

        thread = threading.Thread(target=call)
        thread.start()
        seen = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = client.get("/sdapi/v1/progress").json()
            if body["state"]["sampling_step"] >= 2 and body["current_image"]:
                seen = body
                break
            time.sleep(0.05)
        assert seen is not None, "no progress seen within 60 s"
        assert seen["state"]["job"] == "txt2img" and seen["state"]["job_count"] == 1
        assert seen["state"]["sampling_steps"] == 150 and 0 < seen["progress"] < 1
        assert b64_to_image(seen["current_image"]).size == (32, 32)
        no_image = client.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
        assert no_image["current_image"] is None
        assert client.post("/sdapi/v1/interrupt").status_code == 200
        thread.join(60)
        assert not thread.is_alive()
        r = answer["r"]
        assert r.status_code == 200
        info = json.loads(r.json()["info"])  # the partial image of where sampling stopped, as A1111 answers
        assert len(r.json()["images"]) == 1 and info["interrupted"] is True and len(info["infotexts"]) == 1
        assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_delete_running_job_interrupts_it(client):
    job = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {**T2I, "steps": 150}}).json()
    deadline = time.monotonic() + 60
    while client.get(f"/easel/v1/jobs/{job['id']}").json()["progress"]["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status = client.get(f"/easel/v1/jobs/{job['id']}").json()
    assert status["state"] == "running" and status["position"] == 0 and status["progress"]["total"] == 150
    assert client.delete(f"/easel/v1/jobs/{job['id']}").json()["cancelled"] is True
    status = wait_job(client, job["id"])  # interrupted: done, with the partial image it made
    assert status["state"] == "done" and status["interrupted"] is True and len(status["result"]["images"]) == 1


def test_sd_vae_lists_models_vae_and_options_validate_it(data_dir):
    (data_dir / "models" / "VAE").mkdir()
    (data_dir / "models" / "VAE" / "fancy.safetensors").write_bytes(b"not read until used")
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0}), start=False)
    with TestClient(create_app(services)) as client:
        assert client.get("/sdapi/v1/sd-vae").json() == [
            {"model_name": "fancy.safetensors", "filename": str(data_dir / "models" / "VAE" / "fancy.safetensors")}]
        bad = client.post("/sdapi/v1/options", json={"sd_vae": "nope.pt"})
        assert bad.status_code == 422 and "sd_vae" in bad.text and "fancy.safetensors" in bad.text
        assert client.post("/sdapi/v1/options", json={"sd_vae": "fancy.safetensors"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_vae"] == "fancy.safetensors"
    services.close()
