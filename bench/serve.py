"""Scale-out throughput: the single-process server vs Ray Serve with 1 and 2 replicas, and how
often Serve's multiplexing sends a request to a replica that already holds its checkpoint.

On the bundled model (models/Stable-diffusion/easel-shapes.safetensors, copied under three
names), all in one run so every figure sees the same machine:

1. single process: ``create_app`` on uvicorn (what ``--nowebui --api`` serves);
2. Serve, 1 replica, then 2 replicas (``modules.serve``), on one local Ray instance;

each answering ``--requests`` txt2img from ``--clients`` concurrent clients on one checkpoint
(images/s), then the same number naming one of three checkpoints at random (hit rate = requests
that needed no checkpoint load; the single-process server's cache keeps ``--max-models`` too).
Torch threads are split so the replicas together use the machine's cores (``--threads``).

    python -m bench.serve [--requests 24] [--clients 4] [--steps 8] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import ROOT

BUNDLED = ROOT / "models" / "Stable-diffusion" / "easel-shapes.safetensors"
NAMES = ("shapes-a", "shapes-b", "shapes-c")


def data_dir() -> Path:
    data = Path(tempfile.mkdtemp(prefix="easel-bench-serve-"))
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for name in NAMES:
        shutil.copy(BUNDLED, folder / f"{name}.safetensors")
        shutil.copy(BUNDLED.with_suffix(".yaml"), folder / f"{name}.yaml")
    return data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_load(base: str, names: list[str], args) -> float:
    """Send one txt2img per name, ``args.clients`` at a time; images/s."""
    import httpx

    def one(i_name):
        i, name = i_name
        body = {"prompt": "a red circle", "steps": args.steps, "width": args.size, "height": args.size, "seed": i,
                "sd_model_checkpoint": name}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text

    with httpx.Client(base_url=base, timeout=600) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, enumerate(names)))
        return len(names) / (time.perf_counter() - started)


def single_process(settings, args, mix: list[str]) -> dict:
    import torch
    import uvicorn

    from modules.api import create_app
    from modules.services import build_services

    torch.set_num_threads(args.threads)
    services = build_services(settings)
    loads = []
    import logging

    class Count(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("loaded "):
                loads.append(record.getMessage())

    logging.getLogger("modules.model_manager").setLevel(logging.INFO)
    logging.getLogger("modules.model_manager").addHandler(Count())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    try:
        run_load(base, [NAMES[0]] * args.clients, args)  # warm-up: load the model
        ips = run_load(base, [NAMES[0]] * args.requests, args)
        before = len(loads)
        run_load(base, mix, args)
        return {"images_per_s": ips, "mix_loads": len(loads) - before}
    finally:
        server.should_exit = True
        services.close()


def serve_run(settings, args, replicas: int, mix: list[str]) -> dict:
    import httpx
    from ray import serve

    from modules.serve.cli import ServeConfig, start

    name = f"easel-r{replicas}"
    port = args.port
    threads = max(1, args.threads // replicas)
    started = time.perf_counter()
    start(ServeConfig(settings, replicas=replicas, max_models=args.max_models, cpus_per_replica=threads),
          port=port, num_cpus=max(args.threads, 2), name=name, quiet=True)  # both runs share one Ray
    ready = time.perf_counter() - started
    base = f"http://127.0.0.1:{port}"
    try:
        run_load(base, [NAMES[0]] * (args.clients * replicas), args)  # warm-up: every replica loads it
        ips = run_load(base, [NAMES[0]] * args.requests, args)
        before = httpx.get(f"{base}/easel/v1/cluster", timeout=60).json()["checkpoint_loads"]
        run_load(base, mix, args)
        after = httpx.get(f"{base}/easel/v1/cluster", timeout=60).json()["checkpoint_loads"]
        return {"images_per_s": ips, "mix_loads": after - before, "ready_s": ready}
    finally:
        serve.delete(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--max-models", type=int, default=2, help="checkpoints per replica (and the single server's cache)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in all (split per replica)")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    args.port = args.port or free_port()
    from modules.config import load_settings
    from modules.serve.cli import stop

    rng = random.Random(25)
    mix = [rng.choice(NAMES) for _ in range(args.requests)]
    settings = load_settings(data_dir(), {"show_progress_every_n_steps": 0, "samples_save": False,
                                          "sd_checkpoints_limit": args.max_models})
    results = {"single process": single_process(settings, args, mix)}
    print("single process:", results["single process"], flush=True)
    try:
        for replicas in (1, 2):
            label = f"Serve, {replicas} replica{'s' * (replicas > 1)}"
            results[label] = serve_run(settings, args, replicas, mix)
            print(f"{label}:", results[label], flush=True)
    finally:
        stop()
    print(f"\n{args.requests} txt2img ({args.size}x{args.size}, {args.steps} steps) from {args.clients} clients;"
          f" mix of 3 checkpoints, {args.max_models} kept per replica; {args.threads} torch threads in all")
    print(f"{'server':<20} {'images/s':>9} {'mix loads':>10} {'mix hit rate':>13}")
    for label, r in results.items():
        hit = 1 - r["mix_loads"] / len(mix)
        print(f"{label:<20} {r['images_per_s']:>9.2f} {r['mix_loads']:>10} {hit:>12.0%}"
              + (f"   (ready in {r['ready_s']:.0f} s)" if "ready_s" in r else ""))


if __name__ == "__main__":
    main()
