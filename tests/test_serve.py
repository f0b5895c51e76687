"""Scale-out on Ray Serve (modules/serve): routing decisions alone, then a local Ray with two CPU
replicas on the tiny checkpoints (tiny-a, tiny-b, tiny-folder) behind the Serve ingress.

The cluster tests share one Ray instance per module (Ray and Serve take 20-60 s to start on the
2-core CI machine); the replica-kill test runs last in the module. Deselect them with
``-m 'not slow'``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from modules.serve.cli import autoscaling_config
from modules.serve.cli import main as serve_main
from modules.serve.routing import (
    ClusterJobId,
    Route,
    is_cancel,
    requested_checkpoint,
    route_of,
    with_cluster_ids,
    with_job_id,
)

AUTH = ("alice", "wonderland-7")
T2I = {"prompt": "a red apple", "steps": 2, "width": 32, "height": 32}
CHECKPOINTS = ["tiny-a", "tiny-b", "tiny-folder"]


# -- routing decisions (no ray) ---------------------------------------------------------------
def test_requested_checkpoint_reads_the_a1111_and_easel_fields():
    assert requested_checkpoint(json.dumps({"sd_model_checkpoint": "tiny-b"}).encode()) == "tiny-b"
    assert requested_checkpoint(json.dumps({"override_settings": {"sd_model_checkpoint": "x [123]"}}).encode()) == "x [123]"
    assert requested_checkpoint(json.dumps({"type": "txt2img", "request": {"sd_model_checkpoint": "c"}}).encode()) == "c"
    assert requested_checkpoint(json.dumps({"type": "txt2img", "request": {
        "override_settings": {"sd_model_checkpoint": "d"}}}).encode()) == "d"
    for body in (b"", b"not json", b"[1, 2]", json.dumps({"prompt": "x", "sd_model_checkpoint": None}).encode(),
                 json.dumps({"override_settings": "nonsense"}).encode()):
        assert requested_checkpoint(body) is None


def test_route_of_each_kind_of_request():
    assert route_of("POST", "/sdapi/v1/txt2img") is Route.one
    assert route_of("GET", "/sdapi/v1/sd-models") is Route.one
    assert route_of("POST", "/sdapi/v1/options") is Route.broadcast
    assert route_of("POST", "/sdapi/v1/interrupt") is Route.broadcast
    assert route_of("GET", "/sdapi/v1/options") is Route.one
    assert route_of("GET", "/sdapi/v1/progress") is Route.progress
    assert route_of("POST", "/easel/v1/jobs") is Route.job_submit
    assert route_of("GET", "/easel/v1/jobs") is Route.job_list
    assert route_of("GET", "/easel/v1/jobs/abc.def") is Route.job
    assert route_of("DELETE", "/easel/v1/jobs/abc.def") is Route.job
    assert route_of("GET", "/easel/v1/cluster") is Route.cluster
    # trainings and model installs answer cluster job ids too
    assert route_of("POST", "/easel/v1/train") is Route.job_submit
    assert route_of("GET", "/easel/v1/train/r.j") is Route.job
    assert route_of("POST", "/easel/v1/train/r.j/cancel") is Route.job
    assert route_of("POST", "/easel/v1/models/install") is Route.job_submit
    assert route_of("GET", "/easel/v1/models/install") is Route.job_list
    assert route_of("GET", "/easel/v1/models/install/r.j") is Route.job
    assert route_of("DELETE", "/easel/v1/models/install/r.j") is Route.job
    assert route_of("GET", "/easel/v1/models") is Route.one
    assert route_of("DELETE", "/easel/v1/models/lora/x.safetensors") is Route.one


def test_job_routes_name_the_replicas_own_job_id():
    assert with_job_id("/easel/v1/jobs/r.j", "j") == "/easel/v1/jobs/j"
    assert with_job_id("/easel/v1/train/r.j/cancel", "j") == "/easel/v1/train/j/cancel"
    assert with_job_id("/easel/v1/models/install/r.j", "j") == "/easel/v1/models/install/j"
    with pytest.raises(ValueError):
        with_job_id("/sdapi/v1/txt2img", "j")
    assert is_cancel("DELETE", "/easel/v1/jobs/r.j") and is_cancel("POST", "/easel/v1/train/r.j/cancel")
    assert not is_cancel("GET", "/easel/v1/train/r.j")


def test_autoscaling_flags_map_onto_serves_autoscaling_config():
    assert autoscaling_config(None, None, None) is None  # a fixed count (--replicas, default 1)
    assert autoscaling_config(None, None, None, fixed_replicas=3) is None
    assert autoscaling_config(2, 6, 1.5) == {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 6,
                                             "target_ongoing_requests": 1.5}
    assert autoscaling_config(None, 4, None) == {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 4,
                                                 "target_ongoing_requests": 2.0}
    for args, words in [((3, 2, None), "--min-replicas 3 is more than --max-replicas 2"),
                        ((0, 2, None), "must be at least 1"), ((None, 0, None), "must be at least 1"),
                        ((None, 2, 0.0), "--target-ongoing-requests 0 must be more than 0"),
                        ((None, 2, 33.0), "at most 32"), ((2, None, None), "need --max-replicas"),
                        ((None, None, 3.0), "need --max-replicas")]:
        with pytest.raises(ValueError, match=words):
            autoscaling_config(*args)
    with pytest.raises(ValueError, match="--replicas is a fixed count"):
        autoscaling_config(1, 3, None, fixed_replicas=2)


def test_autoscaling_reaches_the_worker_deployment():
    pytest.importorskip("ray.serve")
    from modules.serve.worker import WorkerOptions, make_worker

    scaled = make_worker(WorkerOptions(None), 1, autoscaling=autoscaling_config(1, 3, 1.5))._deployment_config
    auto = scaled.autoscaling_config
    assert (auto.min_replicas, auto.initial_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 1, 3, 1.5)
    fixed = make_worker(WorkerOptions(None), 2)._deployment_config
    assert fixed.num_replicas == 2 and fixed.autoscaling_config is None


@pytest.mark.parametrize("argv, words", [
    (["--min-replicas", "3", "--max-replicas", "2"], "error: --min-replicas 3 is more than --max-replicas 2"),
    (["--replicas", "2", "--max-replicas", "4"], "error: --replicas is a fixed count"),
    (["--outputs-url", "nosuchproto://x"], "error: --outputs-url 'nosuchproto://x': "),
    (["--outputs-url", "/just/a/path"], "error: --outputs-url '/just/a/path': give a URL"),
])
def test_serve_command_refuses_bad_scaling_and_outputs_flags_in_one_line(argv, words, tmp_path, capsys):
    assert serve_main(["--data-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(words) and "\n" not in err, err


def test_cluster_job_ids_name_their_replica():
    cid = ClusterJobId("rep1abcd", "0123abcd")
    assert str(cid) == "rep1abcd.0123abcd" and ClusterJobId.parse(str(cid)) == cid
    assert ClusterJobId.parse("no-separator") is None and ClusterJobId.parse(".x") is None
    body = with_cluster_ids(json.dumps([{"id": "j1", "state": "queued"}, {"id": "j2"}]).encode(), "r")
    assert [item["id"] for item in json.loads(body)] == ["r.j1", "r.j2"]
    assert json.loads(with_cluster_ids(json.dumps({"id": "j3"}).encode(), "r"))["id"] == "r.j3"


def test_the_plain_app_never_imports_ray():
    import subprocess
    import sys

    code = ("import sys, modules.api, modules.services, modules.cli, modules.serve.routing; "
            "sys.exit(1 if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__))).returncode == 0


# -- a local Ray cluster: 2 CPU replicas, 3 checkpoints -----------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def shared_outputs(tmp_path_factory):
    """The folder behind the cluster's --outputs-url (a file:// URL)."""
    return tmp_path_factory.mktemp("shared-outputs")


