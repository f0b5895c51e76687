"""What every sampler function shares: the denoiser it calls, the noise it draws, its options and
its per-step callback.

Samplers work as k-diffusion's do (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models"): latents ``x`` live at noise level ``sigma`` (x = x0 + sigma * n),
a denoiser ``D(x, sigma)`` estimates x0, and a sampler walks a decreasing sigma schedule that ends
at 0. Every sampler is a flat function with one signature, ``SamplerFn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch


class Denoiser(Protocol):
    """The model as a sampler sees it (classifier-free guidance already applied)."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The estimate of the clean latents for ``x`` at noise level ``sigma`` (a 0-dim tensor,
        the same level for every image of the batch)."""
        ...

    @property
    def uncond(self) -> torch.Tensor | None:
        """The unconditional denoised estimate of the last call (DDIM CFG++ steps with it);
        None when the last call ran without guidance."""
        ...


class NoiseSource(Protocol):
    """Fresh standard-normal noise shaped like the latents, for the step from ``sigma`` to
    ``sigma_next``. Seeded per image; a Brownian-tree source returns the normalised increment of
    one Brownian path between the two levels, so a finer schedule refines the same path."""

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepInfo:
    """What a sampler reports after step ``i`` of ``len(sigmas) - 1``."""

    i: int
    x: torch.Tensor  # the latents after the step
    sigma: torch.Tensor  # the level the step started from
    denoised: torch.Tensor  # the step's (last) denoised estimate


StepCallback = Callable[[StepInfo], None]


def report(callback: StepCallback | None, i: int, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> None:
    """Tell the callback (if any) about step ``i``."""
    if callback is not None:
        callback(StepInfo(i, x, sigma, denoised))


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step (Karras et al. 2022): step deterministically to
    sigma_down, then add sigma_up of fresh noise, so that sigma_down^2 + sigma_up^2 = sigma_next^2;
    eta 1 adds DDPM's posterior noise, eta 0 none."""
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


@dataclass(frozen=True)
class SamplerOptions:
    """A1111's sampler parameters (Settings > Sampler parameters); each sampler reads what it uses."""

    eta: float = 1.0  # noise amount of ancestral, SDE and DDIM steps (A1111: eta_ancestral 1, eta_ddim 0)
    s_churn: float = 0.0  # Karras' stochastic churn (Euler, Heun, DPM2)
    s_tmin: float = 0.0  # churn only for sigma in [s_tmin, s_tmax]
    s_tmax: float = math.inf
    s_noise: float = 1.0  # scale of the noise added by churn and ancestral steps
    order: int = 3  # UniPC's order (A1111: uni_pc_order 3)


SamplerFn = Callable[
    [Denoiser, torch.Tensor, torch.Tensor, SamplerOptions, StepCallback | None, NoiseSource], torch.Tensor
]
"""``sampler(denoiser, x, sigmas, options, callback, noise) -> x``: ``x`` starts at ``sigmas[0]``
(already scaled: noise * sigmas[0], or init latents + noise * sigmas[0]); the result is at
``sigmas[-1]`` (0 for a full run)."""
