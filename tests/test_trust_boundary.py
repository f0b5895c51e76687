"""Issue #19's trust boundary: what an untrusted client may touch on disk, one auth policy for the
UI's Gradio endpoints and the HTTP API, settings that never break the next start. Each test is one
finding, tried as an attacker would, against a real server (uvicorn or Gradio's)."""

from __future__ import annotations

import base64
import io
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from PIL import Image

from modules import cli
from modules.api import create_app
from modules.api.guard import MAX_BODY_BYTES
from modules.auth import AuthPolicy
from modules.config import load_settings
from modules.services import build_services
from tests.served import served

ALICE = ("alice", "s3cret")  # --gradio-auth
BOB = ("bob", "hunter2")  # --api-auth


def png_b64(size=(8, 8)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def api(data_dir) -> Iterator[tuple[httpx.Client, object]]:
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0}))
    with served(create_app(services)) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client, services
    services.close()


def saved_config(services) -> dict:
    path = services.settings.config_file
    return json.loads(path.read_text()) if path.exists() else {}


# ---------------------------------------------------------------------------------------------
# settings: folders, file name pattern, values that would stop the next start


@pytest.mark.parametrize("option, value", [
    ("lora_dir", "/tmp/anywhere"),
    ("embeddings_dir", "../outside"),
    ("outdir_txt2img_samples", "/etc"),
    ("outdir_img2img_samples", "outputs/../../x"),
    ("outdir_extras_samples", "C:\\Windows"),
    ("samples_filename_pattern", "../../../../tmp/x-[number]"),
    ("samples_filename_pattern", "sub/dir-[seed]"),
    ("reserve_vram_gb", 1e999),
    ("sd_checkpoints_max_ram_gb", float("nan")),
    ("device", "cuda:99"),
    ("precision", "fp16"),  # refused on the CPU: the next start would fail
    ("data_dir", "/"),
])
def test_options_refuse_what_escapes_the_data_folder_or_breaks_the_next_start(api, option, value):
    client, services = api
    before, config_before = services.settings, saved_config(services)
    body = json.dumps({option: value}, allow_nan=True)  # NaN/Infinity as Python's json writes them
    r = client.post("/sdapi/v1/options", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", option]
    assert services.settings == before and saved_config(services) == config_before
    # the next start still works with what is saved
    assert load_settings(services.settings.data_dir) is not None


def test_folders_inside_the_data_folder_are_accepted_and_saved(api):
    client, services = api
    r = client.post("/sdapi/v1/options", json={"lora_dir": "models/MyLoras", "outdir_txt2img_samples": "outputs/mine",
                                               "samples_filename_pattern": "[seed]-[prompt_words]"})
    assert r.status_code == 200, r.text
    assert saved_config(services)["lora_dir"] == "models/MyLoras"
    assert services.settings.outdir_txt2img_samples == "outputs/mine"


def test_an_operator_folder_outside_stays_while_a_client_changes_other_options(data_dir):
    """An absolute folder set by the operator in config.json is not a client's: it is kept, and
    changing another option does not fail on it."""
    (data_dir / "config.json").write_text(json.dumps({"lora_dir": str(data_dir.parent / "shared-loras")}))
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0}), start=False)
    try:
        with served(create_app(services)) as port:
            base = f"http://127.0.0.1:{port}"
            r = httpx.post(f"{base}/sdapi/v1/options", json={"default_steps": 12, "lora_dir": services.settings.lora_dir})
            assert r.status_code == 200, r.text
            assert saved_config(services)["lora_dir"] == str(data_dir.parent / "shared-loras")
            r = httpx.post(f"{base}/sdapi/v1/options", json={"lora_dir": str(data_dir.parent / "elsewhere")})
            assert r.status_code == 422
    finally:
        services.close()


def test_lora_training_output_cannot_leave_the_lora_folder(api):
    """Finding 1's second half: with lora_dir refused, output_name is the only handle, and it takes no folders."""
    client, _ = api
    body = {"method": "lora", "instance_prompt": "a zwx shape", "output_name": "../../x", "overwrite": True,
            "instance_images": [png_b64()] * 3}
    r = client.post("/easel/v1/train", json=body)
    assert r.status_code == 422 and "output_name" in r.text


# ---------------------------------------------------------------------------------------------
# training: server paths


