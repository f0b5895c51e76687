"""One SD 1.5-size UNet step (random weights) on this CPU: plain fp32 vs faster settings.

Compares, in one run: fp32; fp32 + channels_last; bf16; bf16 + channels_last; and
torch.compile of the best of those (--compile). Batch 2 (CFG), 64x64 latent (512x512 image).

    python -m bench.unet_cpu [--repeats 3] [--compile]
"""

from __future__ import annotations

import argparse
import json

import torch

from bench.common import ROOT, median_time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in json.loads((ROOT / "configs/sd1/unet/config.json").read_text()).items() if not k.startswith("_")}
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(cfg).eval()
    x = torch.randn(2, 4, args.latent, args.latent)
    ctx = torch.randn(2, 77, 768)
    t = torch.tensor([500, 500])

    def timed(model, dtype, channels_last):
        xx, cc = x.to(dtype), ctx.to(dtype)
        if channels_last:
            xx = xx.to(memory_format=torch.channels_last)

        def step():
            with torch.no_grad():
                model(xx, t, cc)

        step()  # warm-up
        return median_time(step, args.repeats)

    results = {}
    base = timed(unet, torch.float32, False)
    results["fp32"] = base
    unet_cl = unet.to(memory_format=torch.channels_last)
    results["fp32 + channels_last"] = timed(unet_cl, torch.float32, True)
    unet_bf = unet.to(torch.bfloat16, memory_format=torch.contiguous_format)
    results["bf16"] = timed(unet_bf, torch.bfloat16, False)
    results["bf16 + channels_last"] = timed(unet_bf.to(memory_format=torch.channels_last), torch.bfloat16, True)
    if args.compile:
        compiled = torch.compile(unet_bf)
        results["bf16 + torch.compile"] = timed(compiled, torch.bfloat16, False)
    print(f"SD1.5 UNet, batch 2, latent {args.latent}x{args.latent}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for name, secs in results.items():
        print(f"{name:24s}: {secs:7.3f} s/step   speed-up x{base / secs:.2f}")


if __name__ == "__main__":
    main()
