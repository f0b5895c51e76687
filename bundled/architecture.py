"""The bundled model's architecture: a small Stable Diffusion 1.x, with real SD components.

The configs here are the single source of the shapes model's dimensions: the trainer builds
the models from them and the exporter writes the matching LDM ``.yaml`` companion file.
"""

from __future__ import annotations

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=64,
)

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(64, 128, 128),
    layers_per_block=1,
    cross_attention_dim=128,
    attention_head_dim=4,  # SD 1.x meaning: the number of heads
    norm_num_groups=32,
)

TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=128,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
)


def build_models():
    """Fresh (random) VAE, UNet and text encoder of the shapes architecture."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return vae, unet, text_encoder
