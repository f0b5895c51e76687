"""Helpers shared by the benchmarks: a data folder with a model in it, and median timing."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench_data_dir(seed: int = 0, names: tuple[str, ...] = ("bench-a",)) -> Path:
    """A temporary data folder whose models/Stable-diffusion holds shapes-architecture checkpoints
    (random weights: timing does not depend on training)."""
    import torch

    from bundled.architecture import SCHEDULER_CONFIG, TEXT_CONFIG, build_models
    from modules.ldm_export import ldm_yaml, pipeline_to_ldm, save_ldm_checkpoint

    data = Path(tempfile.mkdtemp(prefix="easel-bench-"))
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        torch.manual_seed(seed + i)
        vae, unet, te = build_models()
        path = folder / f"{name}.safetensors"
        save_ldm_checkpoint(path, pipeline_to_ldm(unet, vae, te), dtype=torch.float16)
        path.with_suffix(".yaml").write_text(ldm_yaml(unet.config, vae.config, TEXT_CONFIG, SCHEDULER_CONFIG, 1.0))
    return data


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_sd15_checkpoint(path: Path, seed: int = 0, dtype_name: str = "fp16") -> Path:
    """A random SD 1.5-size single file (original layout, ``dtype_name`` tensors: 2 GB in fp16, no
    ``.yaml``: the shipped SD 1.x configs apply, as for a downloaded SD 1.5)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules.ldm_export import pipeline_to_ldm
    from modules.model_loading import shipped_configs

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    cfg = shipped_configs("sd1")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(cfg.unet).to(dtype)
    vae = AutoencoderKL.from_config(cfg.vae).to(dtype)
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg.text_encoder)).to(dtype)
    state = {k: v.contiguous() for k, v in pipeline_to_ldm(unet, vae, text_encoder).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def bundled_data_dir() -> Path:
    """A temporary data folder holding only the shipped model (and its .yaml)."""
    import shutil

    bundled = ROOT / "models" / "Stable-diffusion" / "easel-shapes.safetensors"
    data = Path(tempfile.mkdtemp(prefix="easel-bench-"))
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for src in (bundled, bundled.with_suffix(".yaml")):
        shutil.copy(src, folder / src.name)
    return data
