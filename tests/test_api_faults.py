"""Faults on a real uvicorn server: NaN/Infinity in any number is a 422 naming the field (never a
500); a disk that cannot take the images answers 507 with the images; crashed saves' temporary
files are cleaned at start-up."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from modules import images
from modules.api import create_app
from modules.config import load_settings
from modules.images import ImageSaveError, ImageSaver, remove_stale_temp_files
from modules.schemas import Txt2ImgRequest
from modules.services import build_services, output_folders
from tests.served import served
from tests.test_api import make_data_dir, png_b64

TINY = {"prompt": "a cat", "steps": 1, "width": 16, "height": 16, "cfg_scale": 1.0, "seed": 3}


def strict_json(text: str) -> object:
    """Parse ``text`` as strict JSON: NaN/Infinity are not JSON and fail here."""
    def refuse(name: str) -> object:
        raise ValueError(f"the answer holds {name}, which is not JSON")
    return json.loads(text, parse_constant=refuse)


def raw_post(client: httpx.Client, path: str, body_text: str) -> httpx.Response:
    """POST a JSON text as written (json.dumps would refuse NaN; Python's json.loads reads it)."""
    return client.post(path, content=body_text.encode(), headers={"content-type": "application/json"})


# ---------------------------------------------------------------------------------------------
# NaN and Infinity


@pytest.fixture(scope="module")
def paused_base(tmp_path_factory, tiny_models_dir):
    """A real server whose worker never starts: every request here is refused before it is queued."""
    data = make_data_dir(tmp_path_factory.mktemp("api-nan"), tiny_models_dir)
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}), start=False)
    with served(create_app(services)) as port:
        yield f"http://127.0.0.1:{port}"
    services.close()


IMG = png_b64(size=(16, 16))
NON_FINITE_CASES = [
    # (path, JSON body text, the loc that must be named (its last parts), a word of the message)
    ("/sdapi/v1/txt2img", '{"prompt": "x", "cfg_scale": NaN}', ("cfg_scale",), "finite"),
    ("/sdapi/v1/txt2img", '{"prompt": "x", "subseed_strength": -Infinity}', ("subseed_strength",), "finite"),
    ("/sdapi/v1/txt2img", '{"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": NaN}}',
     ("override_settings",), "CLIP_stop_at_last_layers"),
    ("/sdapi/v1/txt2img", '{"prompt": "x", "script_name": "x/y/z plot", "script_args": [1, "7,NaN", NaN]}',
     ("script_args",), "[2]"),
    ("/sdapi/v1/txt2img", '{"prompt": "x", "alwayson_scripts": {"controlnet": {"args": [{"weight": NaN}]}}}',
     ("alwayson_scripts",), "weight"),
    ("/sdapi/v1/txt2img", '{"prompt": "x", "controlnet_units": [{"threshold_a": Infinity}]}',
     ("controlnet_units", 0, "threshold_a"), "finite"),
    ("/sdapi/v1/img2img", f'{{"init_images": ["{IMG}"], "denoising_strength": Infinity}}',
     ("denoising_strength",), "finite"),
    ("/sdapi/v1/extra-single-image", f'{{"image": "{IMG}", "upscaling_resize": 1e999}}', ("upscaling_resize",), "finite"),
    ("/easel/v1/jobs", '{"type": "txt2img", "request": {"cfg_scale": NaN}}', ("request", "cfg_scale"), "finite"),
    ("/easel/v1/train", '{"instance_prompt": "a zwx shape", "learning_rate": NaN}', ("learning_rate",), "finite"),
    ("/easel/v1/train", '{"instance_prompt": "a zwx shape", "max_minutes": Infinity}', ("max_minutes",), "finite"),
    ("/controlnet/detect", f'{{"controlnet_input_images": ["{IMG}"], "controlnet_threshold_a": NaN}}',
     ("controlnet_threshold_a",), "finite"),
    ("/sdapi/v1/options", '{"reserve_vram_gb": 1e999}', ("reserve_vram_gb",), "finite"),
    ("/sdapi/v1/options", '{"sd_checkpoints_max_ram_gb": NaN}', ("sd_checkpoints_max_ram_gb",), "finite"),
]


@pytest.mark.parametrize(("path", "body", "loc", "word"), NON_FINITE_CASES,
                         ids=[f"{c[0]}:{'.'.join(map(str, c[2]))}" for c in NON_FINITE_CASES])
def test_nan_and_infinity_are_a_422_naming_the_field(paused_base, path, body, loc, word):
    with httpx.Client(base_url=paused_base, timeout=30) as client:
        response = raw_post(client, path, body)
    assert response.status_code == 422, (response.status_code, response.text[:500])
    detail = strict_json(response.text)["detail"]
    named = [e for e in detail if tuple(e["loc"][-len(loc):]) == loc]
    assert named, f"no error names {loc}: {detail}"
    assert any(word in e["msg"] for e in named), named


# ---------------------------------------------------------------------------------------------
# A disk that cannot take the images


def disk_full(image, folder: Path, infotext, fmt="PNG") -> Path:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))


@pytest.fixture
def live(data_dir):
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0}))
    with served(create_app(services)) as port:
        yield services, f"http://127.0.0.1:{port}"
    services.close()


def assert_png(text: str) -> None:
    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        assert image.size == (16, 16)


