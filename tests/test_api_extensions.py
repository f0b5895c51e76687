"""Extensions through the HTTP API: /extensions, /scripts, /script-info, alwayson_scripts and script_name by title."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from modules.a1111_compat.loader import load_extensions, parse_cmd_opts
from modules.api import create_app
from modules.config import load_settings
from modules.services import build_services
from tests.test_api import T2I, b64_to_image, make_data_dir
from tests.test_extensions import FIXTURES


@pytest.fixture(scope="module")
def ext_client(tmp_path_factory, tiny_models_dir):
    data = make_data_dir(tmp_path_factory.mktemp("api-ext"), tiny_models_dir)
    for name in ("rewriter", "broken"):
        shutil.copytree(FIXTURES / name, data / "extensions" / name)
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    cmd_opts, errors = parse_cmd_opts(services.settings, ["--rewriter-flag", "yes"])
    extensions = load_extensions(services, cmd_opts, preload_errors=errors)
    with TestClient(create_app(services)) as client:
        yield services, client
    extensions.unload()
    services.close()


def test_extensions_are_listed_in_a1111_shape(ext_client):
    _, client = ext_client
    items = client.get("/sdapi/v1/extensions").json()
    assert [i["name"] for i in items] == ["broken", "rewriter"]
    assert set(items[0]) == {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"}


def test_extension_scripts_are_listed_with_their_args(ext_client):
    _, client = ext_client
    listed = client.get("/sdapi/v1/scripts").json()
    assert "flip images" in listed["txt2img"] and "prompt rewriter" in listed["img2img"]
    assert "prompt matrix" in listed["txt2img"] and "prompts from file or textbox" in listed["txt2img"]
    info = {(i["name"], i["is_img2img"]): i for i in client.get("/sdapi/v1/script-info").json()}
    rewriter = info[("prompt rewriter", False)]
    assert rewriter["is_alwayson"] is True
    assert [(a["label"], a["value"]) for a in rewriter["args"]] == [("Enable Prompt rewriter", False),
                                                                     ("Suffix", " by the rewriter")]


def test_alwayson_script_by_title_rewrites_prompts_into_the_infotext(ext_client):
    _, client = ext_client
    body = {**T2I, "steps": 1, "alwayson_scripts": {"Prompt Rewriter": {"args": [True, " at dawn"]}}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_prompts"] == ["a red apple at dawn 0"]
    assert "Rewriter: at dawn, Rewriter word: cat" in info["infotexts"][0]


def test_alwayson_args_must_be_an_args_object(ext_client):
    _, client = ext_client
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "alwayson_scripts": {"prompt rewriter": [True]}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "alwayson_scripts", "prompt rewriter"]
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "alwayson_scripts": {"nope": {"args": []}}})
    assert r.status_code == 422 and "'prompt rewriter'" in r.json()["detail"][0]["msg"]


def test_dropdown_script_by_name_and_unknown_names(ext_client):
    _, client = ext_client
    plain = client.post("/sdapi/v1/txt2img", json={**T2I, "steps": 1}).json()
    flipped = client.post("/sdapi/v1/txt2img", json={**T2I, "steps": 1, "script_name": "flip images",
                                                     "script_args": [True]})
    assert flipped.status_code == 200, flipped.text
    a, b = b64_to_image(plain["images"][0]), b64_to_image(flipped.json()["images"][0])
    from PIL import ImageOps

    assert ImageOps.mirror(a.convert("RGB")).tobytes() == b.convert("RGB").tobytes()
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "script_name": "Flip it"})
    assert r.status_code == 422 and "'flip images'" in r.json()["detail"][0]["msg"]


def test_on_app_started_route_reads_options_and_preload_flags(ext_client):
    _, client = ext_client
    assert client.get("/rewriter/ping").json() == {"word": "cat", "flag": "yes"}


def test_prompt_matrix_makes_every_combination_and_a_grid(ext_client):
    _, client = ext_client
    body = {**T2I, "steps": 1, "prompt": "a cat|in a hat|on a mat", "script_name": "Prompt matrix",
            "script_args": [False, False, "positive", "comma", 0]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_prompts"][1:] == ["a cat", "a cat, in a hat", "a cat, on a mat", "a cat, in a hat, on a mat"]
    assert len(set(info["all_seeds"])) == 1
    images = [b64_to_image(i) for i in r.json()["images"]]
    assert len(images) == 5 and images[0].size == (64, 64)  # the 2x2 grid first
    assert info["infotexts"][1].endswith("Prompt matrix: a cat | in a hat | on a mat")
    bad = client.post("/sdapi/v1/txt2img", json={**body, "script_args": [False, False, "sideways"]})
    assert bad.status_code == 400 and "script_args[2]" in bad.text


def test_prompts_from_file_runs_one_job_per_line(ext_client):
    _, client = ext_client
    text = "a blue square\n\n--prompt \"a green star\" --seed 3 --steps 1\n"
    body = {**T2I, "steps": 1, "prompt": "", "script_name": "prompts from file or textbox",
            "script_args": [False, False, "start", text]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_prompts"] == ["a blue square", "a green star"] and info["all_seeds"][1] == 3
    assert len(r.json()["images"]) == 2
    bad = client.post("/sdapi/v1/txt2img", json={**body, "script_args": [False, False, "start", "--nope 1"]})
    assert bad.status_code == 400 and "line 1: unknown option '--nope'" in bad.text


def test_extension_options_through_the_options_api(ext_client):
    services, client = ext_client
    assert client.get("/sdapi/v1/options").json()["rewriter_word"] == "cat"
    r = client.post("/sdapi/v1/options", json={"rewriter_word": 5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "rewriter_word"]
    assert client.post("/sdapi/v1/options", json={"rewriter_word": "fox"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["rewriter_word"] == "fox"
    assert client.get("/rewriter/ping").json()["word"] == "fox"
    r = client.post("/sdapi/v1/options", json={"extensions_dir": "/tmp/elsewhere"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "extensions_dir"]
    client.post("/sdapi/v1/options", json={"rewriter_word": "cat"})


def test_on_infotext_pasted_changes_what_the_infotext_field_sets(ext_client):
    _, client = ext_client
    text = "a cat\nSteps: 9, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 32x32, Rewriter: hi"
    r = client.post("/sdapi/v1/txt2img", json={"infotext": text, "width": 32, "height": 32})
    assert r.status_code == 200, r.text
    assert "Steps: 1," in json.loads(r.json()["info"])["infotexts"][0]


def test_alwayson_script_on_img2img(ext_client):
    from tests.test_api import png_b64

    _, client = ext_client
    body = {**T2I, "steps": 1, "init_images": [png_b64()], "denoising_strength": 0.5,
            "alwayson_scripts": {"prompt rewriter": {"args": [True, "!"]}}}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_prompts"] == ["a red apple! 0"] and "Denoising strength: 0.5" in info["infotexts"][0]


def test_img2img_without_a_size_keeps_the_init_images_size_under_scripts(ext_client):
    from tests.test_api import png_b64

    _, client = ext_client
    body = {"prompt": "x", "steps": 1, "seed": 1, "init_images": [png_b64(size=(40, 24))],
            "alwayson_scripts": {"prompt rewriter": {"args": [True, "!"]}}}
    r = client.post("/sdapi/v1/img2img", json=body)
    plain = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": {}})
    assert r.status_code == 200, r.text
    assert b64_to_image(r.json()["images"][0]).size == b64_to_image(plain.json()["images"][0]).size
