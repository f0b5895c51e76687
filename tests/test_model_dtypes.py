"""Checkpoints, LoRAs, embeddings and ControlNets saved in fp16, bf16 or fp32 all run in the runtime dtype.

Issue #26 item 2: a diffusers folder saved in fp16 came with an fp16 text encoder beside an fp32
UNet (transformers keeps a file's dtype), and the first txt2img could fail with "expected m1 and
m2 to have the same dtype". Every file dtype is loaded under every precision the CPU allows, and a
job is run with a LoRA, an embedding and a ControlNet of the same file dtype.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from modules import devices
from modules.api import create_app
from modules.config import load_settings
from modules.controlnet.layout import controlnet_ldm_yaml, controlnet_to_ldm
from modules.ldm_export import ldm_yaml, pipeline_to_ldm, save_ldm_checkpoint
from modules.schemas import ControlNetUnit, Txt2ImgRequest
from modules.services import ModelRunError, build_services
from tests.tiny_controlnet import tiny_controlnet
from tests.tiny_models import SCHEDULER, TEXT, tiny_components, write_diffusers_folder

FILE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
PRECISIONS = ("fp32", "bf16")  # what the CPU allows (fp16 is refused there)


def _lora_state(seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A kohya LoRA on every linear layer of the tiny UNet's attention and the text encoder's attention."""
    unet, _, text_encoder = tiny_components(0)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for prefix, module in (("lora_unet_", unet), ("lora_te_text_model_", text_encoder)):
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear) and (".attentions." in name or "self_attn" in name):
                key = prefix + name.removeprefix("text_model.").replace(".", "_")
                state[f"{key}.lora_down.weight"] = (torch.randn(4, layer.in_features, generator=g) * 0.1).to(dtype)
                state[f"{key}.lora_up.weight"] = (torch.randn(layer.out_features, 4, generator=g) * 0.1).to(dtype)
                state[f"{key}.alpha"] = torch.tensor(4.0, dtype=dtype)
    return state


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A data folder with the tiny model, a LoRA, an embedding and a ControlNet saved in each dtype."""
    root = tmp_path_factory.mktemp("dtypes")
    models = root / "models"
    for sub in ("Stable-diffusion", "Lora", "ControlNet"):
        (models / sub).mkdir(parents=True)
    (root / "embeddings").mkdir()
    for name, dtype in FILE_DTYPES.items():
        unet, vae, text_encoder = tiny_components(0)
        single = models / "Stable-diffusion" / f"single-{name}.safetensors"
        save_ldm_checkpoint(single, pipeline_to_ldm(unet, vae, text_encoder), dtype=dtype)
        single.with_suffix(".yaml").write_text(ldm_yaml(unet.config, vae.config, TEXT, SCHEDULER, scaling_factor=0.18215))
        folder = write_diffusers_folder(models / "Stable-diffusion", f"folder-{name}", seed=0)
        StableDiffusionPipeline.from_pretrained(folder).to(dtype).save_pretrained(folder)  # as hub "fp16" folders are
        save_file(_lora_state(1, dtype), str(models / "Lora" / f"lora-{name}.safetensors"))
        vectors = torch.randn(2, TEXT["hidden_size"], generator=torch.Generator().manual_seed(3)).to(dtype)
        save_file({"emb_params": vectors}, str(root / "embeddings" / f"emb-{name}.safetensors"))
        net = tiny_controlnet(seed=2)
        state = {k: v.to(dtype).contiguous() for k, v in controlnet_to_ldm(net.state_dict()).items()}
        save_file(state, str(models / "ControlNet" / f"cn-{name}.safetensors"))
        (models / "ControlNet" / f"cn-{name}.yaml").write_text(controlnet_ldm_yaml(net.config))
    return root


def _square() -> Image.Image:
    image = Image.new("RGB", (32, 32))
    image.paste((255, 255, 255), (8, 8, 24, 24))
    return image


def _component_dtypes(services, name: str) -> dict[str, torch.dtype]:
    with services.models.use(name) as model:
        return {k: {t.dtype for t in m.parameters()} for k, m in model.pipe.components.items()
                if isinstance(m, torch.nn.Module)}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("file_dtype", list(FILE_DTYPES))
def test_every_file_dtype_runs_in_the_runtime_dtype(data, precision, file_dtype):
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0, "precision": precision}))
    runtime = devices.PRECISION_DTYPES[precision]
    try:
        cn = next(i.name for i in services.controlnet_infos() if i.name.startswith(f"cn-{file_dtype}"))
        for checkpoint in (f"single-{file_dtype}.safetensors", f"folder-{file_dtype}"):
            request = Txt2ImgRequest(
                prompt=f"a red circle emb-{file_dtype} <lora:lora-{file_dtype}:0.8>", steps=2, width=32, height=32,
                seed=1, sampler_name="Euler", save_images=False, sd_model_checkpoint=checkpoint,
                controlnet_units=[ControlNetUnit(module="none", model=cn, image=_square())])
            result = services.submit("txt2img", request).wait(timeout=120)
            pixels = np.asarray(result.images[0], dtype=np.float32)
            assert pixels.std() > 0, f"{checkpoint}: a flat image"
            dtypes = _component_dtypes(services, checkpoint)
            assert dtypes == {k: {runtime} for k in dtypes}, f"{checkpoint} under {precision}: {dtypes}"
            assert {"unet", "vae", "text_encoder"} <= set(dtypes)
        with services.use_controlnet(cn) as loaded:
            assert {t.dtype for t in loaded.model.parameters()} == {runtime}
    finally:
        services.close()


def test_a_failure_inside_a_job_names_the_checkpoint(data, monkeypatch, caplog):
    """A torch error in a job is one line naming the checkpoint, dtype and device; the API answers
    a JSON 500 with that message, never a bare 500."""
    from modules import services as services_module

    def broken(request, ctx):
        raise RuntimeError("expected m1 and m2 to have the same dtype, but got: c10::Half != float\nsecond line")

    monkeypatch.setitem(services_module.RUNNERS, "txt2img", broken)
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0, "precision": "fp32"}))
    try:
        job = services.submit("txt2img", Txt2ImgRequest(prompt="x", steps=1, sd_model_checkpoint="folder-fp16"))
        with caplog.at_level(logging.CRITICAL), pytest.raises(ModelRunError, match="checkpoint 'folder-fp16'"):
            job.wait(timeout=120)
        assert "\n" not in job.error and "fp32 on cpu" in job.error and "same dtype" in job.error
        with TestClient(create_app(services)) as client:
            answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 32, "height": 32,
                                                            "override_settings": {"sd_model_checkpoint": "folder-fp16"}})
        assert answer.status_code == 500
        body = answer.json()
        assert "folder-fp16" in body["detail"] and "same dtype" in body["detail"] and "\n" not in body["detail"]
    finally:
        services.close()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_lora_layers_take_the_model_dtype_whatever_the_file(data, precision):
    from modules.checkpoints import CheckpointInfo
    from modules.lora import LoraFile, LoraUse, apply_loras, remove_loras
    from modules.model_loading import load_checkpoint

    path = data / "models" / "Stable-diffusion" / "single-fp32.safetensors"
    runtime = devices.PRECISION_DTYPES[precision]
    model = load_checkpoint(CheckpointInfo(path.name, path, "single", path.with_suffix(".yaml")), None, runtime)
    for file_dtype in FILE_DTYPES:
        lora = data / "models" / "Lora" / f"lora-{file_dtype}.safetensors"
        apply_loras(model.pipe, [LoraUse(LoraFile(lora.stem, lora, lora.stem, {}), 1.0, 1.0)], "sd1", "single-fp32")
        for component in (model.pipe.unet, model.pipe.text_encoder):
            assert {t.dtype for n, t in component.named_parameters() if "lora_" in n} == {runtime}, file_dtype
        remove_loras(model.pipe)


def test_a_failure_while_loading_names_the_checkpoint(data, monkeypatch, caplog):
    from modules import model_parts

    def broken(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory")

    monkeypatch.setattr(model_parts, "build_part", broken)
    services = build_services(load_settings(data, {"show_progress_every_n_steps": 0, "precision": "bf16"}))
    try:
        job = services.select_checkpoint("single-fp16.safetensors")
        with caplog.at_level(logging.CRITICAL), pytest.raises(ModelRunError):
            job.wait(timeout=120)
        assert "checkpoint 'single-fp16.safetensors' (bf16 on cpu)" in job.error and "not enough memory" in job.error
    finally:
        services.close()