def test_disk_full_answers_507_with_the_images(live, monkeypatch):
    services, base = live
    monkeypatch.setattr(images, "_write_temp_image", disk_full)
    folder = services.settings.path(services.settings.outdir_txt2img_samples)
    with httpx.Client(base_url=base, timeout=60) as client:
        response = client.post("/sdapi/v1/txt2img", json={**TINY, "save_images": True, "batch_size": 2})
        unsaved = client.post("/sdapi/v1/txt2img", json=TINY)  # not asked to save: a plain 200
    assert response.status_code == 507, response.text[:300]
    body = response.json()
    assert len(body["images"]) == 2
    for text in body["images"]:
        assert_png(text)
    assert json.loads(body["info"])["all_seeds"] == [3, 4]
    assert body["error"] == "ImageSaveError"
    assert "the disk is full" in body["detail"] and str(folder) in body["detail"]
    assert "outdir_txt2img_samples" in body["detail"]
    assert body["detail"].count("could not save") == 1  # the same reason once, not once per image
    assert unsaved.status_code == 200
    assert not list(folder.rglob("*.png*"))


def test_disk_full_on_the_job_api_and_extras_answers_507_with_the_images(live, monkeypatch):
    services, base = live
    monkeypatch.setattr(images, "_write_temp_image", disk_full)
    with httpx.Client(base_url=base, timeout=60) as client:
        created = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": TINY})  # the job API saves
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        services.queue.get(job_id).wait(60)
        status = client.get(f"/easel/v1/jobs/{job_id}", params={"preview": "false"})
        extras = client.post("/sdapi/v1/extra-single-image",
                             json={"image": png_b64(size=(16, 16)), "upscaling_resize": 1, "save_images": True})
    assert status.status_code == 507, status.text[:300]
    body = status.json()
    assert body["state"] == "done" and body["error"] == "ImageSaveError"
    assert len(body["result"]["images"]) == 1 and "the disk is full" in body["detail"]
    assert extras.status_code == 507, extras.text[:300]
    assert extras.json()["image"] and "outdir_extras_samples" in extras.json()["detail"]


def test_an_output_folder_that_is_a_file_answers_507(tmp_path, tiny_models_dir):
    data = make_data_dir(tmp_path, tiny_models_dir)
    (data / "blocker").write_text("a file where the output folder should be")
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0,
                                                   "outdir_txt2img_samples": "blocker/txt2img"}))
    try:
        with served(create_app(services)) as port:
            response = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json={**TINY, "save_images": True},
                                  timeout=60)
    finally:
        services.close()
    assert response.status_code == 507, response.text[:300]
    assert len(response.json()["images"]) == 1
    assert str(data / "blocker" / "txt2img") in response.json()["detail"]


@pytest.mark.parametrize(("code", "words"), [
    (errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "quota"), (errno.EROFS, "read-only"),
    (errno.EACCES, "not writable"), (errno.EIO, os.strerror(errno.EIO)),
])
def test_a_failed_rename_raises_image_save_error_and_leaves_no_temporary_file(tmp_path, monkeypatch, code, words):
    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(images.os, "replace", refuse)
    with pytest.raises(ImageSaveError) as caught:
        ImageSaver().save_image(Image.new("RGB", (8, 8)), tmp_path, 1, "a cat", use_date_subdir=False)
    assert caught.value.errno == code and isinstance(caught.value, OSError)
    assert words in str(caught.value) and str(tmp_path) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_the_web_ui_shows_the_images_and_a_one_line_warning(services, monkeypatch):
    import gradio as gr

    from webui import runner
    from webui.widgets import output_panel

    with gr.Blocks():
        panel = output_panel("t", gr.Button(), gr.Button(), gr.Button())
    monkeypatch.setattr(images, "_write_temp_image", disk_full)
    batch = runner.Batch([("txt2img", Txt2ImgRequest(**TINY, save_images=True))])
    final = list(runner.stream_jobs(services, panel, lambda: batch, poll_seconds=0.01))[-1]
    assert [im.size for im in final[panel.gallery]] == [(16, 16)]
    message = final[panel.error]["value"]
    assert final[panel.error]["visible"] is True and "\n" not in message
    assert message.startswith("The images are shown but were not saved") and "the disk is full" in message


# ---------------------------------------------------------------------------------------------
# Temporary files left by crashed saves


def make_file(path: Path, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial png")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_stale_temporary_pngs_are_removed_and_the_rest_kept(tmp_path):
    out = tmp_path / "outputs" / "txt2img-images"
    old = [make_file(out / ".a1b2.png.tmp", 3600), make_file(out / "2024-01-02" / ".x_y.png.tmp", 120)]
    kept = [
        make_file(out / "2024-01-02" / ".fresh.png.tmp", 1),  # a save running now
        make_file(out / "2024-01-02" / "00001-7.png", 3600),
        make_file(out / "2024-01-02" / "notes.png.tmp", 3600),  # not hidden: not ours
        make_file(out / "2024-01-02" / "deeper" / ".old.png.tmp", 3600),  # deeper than save_image writes
    ]
    removed = remove_stale_temp_files([out, tmp_path / "missing"])
    assert sorted(removed) == sorted(old)
    assert not any(p.exists() for p in old) and all(p.exists() for p in kept)


def test_build_services_cleans_the_output_folders(data_dir):
    settings = load_settings(data_dir, {"show_progress_every_n_steps": 0})
    folders = output_folders(settings)
    assert settings.path(settings.outdir_extras_samples) in folders and len(folders) >= 3
    stale = [make_file(folder / "2024-01-02" / ".crash.png.tmp", 600) for folder in folders]
    build_services(settings, start=False).close()
    assert not any(p.exists() for p in stale)
