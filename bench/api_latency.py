"""API latency overhead: the same small txt2img through the HTTP API vs the core directly.

Three ways, interleaved so they see the same machine load, on the bench model (64x64):

- core: ``services.submit("txt2img", request).wait()``;
- API in process: ``POST /sdapi/v1/txt2img`` through FastAPI's TestClient (routing, validation,
  base64 PNG encoding of the answer, no network);
- API over HTTP: the same POST to a uvicorn server on a loopback port (adds the socket and HTTP).

Prints the median seconds of each and their ratio to the core, and the added milliseconds.

    python -m bench.api_latency [--steps 4] [--repeats 15]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time

import torch

from bench.common import bench_data_dir, median_time


def start_uvicorn(app) -> tuple[object, threading.Thread, int]:
    """A uvicorn server for ``app`` on a free loopback port, started in a thread."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, port


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import httpx
    from fastapi.testclient import TestClient

    from modules.api import create_app
    from modules.config import load_settings
    from modules.schemas import Txt2ImgRequest
    from modules.services import build_services

    services = build_services(load_settings(bench_data_dir(), {"show_progress_every_n_steps": 0}))
    fields = {"prompt": "a large red circle on the left, blue background", "seed": 42, "steps": args.steps,
              "sampler_name": "Euler a", "cfg_scale": 7.0, "width": 64, "height": 64, "save_images": False}
    request = Txt2ImgRequest(**fields)
    app = create_app(services)
    server, thread, port = start_uvicorn(app)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    with TestClient(app) as client:

        def core() -> None:
            services.submit("txt2img", request).wait()

        def api_in_process() -> None:
            r = client.post("/sdapi/v1/txt2img", json=fields)
            assert r.status_code == 200, r.text

        def api_http() -> None:
            r = http.post("/sdapi/v1/txt2img", json=fields)
            assert r.status_code == 200, r.text

        for fn in (core, api_in_process, api_http):  # load the model, warm every path
            fn()
        times: dict[str, list[float]] = {"core": [], "api": [], "http": []}
        for _ in range(args.repeats):
            times["core"].append(median_time(core, 1))
            times["api"].append(median_time(api_in_process, 1))
            times["http"].append(median_time(api_http, 1))
    http.close()
    server.should_exit = True
    thread.join(10)
    services.close()
    core_s, api_s, http_s = (statistics.median(times[k]) for k in ("core", "api", "http"))
    print(f"txt2img 64x64, {args.steps} steps, Euler a, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"core submit().wait()      : {core_s:.4f} s")
    print(f"API in process (TestClient): {api_s:.4f} s   ratio {api_s / core_s:.3f}   +{(api_s - core_s) * 1000:.1f} ms")
    print(f"API over HTTP (uvicorn)   : {http_s:.4f} s   ratio {http_s / core_s:.3f}   +{(http_s - core_s) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
