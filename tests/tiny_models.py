"""Tiny random Stable Diffusion 1.x models, written to disk the way users have them.

``write_single_file`` saves one as an original-layout ``.safetensors`` with its companion
``.yaml`` (the path real downloaded checkpoints take); ``write_diffusers_folder`` saves one as a
diffusers folder. Both are seeded, so the same seed gives the same weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modules.ldm_export import ldm_yaml, pipeline_to_ldm, save_ldm_checkpoint

SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", steps_offset=1, clip_sample=False, set_alpha_to_one=False,
)
TEXT = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)


def tiny_components(seed: int = 0, in_channels: int = 4):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, sample_size=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT))
    return unet, vae, text_encoder


def write_single_file(folder: Path, name: str, seed: int = 0, in_channels: int = 4, yaml: bool = True) -> Path:
    unet, vae, text_encoder = tiny_components(seed, in_channels)
    path = folder / f"{name}.safetensors"
    save_ldm_checkpoint(path, pipeline_to_ldm(unet, vae, text_encoder), dtype=None)
    if yaml:
        text = ldm_yaml(unet.config, vae.config, TEXT, SCHEDULER, scaling_factor=0.18215)
        path.with_suffix(".yaml").write_text(text)
    return path


def write_diffusers_folder(folder: Path, name: str, seed: int = 0) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from modules.model_loading import make_tokenizer

    unet, vae, text_encoder = tiny_components(seed)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=make_tokenizer(),
        scheduler=EulerDiscreteScheduler(**{k: v for k, v in SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out = folder / name
    pipe.save_pretrained(out)
    return out


def tiny_sdxl_pipeline():
    """A tiny random SDXL pipeline (two text encoders, text_time UNet conditioning)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from modules.model_loading import make_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=1, sample_size=32)
    text = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32, intermediate_size=37,
                num_attention_heads=4, num_hidden_layers=2, vocab_size=49408, projection_dim=32)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)), tokenizer=make_tokenizer(),
        tokenizer_2=make_tokenizer("!"), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    """A seeded RGB image of uniform random pixels."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


SDXL_TEXT = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32, intermediate_size=37,
                 num_attention_heads=4, num_hidden_layers=2, vocab_size=49408, projection_dim=32)


def tiny_sdxl_refiner_pipeline():
    """A tiny random SDXL refiner: only the second (OpenCLIP-like) encoder, aesthetic-score time ids
    (5 numbers: original size, crop, score), the UNet's context as wide as that encoder; the tiny
    base's VAE, as the real refiner shares SDXL's."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from modules.model_loading import make_tokenizer

    vae = tiny_sdxl_pipeline().vae
    torch.manual_seed(3)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=72,
        cross_attention_dim=32, norm_num_groups=1)
    encoder = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT))
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=encoder, tokenizer=None, tokenizer_2=make_tokenizer("!"),
        unet=unet, scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_controlnet(seed: int = 0, scale: float = 0.5, hint_scale: float = 16.0):
    """A ControlNet from the tiny SDXL UNet (SDXL family: text_time added embedding), with seeded
    zero convolutions and a strong hint encoder, so a unit changes the image."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(tiny_sdxl_pipeline().unet, conditioning_embedding_out_channels=(16, 32))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        convs = [(c, scale) for c in [*net.controlnet_down_blocks, net.controlnet_mid_block]]
        for conv, k in [*convs, (net.controlnet_cond_embedding.conv_out, hint_scale)]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * k / conv.weight[0].numel() ** 0.5)
    return net.eval()