@pytest.fixture(scope="module")
def serve_data(tmp_path_factory):
    """The cluster's data folder (its replicas share it)."""
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def cluster(serve_data, tiny_models_dir, shared_outputs):
    """(base URL, httpx client with credentials) of a Serve app with 2 worker replicas, saving images to
    ``shared_outputs`` through --outputs-url, taking model installs from server paths."""
    pytest.importorskip("ray.serve")
    httpx = pytest.importorskip("httpx")
    from modules.config import load_settings
    from modules.serve.cli import ServeConfig, start, stop

    data = serve_data
    folder = data / "models" / "Stable-diffusion"
    shutil.copytree(tiny_models_dir, folder)
    (folder / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")  # cannot load
    settings = load_settings(data, {"show_progress_every_n_steps": 0, "sd_model_checkpoint": "tiny-a"})
    port = free_port()
    started = time.monotonic()
    start(ServeConfig(settings, replicas=2, max_models=2, api_auth=[AUTH], cpus_per_replica=0, allow_server_paths=True,
                      outputs_url=shared_outputs.as_uri()), port=port, quiet=True, num_cpus=2)
    print(f"\nRay + Serve with 2 replicas ready in {time.monotonic() - started:.1f} s")
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, auth=AUTH, timeout=180) as client:
        yield base, client
    stop()


