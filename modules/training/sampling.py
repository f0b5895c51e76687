"""Sample images during training: the user's prompts drawn with the weights being trained.

The same pieces as generation: A1111 prompt encoding (``modules.prompts``, with the embedding
being trained standing in for its name), the one sampling core (``processing.sampling.sample``)
from pure noise with the UNet being trained (Euler a, CFG 7) and the shared VAE decode.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from modules import prompts, samplers
from modules.processing import common, sampling
from modules.samplers.schedules import ModelSigmas

SAMPLER = "Euler a"
CFG_SCALE = 7.0


@torch.no_grad()
def sample_images(pipe: Any, method: Any, texts: list[str], seed: int, steps: int, resolution: int) -> list[Image.Image]:
    """One image per prompt (seed ``seed`` for each), drawn with the method's current weights."""
    unet, text_encoder, embeddings = method.sample_parts()
    device = next(unet.parameters()).device
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    channels = pipe.vae.config.latent_channels
    method.train_mode(False)
    images = []
    try:
        for text in texts:
            cond, uncond = prompts.encode_prompt_pair(pipe.tokenizer, text_encoder, text, "", device=text_encoder.device,
                                                      embeddings=embeddings)
            generator = torch.Generator().manual_seed(seed)
            noise = torch.randn((1, channels, resolution // factor, resolution // factor), generator=generator)
            model_sigmas = ModelSigmas.from_config(pipe.scheduler.config)
            latents = sampling.sample(sampling.SamplingInput(
                unet=unet,
                sampler=samplers.prepare(SAMPLER, None, model_sigmas, steps, [seed]),
                model_sigmas=model_sigmas,
                prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"),
                device=device,
                conditioning=sampling.Conditioning.fixed(cond, uncond),
                noise=noise,
                steps=steps,
                cfg_scale=CFG_SCALE,
            ))
            images.extend(common.decode_latents(pipe, latents))
    finally:
        method.train_mode(True)
    return images
