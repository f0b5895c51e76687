"""The shipped architecture configs build the real models, and the LDM export gives the real layout.

The models are built on the ``meta`` device: shapes only, no memory, no weights, no network.
The SD 1.5 counts are those of ``v1-5-pruned-emaonly``: 686 UNet tensors, 248 VAE tensors and
197 text-encoder tensors (196 CLIP ViT-L/14 parameters + ``position_ids``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
    infer_diffusers_model_type,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from modules.ldm_export import ldm_yaml, pipeline_to_ldm, text_encoder_to_ldm, unet_to_ldm, vae_to_ldm

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ARCHS = ("sd1", "sd1-inpaint", "sd2", "sd2-base", "sdxl")

pytestmark = pytest.mark.slow


def meta_unet(arch: str) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / arch / "unet"))


def meta_vae(arch: str) -> AutoencoderKL:
    with torch.device("meta"):
        return AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIGS / arch / "vae"))


def meta_text_encoder(arch: str, folder: str = "text_encoder", cls=CLIPTextModel):
    with torch.device("meta"):
        return cls(CLIPTextConfig.from_pretrained(CONFIGS / arch / folder))


def shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def test_sd15_export_has_the_real_checkpoint_layout():
    state = pipeline_to_ldm(meta_unet("sd1"), meta_vae("sd1"), meta_text_encoder("sd1"))
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")
    counts = {prefix: sum(key.startswith(prefix) for key in state) for prefix in prefixes}
    assert counts == {"model.diffusion_model.": 686, "first_stage_model.": 248, "cond_stage_model.": 197}
    assert len(state) == 686 + 248 + 197

    # Well-known tensors of the SD 1.5 file.
    known = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": (1, 77),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
    }
    assert {key: tuple(state[key].shape) for key in known} == known
    assert infer_diffusers_model_type(state) == "v1"


@pytest.mark.parametrize("arch", ARCHS)
def test_unet_and_vae_round_trip_key_sets_and_shapes(arch):
    unet, vae = meta_unet(arch), meta_vae(arch)
    unet_ldm = unet_to_ldm(unet.state_dict(), unet.config)
    vae_ldm = vae_to_ldm(vae.state_dict(), vae.config)

    assert shapes(convert_ldm_unet_checkpoint(unet_ldm, dict(unet.config))) == shapes(unet.state_dict())
    assert shapes(convert_ldm_vae_checkpoint(vae_ldm, dict(vae.config))) == shapes(vae.state_dict())


@pytest.mark.parametrize("arch", ("sd1", "sd1-inpaint", "sd2", "sd2-base"))
def test_detection_and_yaml_agree_with_the_shipped_configs(arch):
    unet, vae = meta_unet(arch), meta_vae(arch)
    scheduler = json.loads((CONFIGS / arch / "scheduler" / "scheduler_config.json").read_text())
    state = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config)}
    expected_type = {"sd1": "v1", "sd1-inpaint": "inpainting", "sd2": "v2", "sd2-base": "v2"}[arch]
    assert infer_diffusers_model_type(state) == expected_type

    import yaml

    original = yaml.safe_load(ldm_yaml(unet.config, vae.config, None, scheduler, vae.config.scaling_factor))
    assert original["model"]["params"].get("parameterization", "eps") == ("v" if arch == "sd2" else "eps")
    unet_config = create_unet_diffusers_config_from_ldm(original, state)
    fields = ("in_channels", "down_block_types", "up_block_types", "block_out_channels", "layers_per_block",
              "cross_attention_dim", "use_linear_projection")
    for field in fields:
        expected = unet.config[field]
        assert unet_config[field] == (list(expected) if isinstance(expected, tuple) else expected), field
    heads = unet.config.attention_head_dim
    assert unet_config["attention_head_dim"] == (list(heads) if isinstance(heads, (list, tuple)) else heads)
    assert create_vae_diffusers_config_from_ldm(original, state)["scaling_factor"] == 0.18215


@pytest.mark.parametrize(("arch", "folder", "cls", "hidden", "layers"), [
    ("sd1", "text_encoder", CLIPTextModel, 768, 12),
    ("sd2", "text_encoder", CLIPTextModel, 1024, 23),
    ("sdxl", "text_encoder", CLIPTextModel, 768, 12),
    ("sdxl", "text_encoder_2", CLIPTextModelWithProjection, 1280, 32),
])
def test_text_encoder_configs_build(arch, folder, cls, hidden, layers):
    model = meta_text_encoder(arch, folder, cls)
    assert model.config.hidden_size == hidden and model.config.num_hidden_layers == layers
    if cls is CLIPTextModel:
        ldm = text_encoder_to_ldm(model.state_dict())
        ldm.pop("cond_stage_model.transformer.text_model.embeddings.position_ids")
        back = {key.removeprefix("text_model."): value for key, value in convert_ldm_clip_checkpoint(ldm).items()}
        expected = {key.removeprefix("text_model."): value for key, value in model.state_dict().items()}
        assert shapes(back) == shapes(expected)


def test_arch_files_name_the_pad_tokens():
    pads = {arch: json.loads((CONFIGS / arch / "arch.json").read_text()) for arch in ARCHS}
    assert pads["sd1"]["pad_token"] == "<|endoftext|>"
    assert pads["sd2"]["pad_token"] == "!"
    assert (pads["sdxl"]["pad_token"], pads["sdxl"]["pad_token_2"]) == ("<|endoftext|>", "!")
