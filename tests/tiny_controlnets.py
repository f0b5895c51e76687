"""Tiny random ControlNets for generation tests, saved as diffusers folders (``tests.tiny_controlnet``
writes the original single-file layout for the loader's tests).

Each is ``ControlNetModel.from_unet`` of a tiny checkpoint's UNet (``tests.tiny_models``), which
leaves the "zero convolutions" at zero (a fresh ControlNet changes nothing); here they get seeded
random weights, and the hint encoder's output a strong one, so a unit visibly changes the image
and where its map is white shows. The hint encoder downsamples 2x, like the tiny VAE.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_models import tiny_components

HINT_CHANNELS = (16, 32)  # one stride-2 convolution: maps at 2x the latent size


def tiny_controlnet(seed: int = 0, unet_seed: int = 0, scale: float = 0.5, hint_scale: float = 16.0):
    """A ControlNet built from the tiny UNet of ``unet_seed`` with seeded zero convolutions (``scale``)
    and a strong hint encoder output (``hint_scale``), so the map's layout shows in the image."""
    from diffusers import ControlNetModel

    unet, _, _ = tiny_components(unet_seed)
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        convs = [(c, scale) for c in [*net.controlnet_down_blocks, net.controlnet_mid_block]]
        for conv, k in [*convs, (net.controlnet_cond_embedding.conv_out, hint_scale)]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * k / conv.weight[0].numel() ** 0.5)
    return net.eval()


def tiny_sd2_controlnet(seed: int = 0):
    """A ControlNet with SD 2.x's 1024-wide text context (so it is detected as SD 2.x)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    return ControlNetModel(
        in_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), block_out_channels=(32, 64),
        layers_per_block=1, cross_attention_dim=1024, attention_head_dim=4, norm_num_groups=32,
        conditioning_embedding_out_channels=HINT_CHANNELS,
    ).eval()


def write_controlnet_folder(folder: Path, name: str, net) -> Path:
    out = folder / name
    net.save_pretrained(out)
    return out
