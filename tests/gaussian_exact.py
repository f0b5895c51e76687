"""Exact solutions for data drawn from a Gaussian, to measure samplers against.

If the data are x0 ~ N(mu, s^2) (every element independent), then at noise level sigma
(x = x0 + sigma * n) the ideal denoiser is E[x0 | x] = mu + s^2 / (s^2 + sigma^2) * (x - mu), and the
probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma has the solution
x(sigma) = mu + sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma0^2) * (x(sigma0) - mu).
Stochastic samplers, started from x(sigma0) ~ N(mu, s^2 + sigma0^2), should end at N(mu, s^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GaussianDenoiser:
    """The ideal denoiser for N(mu, s^2) data; counts its calls. ``uncond`` is the same estimate
    (an unguided model), for samplers that ask for it."""

    mu: float = 0.5
    s: float = 0.8
    calls: int = 0
    uncond: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)
        self.uncond = out
        return out

    def exact(self, x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
        """The probability-flow ODE's solution from ``x_start`` at ``sigma_start`` to ``sigma_end``."""
        ratio = ((self.s**2 + sigma_end**2) / (self.s**2 + sigma_start**2)) ** 0.5
        return self.mu + ratio * (x_start - self.mu)
