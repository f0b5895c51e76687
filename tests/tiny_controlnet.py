"""A tiny random ControlNet (for the tiny SD 1.x models of ``tiny_models``), written the ways users have them.

Its hint encoder has two stages (8, 16): it downsamples 2x, not SD's 8x, like the bundled
ControlNet's shorter encoder, so the general hint-encoder mapping is exercised. The zero
convolutions are given random weights so the outputs are not trivially zero.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from modules.controlnet.layout import controlnet_ldm_yaml, controlnet_to_ldm

CONFIG = dict(
    in_channels=4, conditioning_channels=3, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=32, attention_head_dim=4,
    norm_num_groups=32, conditioning_embedding_out_channels=(8, 16),
)
HINT_FACTOR = 2  # image pixels per latent pixel for this hint encoder


def tiny_controlnet(seed: int = 0):
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    model = ControlNetModel(**CONFIG)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def write_controlnet(folder: Path, name: str, seed: int = 0, suffix: str = ".safetensors", yaml: bool = True) -> Path:
    """The tiny ControlNet in the original layout (``control_model.*``), as ``name + suffix``."""
    model = tiny_controlnet(seed)
    state = {k: v.contiguous() for k, v in controlnet_to_ldm(model.state_dict()).items()}
    path = folder / f"{name}{suffix}"
    folder.mkdir(parents=True, exist_ok=True)
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    if yaml:
        path.with_suffix(".yaml").write_text(controlnet_ldm_yaml(model.config))
    return path


def controlnet_inputs(seed: int = 0, latent: int = 8):
    """(sample, timestep, context, hint) for a tiny ControlNet forward pass."""
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, latent, latent, generator=g)
    context = torch.randn(1, 7, CONFIG["cross_attention_dim"], generator=g)
    hint = torch.rand(1, 3, latent * HINT_FACTOR, latent * HINT_FACTOR, generator=g)
    return sample, torch.tensor([500]), context, hint


def controlnet_outputs(model, seed: int = 0) -> list[torch.Tensor]:
    """Every residual the ControlNet hands the UNet (down blocks, then the mid block)."""
    sample, t, context, hint = controlnet_inputs(seed)
    with torch.no_grad():
        down, mid = model(sample, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
    return [*down, mid]
