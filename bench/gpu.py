"""GPU benchmark (#26 item 6): Easel vs bare diffusers on one card, side by side in one run.

On a CUDA machine (``bash bench/gpu.sh``, under 8 minutes on one H100):

- SD 1.5-size (random weights), 512x512, 20 steps, CFG 7: bare diffusers fp16 + SDPA
  (``StableDiffusionPipeline.__call__``) vs Easel with its defaults, with ``--compile`` (first call,
  which compiles, and second call reported apart), with ``--channels-last on`` and with A1111's
  token merging at 0.5 (an opt-in that changes the images);
- SDXL-size at 1024x1024, 20 steps: bare diffusers fp16 vs Easel's defaults, and with token merging 0.5;
- peak VRAM of each (``torch.cuda.max_memory_allocated``);
- one DreamBooth training step of the SD 1.5 UNet with gradient checkpointing and 8-bit Adam
  (``bench.train_speed``'s child, when bitsandbytes is installed).

Without CUDA (or with ``--tiny``) the same code runs at tiny sizes on the CPU (fp32, 2 steps, no
compile, no training step): what the test suite runs (tests/test_bench_gpu.py) so the script
cannot rot. it/s is steps / seconds of the whole call (text encoding and VAE decode included).

    bash bench/gpu.sh [--tiny] [--steps N] [--skip-sdxl] [--skip-train]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import ROOT

PROMPT = "a photo of an astronaut riding a horse on the moon"

TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
TINY_SD1_UNET = dict(block_out_channels=[32, 64], layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
                     down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
                     norm_num_groups=32, sample_size=32)
TINY_SDXL_UNET = dict(block_out_channels=[32, 64], layers_per_block=1, cross_attention_dim=64, attention_head_dim=[2, 4],
                      down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                      up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                      transformer_layers_per_block=1, addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
                      norm_num_groups=1, sample_size=32)
TINY_VAE = dict(block_out_channels=[32, 64], layers_per_block=1, down_block_types=["DownEncoderBlock2D"] * 2,
                up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=32, sample_size=64)


def random_pipeline(arch: str, tiny: bool) -> Any:
    """A pipeline of ``arch`` ("sd1" or "sdxl") with random weights, from the shipped configs (shrunk when tiny)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from modules.model_loading import make_tokenizer, shipped_configs

    cfg = shipped_configs(arch)
    unet_cfg = {**cfg.unet, **((TINY_SDXL_UNET if arch == "sdxl" else TINY_SD1_UNET) if tiny else {})}
    vae_cfg = {**cfg.vae, **(TINY_VAE if tiny else {})}
    text_cfg = {**cfg.text_encoder, **(TINY_TEXT if tiny else {})}
    torch.manual_seed(0)
    parts = dict(unet=UNet2DConditionModel.from_config(unet_cfg), vae=AutoencoderKL.from_config(vae_cfg),
                 text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)), tokenizer=make_tokenizer(),
                 scheduler=EulerDiscreteScheduler.from_config(cfg.scheduler))
    if arch == "sdxl":
        text2_cfg = {**cfg.text_encoder_2, **(TINY_TEXT if tiny else {})}
        parts.update(text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text2_cfg)),
                     tokenizer_2=make_tokenizer(cfg.pad_token_2 or "!"))
        return StableDiffusionXLPipeline(**parts)
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


