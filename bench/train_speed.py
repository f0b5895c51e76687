"""Training speed on the bundled model per method, and the memory of one SD 1.5-size training step.

1. **Steps per second** of DreamBooth (full), LoRA (rank 4) and textual inversion on the bundled
   model (``models/Stable-diffusion/easel-shapes.safetensors``, 64x64, batch 1, fp32), through the
   same code as a training job (``modules.training.job.run``) on 5 rendered heart images. The rate
   is timed from the end of the first step to the end of the last (setup and the first step's
   warm-up excluded).
2. **Peak memory of one training step** of an SD 1.5-size UNet (random weights, ``configs/sd1``):
   forward, backward and an AdamW step over every UNet weight (full DreamBooth), batch 1, with and
   without gradient checkpointing. Each variant runs in a fresh process; the figure is the
   process's peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just
   before the step) and its growth over the resident set before the step (the weights). RSS is
   honest for the CPU: it counts everything torch allocates, gradients and Adam states included.
   On CUDA the same step runs in fp16 autocast with ``torch.cuda.max_memory_allocated``, and once
   more with bitsandbytes' 8-bit AdamW when it is installed (the published figure to compare:
   9.9 GB for DreamBooth with fp16, gradient checkpointing and 8-bit Adam).

    python -m bench.train_speed [--steps 20] [--latent 64] [--quick] [--skip-sd15] [--threads 2]

``--quick``: 4 steps per method and a 16x16 latent (128 px) SD 1.5 step, to check that it runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT

METHODS = ("dreambooth", "lora", "textual_inversion")
SD15_VARIANTS = ("plain", "gradient checkpointing")
BUNDLED = ROOT / "models" / "Stable-diffusion" / "easel-shapes.safetensors"


# --------------------------------------------------------------------------- 1. steps per second


def heart_images(n: int = 5) -> list:
    from bundled.shapes import Scene, render

    spots = [("red", "blue", "large", 0.5, 0.5), ("yellow", "purple", "small", 0.3, 0.4), ("white", "green", "large", 0.6, 0.6),
             ("orange", "black", "small", 0.7, 0.3), ("blue", "yellow", "large", 0.4, 0.7)]
    return [render(Scene("heart", c, b, s, "center", x, y)) for c, b, s, x, y in spots[:n]]


def method_rates(steps: int) -> dict[str, tuple[float, float]]:
    """{method: (steps per second, seconds of setup before the first step)} on the bundled model."""
    from modules.config import load_settings
    from modules.jobs import CancelToken, ProgressSink
    from modules.processing.context import RunContext
    from modules.services import build_services
    from modules.training import job as training

    class Clock(ProgressSink):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def update(self, step, total, preview=None, textinfo=""):
            super().update(step, total, preview, textinfo)
            if textinfo.startswith("loss"):
                self.times.append(time.perf_counter())

    data = Path(tempfile.mkdtemp(prefix="easel-bench-train-"))
    services = build_services(load_settings(data, {"ckpt_dirs": [BUNDLED.parent], "sd_model_checkpoint": BUNDLED.name}),
                              start=False)
    rates = {}
    try:
        for method in METHODS:
            request = training.build_request(services, {
                "method": method, "instance_prompt": "a zwx shape", "class_prompt": "a shape", "steps": steps,
                "save_every": 0, "output_name": "zwx"}, uploads=heart_images())
            clock = Clock()
            with services.models.use(request.sd_model_checkpoint) as model:
                started = time.perf_counter()
                training.run(request, RunContext(model, services.settings, None, CancelToken(), clock))
            span = clock.times[-1] - clock.times[0]
            rates[method] = ((len(clock.times) - 1) / span, clock.times[0] - started)
    finally:
        services.close()
    return rates


# --------------------------------------------------------------------------- 2. SD 1.5 step memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line; this benchmark needs Linux")


def sd15_child(variant: str, latent: int, adam8: bool) -> dict:
    """One training step of a random SD 1.5 UNet; the peak memory it took (run in a fresh process)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    cfg = {k: v for k, v in json.loads((ROOT / "configs/sd1/unet/config.json").read_text()).items() if not k.startswith("_")}
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(cfg)
    unet = unet.to_empty(device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02)
    unet.train()
    if variant == "gradient checkpointing":
        unet.enable_gradient_checkpointing()
    if adam8:
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(unet.parameters(), lr=1e-6)
    else:
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-6)
    x = torch.randn(1, 4, latent, latent, device=device)
    context = torch.randn(1, 77, 768, device=device)
    t = torch.tensor([500], device=device)
    before = torch.cuda.memory_allocated() if cuda else _status_kib("VmRSS") * 1024
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    started = time.perf_counter()
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        pred = unet(x, t, context).sample
    loss = torch.nn.functional.mse_loss(pred.float(), torch.randn_like(pred, dtype=torch.float32))
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
    return {"device": device, "before": before, "peak": peak, "seconds": seconds,
            "params": sum(p.numel() for p in unet.parameters())}


def sd15_memory(latent: int, threads: int) -> list[tuple[str, dict]]:
    import torch

    variants = [(v, False) for v in SD15_VARIANTS]
    if torch.cuda.is_available():
        try:
            import bitsandbytes  # noqa: F401

            variants.append(("gradient checkpointing", True))
        except ImportError:
            print("bitsandbytes is not installed: no 8-bit Adam figure", file=sys.stderr)
    results = []
    for variant, adam8 in variants:
        cmd = [sys.executable, "-m", "bench.train_speed", "--sd15-child", variant, "--latent", str(latent),
               "--threads", str(threads)] + (["--adam8"] if adam8 else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
        label = variant + (" + 8-bit Adam" if adam8 else "")
        results.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--latent", type=int, default=64, help="SD 1.5 latent side (64 = 512 px images)")
    ap.add_argument("--quick", action="store_true", help="4 steps per method, 16x16 SD 1.5 latent")
    ap.add_argument("--skip-sd15", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sd15-child", choices=SD15_VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--adam8", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.sd15_child:
        print(json.dumps(sd15_child(args.sd15_child, args.latent, args.adam8)))
        return
    steps, latent = (4, 16) if args.quick else (args.steps, args.latent)
    print(f"Bundled model (64x64, batch 1, fp32, {args.threads} threads), {steps} steps per method")
    print("| method | steps/s | s/step | setup s |\n|---|---:|---:|---:|")
    for method, (rate, setup) in method_rates(steps).items():
        print(f"| {method} | {rate:.2f} | {1 / rate:.3f} | {setup:.1f} |")
    if args.skip_sd15:
        return
    print(f"\nSD 1.5-size UNet, one training step (AdamW on all weights), batch 1, latent {latent}x{latent} "
          f"({latent * 8} px)")
    print("| variant | device | before step | peak | growth in the step | s |\n|---|---|---:|---:|---:|---:|")
    gib = 2**30
    for label, r in sd15_memory(latent, args.threads):
        print(f"| {label} | {r['device']} | {r['before'] / gib:.2f} GiB | {r['peak'] / gib:.2f} GiB | "
              f"{(r['peak'] - r['before']) / gib:.2f} GiB | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
