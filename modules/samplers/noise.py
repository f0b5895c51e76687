"""Noise sources for samplers (``base.NoiseSource``): per-image seeded draws."""

from __future__ import annotations

import torch


class GeneratorNoise:
    """Standard-normal noise from one ``torch.Generator`` per image, drawn on the CPU (as A1111's
    and Easel's seeds are, so a seed gives the same image on every device), one image at a time
    in batch order."""

    def __init__(self, like: torch.Tensor, generators: list[torch.Generator]) -> None:
        if len(generators) != like.shape[0]:
            raise ValueError(f"{len(generators)} generators for a batch of {like.shape[0]}")
        self.shape, self.dtype, self.device = like.shape[1:], like.dtype, like.device
        self.generators = generators

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        draws = [torch.randn(self.shape, generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(self.device, self.dtype)