def infotext(response) -> str:
    assert response.status_code == 200, response.text
    return json.loads(response.json()["info"])["infotexts"][0]


def cluster_info(client) -> dict:
    response = client.get("/easel/v1/cluster")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_cluster_describes_its_replicas(cluster):
    _, client = cluster
    info = cluster_info(client)
    assert len(info["replicas"]) == 2
    for replica in info["replicas"]:
        assert replica["device"] == "cpu" and replica["queue_length"] == 0
        assert isinstance(replica["loaded_checkpoints"], list) and replica["pid"] > 0
    assert info["default_checkpoint"].startswith("tiny-a.safetensors [")


@pytest.mark.slow
def test_mixed_requests_are_routed_to_replicas_holding_their_checkpoint(cluster):
    """30 txt2img naming 3 checkpoints at random, 4 at a time: all answer on the checkpoint named,
    with far fewer checkpoint loads than requests."""
    _, client = cluster
    before = cluster_info(client)["checkpoint_loads"]
    rng = random.Random(25)
    names = [rng.choice(CHECKPOINTS) for _ in range(30)]

    def one(i_name):
        i, name = i_name
        body = {**T2I, "seed": i} | ({"override_settings": {"sd_model_checkpoint": name}} if i % 2
                                     else {"sd_model_checkpoint": name})
        return name, client.post("/sdapi/v1/txt2img", json=body)

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, enumerate(names)))
    elapsed = time.monotonic() - started
    for name, response in results:
        assert f"Model: {name}," in infotext(response)
    info = cluster_info(client)
    loads = info["checkpoint_loads"] - before
    switches = sum(1 for a, b in zip([None, *names], names, strict=False) if a != b)
    print(f"\n30 requests over 3 checkpoints on 2 replicas in {elapsed:.1f} s: {loads} checkpoint loads "
          f"(naive: {len(names)} loads, one per request; one queue in this order would switch {switches} times); "
          f"per replica: {[(r['replica'], r['checkpoint_loads'], r['loaded_checkpoints']) for r in info['replicas']]}"
          f" {info['unreachable']}")
    assert loads <= 10 < switches


