"""Peak memory of a 4x hires-fix upscale, with the VAE tiled (as Easel does) and untiled.

Each variant runs in a fresh process: build the services on a shapes-architecture checkpoint
(random weights), load it with a small warm-up request, reset the process's peak resident set
(Linux: /proc/self/clear_refs), then run one txt2img request with hires fix: a first pass at
--size, the "Latent" upscaler at hr_scale 4, and denoising_strength 0, so the upscaled latents
go straight to the VAE decoder (a UNet pass at 4x is far too slow on a CPU, and the decode is
what tiling bounds). Easel tiles the VAE by itself above common.VAE_TILING_PIXELS (1 MP); the
untiled variant raises that threshold in its own process only. Prints each variant's peak RSS
during the request, its growth over the RSS before it, the seconds, and the untiled/tiled
ratios. It runs on one torch thread by default: on a busy 2-core machine the tiled decode's
many small convolutions lose most of their time to threads waiting on each other.

    python -m bench.upscale_memory [--size 264] [--steps 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, bench_data_dir

HR_SCALE = 4
VARIANTS = ("tiled", "untiled")


def proc_status_kib(field: str) -> int:
    """A ``VmXXX`` line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line; this benchmark needs Linux")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(variant: str, data: Path, size: int, steps: int, threads: int) -> dict:
    """Run one variant in this process; returns its figures."""
    import torch

    from modules.config import load_settings
    from modules.processing import common
    from modules.schemas import Txt2ImgRequest
    from modules.services import build_services

    if threads:
        torch.set_num_threads(threads)
    if variant == "untiled":
        common.VAE_TILING_PIXELS = 1 << 62  # never tile: the behaviour without issue 3
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0}))
    try:
        warm = Txt2ImgRequest(prompt="a red circle", seed=1, steps=1, width=64, height=64, save_images=False)
        services.submit("txt2img", warm).wait()  # loads the model: not part of the figure
        request = Txt2ImgRequest(prompt="a large red circle on the left, blue background", seed=42, steps=steps,
                                 sampler_name="Euler", width=size, height=size, enable_hr=True, hr_scale=HR_SCALE,
                                 hr_upscaler="Latent", denoising_strength=0.0, save_images=False)
        before = proc_status_kib("VmRSS")
        was_reset = reset_peak()
        t0 = time.perf_counter()
        result = services.submit("txt2img", request).wait()
        seconds = time.perf_counter() - t0
        peak = proc_status_kib("VmHWM")
    finally:
        services.close()
    return {"variant": variant, "threads": torch.get_num_threads(), "before_kib": before, "peak_kib": peak,
            "peak_reset": was_reset, "seconds": seconds, "image": list(result.images[0].size)}


def run_variant(variant: str, data: Path, size: int, steps: int, threads: int) -> dict:
    """Run ``variant`` in a fresh Python process and read back its figures."""
    cmd = [sys.executable, "-m", "bench.upscale_memory", "--child", variant, "--data-dir", str(data),
           "--size", str(size), "--steps", str(steps), "--threads", str(threads)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {variant} run failed (status {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=264, help="first-pass side in pixels (x4 must pass 1024 for Easel to tile)")
    ap.add_argument("--steps", type=int, default=2, help="first-pass steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each run (0: torch's default)")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a fresh folder with one random checkpoint")
    ap.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data_dir, args.size, args.steps, args.threads)))
        return

    data = args.data_dir or bench_data_dir()
    figures = {v: run_variant(v, data, args.size, args.steps, args.threads) for v in VARIANTS}
    w, h = figures["tiled"]["image"]
    print(f"txt2img {args.size}x{args.size}, {args.steps} steps, hires fix x{HR_SCALE} (Latent, denoising 0) -> {w}x{h} decode; "
          f"shapes architecture, fp32 CPU, {figures['tiled']['threads']} torch thread(s), one fresh process per variant")
    mib = lambda kib: kib / 1024  # noqa: E731
    for v in VARIANTS:
        f = figures[v]
        note = "" if f["peak_reset"] else "  (peak not resettable: includes the model load)"
        print(f"{v:8s}: peak RSS {mib(f['peak_kib']):7.1f} MiB, growth {mib(f['peak_kib'] - f['before_kib']):7.1f} MiB, "
              f"{f['seconds']:5.1f} s{note}")
    t, u = figures["tiled"], figures["untiled"]
    growth_ratio = (u["peak_kib"] - u["before_kib"]) / max(1, t["peak_kib"] - t["before_kib"])
    print(f"untiled / tiled: peak {u['peak_kib'] / t['peak_kib']:.2f}x, growth {growth_ratio:.2f}x")


if __name__ == "__main__":
    main()