def test_train_api_opens_no_server_path(api, tmp_path):
    client, _ = api
    folder = tmp_path / "private"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(folder / f"secret{i}.png")
    base = {"method": "lora", "instance_prompt": "a zwx shape", "output_name": "probe"}
    # file paths as image strings are not opened: they are no base64 images
    r = client.post("/easel/v1/train", json={**base, "instance_images": [str(p) for p in sorted(folder.iterdir())]})
    assert r.status_code == 400 and "0 readable images" in r.text and "secret" not in r.text
    # folders: refused alike whether they exist or not, naming no file
    answers = [client.post("/easel/v1/train", json={**base, "instance_dir": str(path)})
               for path in (folder, tmp_path / "missing", "/etc")]
    assert {a.status_code for a in answers} == {400}
    assert len({a.json()["detail"] for a in answers}) == 1
    assert "--allow-server-paths" in answers[0].text and "secret" not in answers[0].text
    r = client.post("/easel/v1/train", json={**base, "instance_images": [png_b64()] * 3,
                                             "with_prior_preservation": True, "class_dir": str(folder)})
    assert r.status_code == 400 and "class_dir" in r.text and "--allow-server-paths" in r.text


# ---------------------------------------------------------------------------------------------
# the auth matrix: {no auth, --gradio-auth, --api-auth, both} x {REST, Gradio settings call, upload, read}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def ui_server(services, gradio_auth=None, api_auth=None) -> Iterator[str]:
    from webui.server import start

    port = free_port()
    server = start(services, port=port, api=True, quiet=True, auth=gradio_auth, api_auth=api_auth)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


@contextmanager
def gradio_client(base: str, login: tuple[str, str] | None) -> Iterator[httpx.Client]:
    """An HTTP client of the Gradio app, logged in through /login when ``login`` is given."""
    with httpx.Client(base_url=base, timeout=60) as client:
        if login is not None:
            r = client.post("/login", data={"username": login[0], "password": login[1]})
            assert r.status_code == 200, r.text
        yield client


def settings_call(client: httpx.Client, steps: int) -> int:
    """Call the Settings tab's Apply through Gradio's API (as a script would); the HTTP status."""
    info = client.get("/gradio_api/info")
    if info.status_code != 200:
        return info.status_code
    params = info.json()["named_endpoints"]["/settings_apply"]["parameters"]
    values = {"Default steps (1-150)": steps}
    data = [values.get(p["label"], p.get("parameter_default")) for p in params]
    r = client.post("/gradio_api/call/settings_apply", json={"data": data})
    if r.status_code != 200:
        return r.status_code
    event = r.json()["event_id"]
    with client.stream("GET", f"/gradio_api/call/settings_apply/{event}") as stream:
        text = "".join(stream.iter_text())
    return 200 if "event: complete" in text else 500


CASES = {  # flags -> (REST credentials that work, UI login that works)
    "none": ({}, None, None),
    "gradio": ({"gradio_auth": [ALICE]}, ALICE, ALICE),
    "api": ({"api_auth": [BOB]}, BOB, BOB),
    "both": ({"gradio_auth": [ALICE], "api_auth": [BOB]}, BOB, ALICE),
}


@pytest.mark.parametrize("case", list(CASES))
def test_auth_matrix(services, case):
    flags, rest_user, ui_user = CASES[case]
    with ui_server(services, **flags) as base:
        # REST: a state-changing route
        anonymous = httpx.post(f"{base}/sdapi/v1/options", json={"default_steps": 21}, timeout=60)
        if rest_user is None:
            assert anonymous.status_code == 200
        else:
            assert anonymous.status_code == 401
            good = httpx.post(f"{base}/sdapi/v1/options", json={"default_steps": 22}, auth=rest_user, timeout=60)
            assert good.status_code == 200
            wrong = ALICE if rest_user == BOB else BOB
            if case != "both" or wrong == ALICE:
                assert httpx.post(f"{base}/sdapi/v1/options", json={"default_steps": 23}, auth=wrong,
                                  timeout=60).status_code == 401
        # Gradio: the settings handler, an upload, and reading a served file
        with gradio_client(base, None) as anon:
            status = settings_call(anon, 30)
            upload = anon.post("/gradio_api/upload", files={"files": ("a.png", base64.b64decode(png_b64()), "image/png")})
            if ui_user is None:
                assert status == 200 and services.settings.default_steps == 30
                assert upload.status_code == 200
                path = upload.json()[0]
                assert anon.get(f"/gradio_api/file={path}").status_code == 200
                continue_check = False
            else:
                assert status in (401, 403) and services.settings.default_steps != 30
                assert upload.status_code in (401, 403)
                continue_check = True
        if continue_check:
            with gradio_client(base, ui_user) as user:
                assert settings_call(user, 31) == 200 and services.settings.default_steps == 31
                upload = user.post("/gradio_api/upload",
                                   files={"files": ("a.png", base64.b64decode(png_b64()), "image/png")})
                assert upload.status_code == 200
                path = upload.json()[0]
                assert user.get(f"/gradio_api/file={path}").status_code == 200
            with gradio_client(base, None) as anon:
                assert anon.get(f"/gradio_api/file={path}").status_code in (401, 403)
        # uploads are bounded like API bodies
        with gradio_client(base, ui_user) as user:
            big = user.post("/gradio_api/upload", files={"files": ("big.png", b"\0" * (MAX_BODY_BYTES + 1), "image/png")})
            assert big.status_code in (400, 413), big.status_code
        # the API's docs are served with the UI too (they hold no data)
        assert httpx.get(f"{base}/docs", timeout=60).status_code == 200