@pytest.mark.slow
def test_async_jobs_across_replicas(cluster):
    _, client = cluster
    ids = []
    for i, name in enumerate(CHECKPOINTS * 2):
        response = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {
            **T2I, "seed": i, "sd_model_checkpoint": name}})
        assert response.status_code == 202, response.text
        cid = response.json()["id"]
        assert response.headers["location"] == f"/easel/v1/jobs/{cid}" and ClusterJobId.parse(cid)
        ids.append((cid, name))
    assert len({ClusterJobId.parse(cid).replica for cid, _ in ids}) >= 1
    for cid, name in ids:
        deadline = time.monotonic() + 120
        while True:
            status = client.get(f"/easel/v1/jobs/{cid}", params={"preview": "false"}).json()
            if status["state"] not in ("queued", "running"):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["state"] == "done" and status["id"] == cid, status
        assert f"Model: {name}," in status["result"]["info"]["infotexts"][0]

    # cancel: a long job, deleted through its cluster id, stops on its replica (a running one is
    # interrupted and keeps what it made, a queued one is cancelled)
    response = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {**T2I, "steps": 150, "n_iter": 4}})
    assert response.status_code == 202, response.text
    cid = response.json()["id"]
    listed = [job["id"] for job in client.get("/easel/v1/jobs").json()]
    assert cid in listed
    cancel = client.delete(f"/easel/v1/jobs/{cid}")
    assert cancel.status_code == 200 and cancel.json()["id"] == cid, cancel.text
    deadline = time.monotonic() + 60
    while client.get(f"/easel/v1/jobs/{cid}").json()["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ended = client.get(f"/easel/v1/jobs/{cid}").json()
    assert ended["state"] == "cancelled" or (ended["state"] == "done" and ended["interrupted"]), ended
    missing = client.get("/easel/v1/jobs/nosuchreplica.0123")
    assert missing.status_code == 404 and missing.json()["error"] == "JobNotFound"


@pytest.mark.slow
def test_core_api_cases_through_the_ingress(cluster):
    base, client = cluster
    import httpx

    # auth and limits are the app's own
    assert httpx.get(f"{base}/sdapi/v1/sd-models").status_code == 401
    assert httpx.get(f"{base}/easel/v1/cluster").status_code == 401
    big = client.post("/sdapi/v1/txt2img", content=b"x" * (50 * 1024 * 1024 + 1),
                      headers={"content-type": "application/json"})
    assert big.status_code == 413 and big.json()["error"] == "RequestTooLarge"
    # lists, validation, unknown checkpoint
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert any(t.startswith("tiny-b.safetensors [") for t in titles)
    assert "Euler a" in [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    bad = client.post("/sdapi/v1/txt2img", json={**T2I, "steps": "many"})
    assert bad.status_code == 422 and "steps" in json.dumps(bad.json()["detail"])
    unknown = client.post("/sdapi/v1/txt2img", json={**T2I, "sd_model_checkpoint": "nope"})
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    # a checkpoint that cannot load: a clear error at once, not a hang
    started = time.monotonic()
    broken = client.post("/sdapi/v1/txt2img", json={**T2I, "sd_model_checkpoint": "broken"})
    assert broken.status_code == 500 and "broken" in broken.json()["detail"], broken.text
    assert time.monotonic() - started < 60
    # options reach every replica; progress answers
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
    for _ in range(4):  # any replica answers GET: each has the new value
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}).status_code == 200
    assert client.get("/sdapi/v1/progress").json()["progress"] == 0
    # docs are served by the replicas' app
    assert client.get("/openapi.json").json()["info"]["title"] == "Easel API"


@pytest.mark.slow
def test_saved_images_go_to_the_outputs_url(cluster, shared_outputs, serve_data):
    """save_images through the ingress: each replica writes under --outputs-url (file names ending in its
    id); the files are whole PNGs carrying the infotext the response gave, and the data folder gets none."""
    from PIL import Image

    from modules.images import read_infotext

    _, client = cluster
    replicas = {r["replica"] for r in cluster_info(client)["replicas"]}
    saved = []
    for seed, name in enumerate(["tiny-a", "tiny-b", "tiny-a"]):
        response = client.post("/sdapi/v1/txt2img", json={**T2I, "seed": seed, "sd_model_checkpoint": name,
                                                           "save_images": True})
        text = infotext(response)
        (url,) = json.loads(response.json()["info"])["paths"]
        assert url.startswith(shared_outputs.as_uri() + "/txt2img-images/"), url
        saved.append((url, text))
    for url, text in saved:
        path = shared_outputs / url.removeprefix(shared_outputs.as_uri() + "/")
        assert path.name.removesuffix(".png").rsplit("-", 1)[1] in replicas
        with Image.open(path) as image:
            assert image.size == (32, 32) and image.format == "PNG"
        assert read_infotext(path) == text
    assert not [p for p in shared_outputs.rglob("*") if p.name.startswith(".")]  # no temporary file left
    assert not any(serve_data.rglob("*.png"))