class Meter:
    """Times a call and reads the device's peak memory around it."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __call__(self, fn) -> tuple[float, float | None]:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        return secs, (torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None)


def bare(pipe: Any, device: str, dtype: torch.dtype, size: int, steps: int, meter: Meter) -> tuple[float, float | None]:
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe.to(device, dtype)
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.set_progress_bar_config(disable=True)

    def call():
        pipe(PROMPT, num_inference_steps=steps, width=size, height=size, guidance_scale=7,
             generator=torch.Generator().manual_seed(1))

    call()  # warm-up (kernels, allocator)
    result = meter(call)
    pipe.to("cpu")
    return result


def easel(data: Path, size: int, steps: int, meter: Meter, **overrides) -> list[tuple[str, float, float | None]]:
    from modules.config import load_settings
    from modules.schemas import Txt2ImgRequest
    from modules.services import build_services

    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0, **overrides}))
    request = Txt2ImgRequest(prompt=PROMPT, steps=steps, width=size, height=size, cfg_scale=7, sampler_name="Euler",
                             seed=1, save_images=False)
    try:
        first = meter(lambda: services.submit("txt2img", request).wait())
        second = meter(lambda: services.submit("txt2img", request).wait())
    finally:
        services.close()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return [("first call", *first), ("second call", *second)]


def train_step_memory(tiny: bool) -> str:
    if tiny or not torch.cuda.is_available():
        return "skipped (needs CUDA)"
    try:
        import bitsandbytes  # noqa: F401
        adam8 = ["--adam8"]
    except ImportError:
        adam8 = []
    cmd = [sys.executable, "-m", "bench.train_speed", "--sd15-child", "gradient checkpointing", "--latent", "64", *adam8]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    label = "gradient checkpointing" + (" + 8-bit Adam" if adam8 else " (bitsandbytes not installed: AdamW)")
    return f"{label}: peak {r['peak'] / 2**30:.2f} GiB ({r['seconds']:.1f} s)"


def run_arch(arch: str, tiny: bool, device: str, steps: int, compile_unet: bool, rows: list) -> None:
    size = (64 if tiny else 1024 if arch == "sdxl" else 512)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    meter = Meter(device)
    data = Path(tempfile.mkdtemp(prefix=f"easel-gpu-{arch}-"))
    try:
        pipe = random_pipeline(arch, tiny)
        # Easel loads it as a user's diffusers folder, in the precision's dtype
        pipe.to(dtype).save_pretrained(data / "models" / "Stable-diffusion" / f"random-{arch}")
        label = f"{'tiny ' if tiny else ''}{'SDXL' if arch == 'sdxl' else 'SD 1.5'} {size}px"
        secs, peak = bare(pipe, device, dtype, size, steps, meter)
        del pipe
        rows.append((label, f"bare diffusers {str(dtype).removeprefix('torch.')} + SDPA", secs, peak, secs))
        base = secs
        configs = [("Easel defaults", {}), ("Easel + token merging 0.5", {"token_merging_ratio": 0.5})]
        if arch == "sd1":
            configs.append(("Easel --channels-last on", {"channels_last": "on"}))
            if compile_unet:
                configs.append(("Easel --compile", {"compile_unet": True}))
        for name, overrides in configs:
            for call, secs, peak in easel(data, size, steps, meter, **overrides):
                if call == "second call" or "compile" in name:
                    rows.append((label, f"{name}, {call}", secs, peak, base))
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (the CI fallback)")
    ap.add_argument("--steps", type=int, default=None, help="default: 20 (2 when tiny)")
    ap.add_argument("--skip-sdxl", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    tiny = not cuda
    device = "cuda" if cuda else "cpu"
    steps = args.steps or (2 if tiny else 20)
    name = torch.cuda.get_device_name() if cuda else "CPU (fallback: tiny sizes, fp32)"
    print(f"device: {name}; torch {torch.__version__}; {steps} steps, CFG 7, Euler")
    rows: list = []
    started = time.perf_counter()
    run_arch("sd1", tiny, device, steps, compile_unet=cuda, rows=rows)
    if not args.skip_sdxl:
        run_arch("sdxl", tiny, device, steps, compile_unet=False, rows=rows)
    print("| model | configuration | s/image | it/s | peak VRAM | vs bare |\n|---|---|---:|---:|---:|---:|")
    for model, config, secs, peak, base in rows:
        vram = f"{peak:.2f} GiB" if peak is not None else "-"
        print(f"| {model} | {config} | {secs:.3f} | {steps / secs:.2f} | {vram} | x{base / secs:.2f} |")
    if not args.skip_train:
        print(f"DreamBooth step, SD 1.5 UNet, 512 px, batch 1: {train_step_memory(tiny)}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
