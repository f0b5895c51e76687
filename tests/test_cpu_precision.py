"""CPU defaults (#26 item 1): "auto" is bf16 on CPUs with native bf16, with channels_last; the VAE can
stay fp32 (--no-half-vae); --compile compiles the UNet; the bundled model still follows its prompts.

(The rest of the suite runs "auto" as fp32: tests/conftest.py sets EASEL_CPU_BF16=0.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from modules import devices
from modules.config import load_settings
from modules.schemas import Img2ImgRequest, Txt2ImgRequest
from modules.services import build_services
from tests.tiny_models import noise_image

ROOT = Path(__file__).resolve().parent.parent


def _components(services, name: str) -> dict[str, torch.nn.Module]:
    with services.models.use(name) as model:
        return {k: m for k, m in model.pipe.components.items() if isinstance(m, torch.nn.Module)}


def _conv_weights_channels_last(module: torch.nn.Module) -> bool:
    convs = [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    return bool(convs) and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_auto_is_bf16_with_channels_last_on_a_native_bf16_cpu(data_dir, monkeypatch):
    monkeypatch.setenv(devices.CPU_BF16_ENV, "1")
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0}))
    try:
        assert (services.runtime.dtype, services.runtime.vae_dtype, services.runtime.channels_last) == (
            torch.bfloat16, None, True)
        request = Txt2ImgRequest(prompt="a red circle", steps=3, seed=4, sampler_name="Euler", save_images=False,
                                 sd_model_checkpoint="tiny-a.safetensors")
        image = services.submit("txt2img", request).wait(timeout=120).images[0]
        assert np.asarray(image).std() > 0
        comps = _components(services, "tiny-a.safetensors")
        assert all(p.dtype == torch.bfloat16 for m in comps.values() for p in m.parameters())
        assert _conv_weights_channels_last(comps["unet"]) and _conv_weights_channels_last(comps["vae"])
    finally:
        services.close()


def test_auto_stays_fp32_without_native_bf16(data_dir, monkeypatch):
    monkeypatch.setenv(devices.CPU_BF16_ENV, "0")
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0}), start=False)
    try:
        assert (services.runtime.dtype, services.runtime.channels_last) == (torch.float32, False)
    finally:
        services.close()


def test_no_half_vae_keeps_the_vae_in_fp32_for_txt2img_and_img2img(data_dir):
    services = build_services(load_settings(data_dir, {"show_progress_every_n_steps": 0, "precision": "bf16",
                                                       "vae_precision": "fp32"}))
    try:
        assert services.runtime.vae_dtype == torch.float32
        common = dict(prompt="a red circle", steps=3, seed=4, sampler_name="Euler", save_images=False,
                      sd_model_checkpoint="tiny-a.safetensors")
        services.submit("txt2img", Txt2ImgRequest(**common)).wait(timeout=120)
        services.submit("img2img", Img2ImgRequest(init_images=[noise_image(32, 32)], denoising_strength=0.6,
                                                  **common)).wait(timeout=120)
        comps = _components(services, "tiny-a.safetensors")
        assert {p.dtype for p in comps["vae"].parameters()} == {torch.float32}
        assert {p.dtype for p in comps["unet"].parameters()} == {torch.bfloat16}
        assert {p.dtype for p in comps["text_encoder"].parameters()} == {torch.bfloat16}
    finally:
        services.close()


def test_cpu_flags_map_to_settings(tmp_path):
    from modules.cli import serve_parser, settings_from_args

    s = settings_from_args(serve_parser().parse_args(
        ["--data-dir", str(tmp_path), "--compile", "--no-half-vae", "--channels-last", "off"]))
    assert (s.compile_unet, s.vae_precision, s.channels_last) == (True, "fp32", "off")
    s = settings_from_args(serve_parser().parse_args(["--data-dir", str(tmp_path)]))
    assert (s.compile_unet, s.vae_precision, s.channels_last) == (False, "auto", "auto")
    assert devices.choose_channels_last("cpu", torch.float32, "on")
    assert not devices.choose_channels_last("cpu", torch.bfloat16, "off")


def test_compile_compiles_the_unet_in_place(data_dir):
    """--compile: the cached UNet is compiled in place (it keeps its type and config, so LoRAs and the
    sampling core see the same module); the compiling itself is timed by bench/cpu_precision.py."""
    services = build_services(load_settings(data_dir, {"precision": "fp32", "compile_unet": True}), start=False)
    try:
        unet = _components(services, "tiny-a.safetensors")["unet"]
        assert type(unet).__name__ == "UNet2DConditionModel" and unet._compiled_call_impl is not None
    finally:
        services.close()


def test_a_torch_compile_failure_says_to_start_without_compile(data_dir):
    """A compiler error inside a job (no g++, no Triton) fails it naming the model and the way out."""
    from torch._dynamo.exc import InternalTorchDynamoError

    from modules.services import ModelRunError

    for compile_unet, hint in ((True, True), (False, False)):
        services = build_services(load_settings(data_dir, {"precision": "fp32", "compile_unet": compile_unet}),
                                  start=False)
        try:
            err = services.model_run_error("txt2img", "tiny-a.safetensors", InternalTorchDynamoError("g++ not found"))
        finally:
            services.close()
        assert isinstance(err, ModelRunError) and "tiny-a.safetensors" in str(err) and "g++ not found" in str(err)
        assert ("start Easel without --compile" in str(err)) is hint


@pytest.fixture(scope="module")
def bundled_bf16(tmp_path_factory):
    bundled = ROOT / "models" / "Stable-diffusion" / "easel-shapes.safetensors"
    data = tmp_path_factory.mktemp("bundled-bf16")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for src in (bundled, bundled.with_suffix(".yaml")):
        shutil.copy(src, folder / src.name)
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0, "precision": "bf16"}))
    yield services
    services.close()


def test_the_bundled_model_follows_its_prompts_in_bf16(bundled_bf16):
    """The fp32 test's cases and thresholds (tests/test_bundled_model.py), under bf16."""
    from bundled.detect import detect
    from tests.test_bundled_model import CASES, caption

    hits = {"color": 0, "position": 0, "background": 0}
    for i, (color, shape, position, background) in enumerate(CASES):
        req = Txt2ImgRequest(prompt=caption(color, shape, position, background), seed=1000 + i, steps=20,
                             cfg_scale=6, sampler_name="Euler a", save_images=False)
        found = detect(bundled_bf16.submit("txt2img", req).wait(300).images[0])
        hits["color"] += found.color == color
        hits["position"] += found.position == position
        hits["background"] += found.background == background
    assert hits["color"] >= 6 and hits["position"] >= 6 and hits["background"] >= 6, hits