def test_settings_tab_refuses_outside_folders_through_gradio(services):
    """Finding 3: the UI's Settings handler goes through the same checks as the REST route."""
    from webui import settings as settings_tab

    before = services.settings
    for values in ({"outdir_txt2img_samples": "/tmp/evil"}, {"lora_dir": "../x"},
                   {"samples_filename_pattern": "../../x-[number]"}):
        with pytest.raises(ValueError, match=next(iter(values))):
            settings_tab.apply(services, values)
    assert services.settings == before and not services.settings.config_file.exists()


# ---------------------------------------------------------------------------------------------
# start-up: share links and warnings


def test_share_without_credentials_is_refused_unless_insecure(data_dir, capsys):
    started = []

    def serve_ui(*args, **kwargs):
        started.append(kwargs)

    assert cli.main(["--share", "--data-dir", str(data_dir)], serve_ui) == 2
    assert "--share-insecure" in capsys.readouterr().err and not started
    assert cli.main(["--share", "--share-insecure", "--data-dir", str(data_dir)], serve_ui) == 0
    assert "WARNING: no credentials: anyone on the internet" in capsys.readouterr().err
    assert cli.main(["--share", "--gradio-auth", "alice:s3cret", "--api", "--data-dir", str(data_dir)], serve_ui) == 0
    err = capsys.readouterr().err
    assert "WARNING" not in err and "the HTTP API requires the --gradio-auth credentials too" in err
    assert len(started) == 2


def test_listen_without_credentials_names_the_ui_and_the_api():
    notes = AuthPolicy().start_warnings(exposed=True, share=False, webui=True, api=True)
    assert len(notes) == 1 and "the web UI and the HTTP API" in notes[0] and "network" in notes[0]
    assert AuthPolicy(api_auth=(BOB,)).start_warnings(exposed=True, share=False, webui=True, api=True) == [
        "note: --api-auth without --gradio-auth: the web UI asks for the --api-auth credentials too"]
    assert AuthPolicy(api_auth=(BOB,)).ui == (BOB,) and AuthPolicy(gradio_auth=(ALICE,)).api == (ALICE,)


def test_training_images_over_the_pixel_budget_are_skipped_before_decoding(services):
    from modules.training import job as training
    from tests.test_training import FAST, images

    services.update_settings(services.settings.model_copy(update={"max_input_pixels": 64 * 64}))
    request = training.build_request(services, FAST, uploads=[png_b64((100, 100)), *images(3)])
    assert len(request.instance_images) == 3
    assert any("100x100" in w and "at most 4096 pixels" in w for w in request.warnings), request.warnings


def test_every_client_gets_the_same_request_checks_before_the_queue(services):
    """Services.submit is the one place: the web UI's path (submit_all) is limited as the API is."""
    from modules.request_checks import MAX_IMAGE_STEPS
    from modules.schemas import RequestError, Txt2ImgRequest

    limit = services.settings.max_side
    with pytest.raises(RequestError, match=f"width: {limit + 64} is larger than the limit of {limit}"):
        services.submit("txt2img", Txt2ImgRequest(width=limit + 64, height=64, steps=1))
    with pytest.raises(RequestError, match="sampler_name"):
        services.submit("txt2img", Txt2ImgRequest(width=64, height=64, steps=1, sampler_name="Nope"))
    cell = Txt2ImgRequest(width=64, height=64, steps=100, batch_size=4)  # 400 steps a cell
    cells = MAX_IMAGE_STEPS // 400 + 1
    with pytest.raises(RequestError, match=f"over {cells} grid cells"):
        services.submit_all([("txt2img", cell)] * cells)
    assert services.queue.job_count() == 0  # nothing was queued
