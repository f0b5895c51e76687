"""Token merging (ToMe for SD, Bolya & Hoffman 2023): A1111's ``token_merging_ratio`` options.

Before each self-attention of the UNet's highest-resolution transformer blocks, the most similar
image tokens are merged (a ``ratio`` of them: 0.5 halves the tokens there) and split back after,
so those attention calls, the costliest part of a step at 512 px and above, get cheaper. It
changes the images (a little at 0.3, more at 0.5), so it is off by default (ratio 0), as in A1111.

The merging is the ``tomesd`` library's, as A1111 uses it: deterministic (no random choice of the
tokens kept, so a seed gives the same image), self-attention only. It applies to the first
resolution of the UNet that has attention: the full latent size on SD 1.x / 2.x, half of it on
SDXL, whose first blocks have none (A1111's fixed first level merges nothing on SDXL).
``merged_tokens`` patches the UNet for one sampling run and always removes the patch after, so
a cached UNet (shared by checkpoints and jobs) never keeps it. With ``--compile`` the patched UNet
is compiled anew on its first run at each ratio (checked: the outputs match the eager ones).

Which ratio a pass uses follows A1111's options: the request's own value, else for img2img
(inpainting, outpainting) ``token_merging_ratio_img2img`` when above 0, else
``token_merging_ratio``; the hires fix's second pass ``token_merging_ratio_hr`` when above 0,
else the first pass's ratio. ``bench/README.md`` has the speed and image-change figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import tomesd
import torch

from modules.config import TOKEN_MERGING_MAX, Settings
from modules.schemas import GenerationRequest, Txt2ImgRequest


def first_pass_ratio(req: GenerationRequest, settings: Settings) -> float:
    """The ratio of a request's main pass (txt2img's first pass, img2img, inpainting, outpainting)."""
    if req.token_merging_ratio is not None:
        return req.token_merging_ratio
    if req.mode != "txt2img" and settings.token_merging_ratio_img2img > 0:
        return settings.token_merging_ratio_img2img
    return settings.token_merging_ratio


def hires_ratio(req: Txt2ImgRequest, settings: Settings) -> float:
    """The ratio of the hires fix's second pass."""
    if req.token_merging_ratio_hr is not None:
        return req.token_merging_ratio_hr
    if settings.token_merging_ratio_hr > 0:
        return settings.token_merging_ratio_hr
    return first_pass_ratio(req, settings)


def first_attention_level(unet: torch.nn.Module) -> int:
    """The downsampling (1, 2, 4, ...) of the UNet's first down block with attention (1 when none has)."""
    for index, block in enumerate(getattr(unet, "down_blocks", ())):
        if getattr(block, "attentions", None):
            return 2**index
    return 1


@contextmanager
def merged_tokens(unet: torch.nn.Module, ratio: float) -> Iterator[None]:
    """Within the block, ``unet`` merges ``ratio`` of the tokens before its first attention level's
    self-attention (nothing at ratio 0); the patch is removed when the block ends, error or not."""
    if not ratio:
        yield
        return
    if not 0 < ratio <= TOKEN_MERGING_MAX:
        raise ValueError(f"token merging ratio must lie in 0..{TOKEN_MERGING_MAX}; got {ratio}")
    tomesd.apply_patch(unet, ratio=ratio, max_downsample=first_attention_level(unet), use_rand=False,
                       merge_attn=True, merge_crossattn=False, merge_mlp=False)
    try:
        yield
    finally:
        tomesd.remove_patch(unet)
