"""Noise sources for samplers (``base.NoiseSource``): per-image seeded draws."""

from __future__ import annotations

import math

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


_TREE_TOL = 1e-6  # torchsde's default, as k-diffusion's trees: another tolerance gives other paths
_TREE_DIGITS = 6  # the decimals torchsde rounds times to at that tolerance


class BrownianTreeNoise:
    """Noise from one Brownian path per image (k-diffusion's BrownianTreeNoiseSampler, which
    A1111 gives DPM++ SDE, 2M SDE, 2M SDE Heun and 3M SDE): for the step from ``sigma`` to
    ``sigma_next`` it returns (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|), standard
    normal, with time t = sigma. Increments over adjacent intervals are those of one path, so a
    finer schedule, or a solver that also queries midpoints, refines the same path.

    Each image has its own torchsde ``BrownianTree`` seeded with its own seed (``entropy=seed``),
    drawn on the CPU in float32, so an image's noise depends only on its seed and on
    [``sigma_min``, ``sigma_max``] (the smallest nonzero and the largest sigma of the schedule;
    ``for_sigmas`` picks them), never on the rest of the batch or the device.
    """

    def __init__(self, like: torch.Tensor, sigma_min: float, sigma_max: float, seeds: list[int]) -> None:
        if len(seeds) != like.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for a batch of {like.shape[0]}")
        if any(seed < 0 for seed in seeds):
            raise ValueError(f"Brownian-tree seeds must be non-negative integers, got {seeds}")
        sigma_min, sigma_max = float(sigma_min), float(sigma_max)
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        try:
            import torchsde
        except ImportError as error:
            raise ImportError("Brownian-tree noise needs the Python package torchsde; install it") from error
        self.shape, self.dtype, self.device = like.shape[1:], like.dtype, like.device
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        w0 = torch.zeros(self.shape, dtype=torch.float32)
        self.trees = [torchsde.BrownianTree(sigma_min, w0, sigma_max, entropy=int(seed), tol=_TREE_TOL) for seed in seeds]

    @classmethod
    def for_sigmas(cls, like: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]) -> BrownianTreeNoise:
        """The tree spanning a schedule: from its smallest nonzero sigma to its largest (as A1111)."""
        positive = sigmas[sigmas > 0]
        if positive.numel() == 0:
            raise ValueError("the sigma schedule has no nonzero sigma to span")
        return cls(like, float(positive.min()), float(positive.max()), seeds)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        start, end = float(sigma), float(sigma_next)
        # torchsde rounds its ends and every query to its tolerance's digits; rounding here too
        # keeps the schedule's own ends (float32 sigmas) inside the tree without its warnings.
        first, last = round(self.sigma_min, _TREE_DIGITS), round(self.sigma_max, _TREE_DIGITS)
        low, high = round(min(start, end), _TREE_DIGITS), round(max(start, end), _TREE_DIGITS)
        if low < first or high > last:
            raise ValueError(
                f"noise asked for sigma {start} to {end}, outside the tree's "
                f"[{self.sigma_min}, {self.sigma_max}]; build the tree from the schedule's sigmas"
            )
        if high == low:  # a repeated sigma: every sampler here scales this step's noise by 0
            return torch.zeros((len(self.trees), *self.shape), device=self.device, dtype=self.dtype)
        increments = torch.stack([tree(low, high) for tree in self.trees])  # W(high) - W(low)
        scale = (1.0 if end > start else -1.0) / math.sqrt(high - low)
        return (increments * scale).to(self.device, self.dtype)