@pytest.mark.slow
def test_an_install_through_the_ingress_answers_a_cluster_id_and_every_replica_sees_the_model(
        cluster, serve_data, tmp_path_factory):
    """POST /easel/v1/models/install answers REPLICA.JOB, listed and followed on its replica; once it is
    done, every replica lists the new checkpoint and generates with it."""
    from tests.tiny_models import write_single_file

    _, client = cluster
    incoming = tmp_path_factory.mktemp("incoming")
    write_single_file(incoming, "tiny-new", seed=3)
    # the tiny model's own config, beside where the install will put it (a real SD checkpoint needs none)
    models = serve_data / "models" / "Stable-diffusion"
    shutil.copy(incoming / "tiny-new.yaml", models / "tiny-new.yaml")
    response = client.post("/easel/v1/models/install", json={"source": str(incoming / "tiny-new.safetensors")})
    assert response.status_code == 202, response.text
    cid = response.json()["id"]
    assert ClusterJobId.parse(cid) and response.headers["location"] == f"/easel/v1/models/install/{cid}"
    assert cid in [job["id"] for job in client.get("/easel/v1/models/install").json()]
    deadline = time.monotonic() + 120
    while (status := client.get(f"/easel/v1/models/install/{cid}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["state"] == "done" and status["id"] == cid, status
    assert status["result"]["name"] == "tiny-new.safetensors"
    for _ in range(6):  # whichever replica answers lists it (all were told to rescan)
        assert any(m["model_name"] == "tiny-new" for m in client.get("/sdapi/v1/sd-models").json())
    r = client.post("/sdapi/v1/txt2img", json={**T2I, "seed": 1, "sd_model_checkpoint": "tiny-new"})
    assert "Model: tiny-new," in infotext(r)
    missing = client.get("/easel/v1/models/install/nosuchreplica.0123")
    assert missing.status_code == 404


@pytest.mark.slow
def test_a_training_through_the_ingress_is_followed_and_cancelled_by_its_cluster_id(cluster):
    """POST /easel/v1/train answers REPLICA.JOB; GET /easel/v1/train/{id} and /easel/v1/jobs/{id} find it;
    once done, the new LoRA is listed by whichever replica answers; POST .../cancel stops a long one."""
    import base64
    import io

    from tests.tiny_models import noise_image

    def b64(image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    _, client = cluster
    body = {"instance_prompt": "a zwx shape", "class_prompt": "a shape", "steps": 2, "resolution": 32, "save_every": 0,
            "method": "lora", "output_name": "zwx-serve", "sd_model_checkpoint": "tiny-a",
            "instance_images": [b64(noise_image(40, 32, seed=i)) for i in range(3)]}

    def follow(cid: str, until: tuple[str, ...]) -> dict:
        deadline = time.monotonic() + 120
        while (status := client.get(f"/easel/v1/train/{cid}").json())["state"] not in until:
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        return status

    response = client.post("/easel/v1/train", json=body)
    assert response.status_code == 202, response.text
    cid = response.json()["id"]
    assert ClusterJobId.parse(cid) and response.headers["location"] == f"/easel/v1/train/{cid}"
    assert client.get(f"/easel/v1/jobs/{cid}", params={"preview": "false"}).json()["id"] == cid
    done = follow(cid, ("done", "failed", "cancelled"))
    assert done["state"] == "done" and done["id"] == cid and done["step"] == 2, done
    for _ in range(6):  # whichever replica answers lists it (all were told to rescan)
        assert "zwx-serve" in [lora["name"] for lora in client.get("/sdapi/v1/loras").json()]

    long = client.post("/easel/v1/train", json={**body, "output_name": "zwx-long", "steps": 100000})
    assert long.status_code == 202, long.text
    long_id = long.json()["id"]
    cancel = client.post(f"/easel/v1/train/{long_id}/cancel")
    assert cancel.status_code == 200 and cancel.json()["id"] == long_id, cancel.text
    assert follow(long_id, ("cancelled", "failed", "done"))["state"] == "cancelled"
    assert client.get("/easel/v1/train/nosuchreplica.0123").status_code == 404


@pytest.mark.slow
def test_webuiapi_client_through_the_ingress(cluster):
    webuiapi = pytest.importorskip("webuiapi")
    base, _ = cluster
    host, port = base.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=2)
    api.set_auth(*AUTH)
    # alwayson_scripts given explicitly: webuiapi mutates its default dict when a call in the same
    # process (tests/test_api_webuiapi.py) passed ControlNet units, and would resend them here
    r = api.txt2img(prompt="a red apple", seed=5, width=32, height=32, steps=2, alwayson_scripts={})
    assert r.image.size == (32, 32) and r.info["all_seeds"] == [5] and r.info["sd_model_name"] == "tiny-a"
    titles = api.util_get_model_names()
    b_title = next(t for t in titles if t.startswith("tiny-b.safetensors ["))
    r = api.txt2img(prompt="x", seed=1, width=32, height=32, steps=2, override_settings={"sd_model_checkpoint": b_title},
                    alwayson_scripts={})
    assert r.info["sd_model_name"] == "tiny-b"
    assert "Euler a" in api.util_get_sampler_names()


@pytest.mark.slow
def test_zz_a_replica_killed_during_a_job_the_request_still_completes(cluster):
    """Kill (SIGKILL) the replica running a sync txt2img: the ingress retries it on the other one."""
    _, client = cluster
    outcome = {}

    def generate():
        outcome["response"] = client.post("/sdapi/v1/txt2img", json={**T2I, "steps": 150, "n_iter": 3, "seed": 99,
                                                                     "sd_model_checkpoint": "tiny-b"})

    thread = threading.Thread(target=generate)
    thread.start()
    deadline = time.monotonic() + 120
    victim = None
    while victim is None:
        assert time.monotonic() < deadline, "the job never started"
        victim = next((r for r in cluster_info(client)["replicas"] if r["running"] == "txt2img"), None)
        time.sleep(0.05)
    os.kill(victim["pid"], signal.SIGKILL)
    thread.join(300)
    assert not thread.is_alive()
    assert "Model: tiny-b," in infotext(outcome["response"])
    info = cluster_info(client)
    assert info["retried_requests"] >= 1
    assert victim["replica"] not in [r["replica"] for r in info["replicas"]]


@pytest.mark.slow
def test_zz_an_async_job_whose_replica_was_killed_is_submitted_again(cluster):
    """Kill the replica running an async job: polling its id submits it again elsewhere, same id."""
    _, client = cluster
    deadline = time.monotonic() + 120
    while len(cluster_info(client)["replicas"]) < 2:  # the replacement of the replica killed above
        assert time.monotonic() < deadline, "no replacement replica"
        time.sleep(0.5)
    response = client.post("/easel/v1/jobs", json={"type": "txt2img", "request": {
        **T2I, "steps": 150, "n_iter": 3, "seed": 5, "sd_model_checkpoint": "tiny-folder"}})
    assert response.status_code == 202, response.text
    cid = response.json()["id"]
    owner = ClusterJobId.parse(cid).replica
    while client.get(f"/easel/v1/jobs/{cid}", params={"preview": "false"}).json()["state"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    pid = next(r["pid"] for r in cluster_info(client)["replicas"] if r["replica"] == owner)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 180
    while True:
        status = client.get(f"/easel/v1/jobs/{cid}", params={"preview": "false"}).json()
        if status.get("state") not in ("queued", "running"):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["state"] == "done" and status["id"] == cid, status
    assert "Model: tiny-folder," in status["result"]["info"]["infotexts"][0]
    assert cluster_info(client)["retried_requests"] >= 1
