"""Euler-family samplers in sigma space, as k-diffusion and A1111 run them.

Every function has the ``base.SamplerFn`` signature. The probability-flow ODE is
dx/dsigma = d(x, sigma) = (x - D(x, sigma)) / sigma; deterministic samplers integrate it from
``sigmas[0]`` to ``sigmas[-1]``, ancestral ones split each step into a deterministic part down to
``sigma_down`` and fresh noise of size ``sigma_up`` (sigma_down^2 + sigma_up^2 = sigma_next^2).

Coefficients are computed from the sigmas as Python floats (float64); the latents keep their dtype.
A step into sigma 0 is always an Euler step (the derivative at sigma 0 is undefined), as in
k-diffusion. Noise is drawn only through ``noise(sigma, sigma_next)`` of the step it is added in.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from modules.samplers.base import Denoiser, NoiseSource, SamplerOptions, StepCallback, ancestral_step, report

LMS_ORDER = 4  # k-diffusion's and A1111's order for LMS


def levels(sigmas: torch.Tensor) -> list[float]:
    """The sigma schedule as Python floats; a schedule must be 1-D with at least one step."""
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D schedule of at least 2 levels, got shape {tuple(sigmas.shape)}")
    return [float(s) for s in sigmas.tolist()]


def level(sigmas: torch.Tensor, value: float) -> torch.Tensor:
    """A noise level that is not in the schedule, as a 0-dim tensor like the schedule's."""
    return torch.tensor(value, dtype=sigmas.dtype, device=sigmas.device)


def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE's derivative dx/dsigma = (x - D) / sigma (the model's noise estimate)."""
    return (x - denoised) / sigma


def _churn(
    x: torch.Tensor, sigmas: torch.Tensor, i: int, options: SamplerOptions, noise: NoiseSource
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Karras' churn before step ``i``: raise the noise level from sigma to sigma_hat = sigma * (1 + gamma)
    by adding fresh noise. Returns (x, sigma_hat as tensor, sigma_hat); no noise is drawn when gamma is 0."""
    sigma = float(sigmas[i])
    steps = sigmas.shape[0] - 1
    gamma = min(options.s_churn / steps, math.sqrt(2) - 1) if options.s_tmin <= sigma <= options.s_tmax else 0.0
    if gamma <= 0:
        return x, sigmas[i], sigma
    sigma_hat = sigma * (1 + gamma)
    x = x + noise(sigmas[i], sigmas[i + 1]) * (options.s_noise * math.sqrt(sigma_hat**2 - sigma**2))
    return x, level(sigmas, sigma_hat), sigma_hat


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """Euler steps with optional churn (Karras et al. 2022, "Elucidating the Design Space...", Algorithm 2)."""
    sig = levels(sigmas)
    for i in range(len(sig) - 1):
        x, sigma_hat_t, sigma_hat = _churn(x, sigmas, i, options, noise)
        denoised = denoiser(x, sigma_hat_t)
        x = x + to_d(x, sigma_hat, denoised) * (sig[i + 1] - sigma_hat)
        report(callback, i, x, sigmas[i], denoised)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """Ancestral Euler: Euler to sigma_down, noise sigma_up (DDPM's posterior, Ho et al. 2020; k-diffusion)."""
    sig = levels(sigmas)
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sig[i], sig[i + 1], options.eta)
        x = x + to_d(x, sig[i], denoised) * (sigma_down - sig[i])
        if sigma_up > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * (options.s_noise * sigma_up)
        report(callback, i, x, sigmas[i], denoised)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """Heun's 2nd-order steps with optional churn (Karras et al. 2022, "Elucidating the Design Space...", Algorithm 2)."""
    sig = levels(sigmas)
    for i in range(len(sig) - 1):
        x, sigma_hat_t, sigma_hat = _churn(x, sigmas, i, options, noise)
        denoised = denoiser(x, sigma_hat_t)
        d = to_d(x, sigma_hat, denoised)
        dt = sig[i + 1] - sigma_hat
        if sig[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised = denoiser(x_2, sigmas[i + 1])
            x = x + (d + to_d(x_2, sig[i + 1], denoised)) * (dt / 2)
        report(callback, i, x, sigmas[i], denoised)
    return x


def _dpm_2_step(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, d: torch.Tensor, sigma: float, sigma_to: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One DPM-Solver-2 step from ``sigma`` to ``sigma_to`` (derivative ``d`` at ``sigma`` given):
    the derivative at the geometric midpoint moves the whole step; an Euler step into sigma 0.
    Returns (x, the midpoint's denoised estimate or None)."""
    if sigma_to == 0:
        return x + d * (sigma_to - sigma), None
    sigma_mid = math.sqrt(sigma * sigma_to)  # exp(lerp(log sigma, log sigma_to, 1/2))
    x_2 = x + d * (sigma_mid - sigma)
    denoised_2 = denoiser(x_2, level(sigmas, sigma_mid))
    return x + to_d(x_2, sigma_mid, denoised_2) * (sigma_to - sigma), denoised_2


@torch.no_grad()
def sample_dpm_2(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """DPM-Solver-2 midpoint steps with optional churn (Lu et al. 2022, "DPM-Solver", Algorithm 1; Karras et al. 2022's churn)."""
    sig = levels(sigmas)
    for i in range(len(sig) - 1):
        x, sigma_hat_t, sigma_hat = _churn(x, sigmas, i, options, noise)
        denoised = denoiser(x, sigma_hat_t)
        x, denoised_2 = _dpm_2_step(denoiser, x, sigmas, to_d(x, sigma_hat, denoised), sigma_hat, sig[i + 1])
        report(callback, i, x, sigmas[i], denoised if denoised_2 is None else denoised_2)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """Ancestral DPM-Solver-2: midpoint step to sigma_down, noise sigma_up (Lu et al. 2022, "DPM-Solver"; k-diffusion)."""
    sig = levels(sigmas)
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sig[i], sig[i + 1], options.eta)
        x, denoised_2 = _dpm_2_step(denoiser, x, sigmas, to_d(x, sig[i], denoised), sig[i], sigma_down)
        if sigma_up > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * (options.s_noise * sigma_up)
        report(callback, i, x, sigmas[i], denoised if denoised_2 is None else denoised_2)
    return x


def lms_coefficient(sig: list[float], i: int, j: int, order: int) -> float:
    """The integral over [sig[i], sig[i+1]] of the Lagrange basis polynomial through sig[i], ...,
    sig[i-order+1] that is 1 at sig[i-j]. Gauss-Legendre with ceil(order/2) nodes is exact for
    these polynomials of degree order - 1."""
    nodes = [sig[i - k] for k in range(order)]
    points, weights = np.polynomial.legendre.leggauss((order + 1) // 2)
    a, b = sig[i], sig[i + 1]
    total = 0.0
    for u, w in zip(points.tolist(), weights.tolist(), strict=True):
        tau = (a + b) / 2 + (b - a) / 2 * u
        basis = 1.0
        for k, node in enumerate(nodes):
            if k != j:
                basis *= (tau - node) / (nodes[j] - node)
        total += w * basis
    return total * (b - a) / 2


@torch.no_grad()
def sample_lms(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """Linear multistep, order 4, on the uneven sigma grid (Adams-Bashforth; Karras et al. 2022, k-diffusion's sample_lms).

    The first steps use orders 1, 2, 3 while the history of derivatives builds up.
    """
    sig = levels(sigmas)
    history: list[torch.Tensor] = []  # derivatives, newest last
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sigmas[i])
        history = [*history[-(LMS_ORDER - 1) :], to_d(x, sig[i], denoised)]
        order = len(history)
        for j in range(order):
            x = x + history[-1 - j] * lms_coefficient(sig, i, j, order)
        report(callback, i, x, sigmas[i], denoised)
    return x


def karras_levels(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """Karras et al. 2022's schedule: ``n`` levels from sigma_max to sigma_min, evenly spaced in sigma^(1/rho)."""
    if n == 1:
        return [sigma_max]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + k / (n - 1) * (lo - hi)) ** rho for k in range(n)]


RESTART_MIN_STEPS = 20  # A1111: fewer steps run plain Heun
RESTART_SIGMA_MIN, RESTART_SIGMA_MAX = 0.1, 2.0  # A1111's restart interval


def restart_plan(sig: list[float]) -> list[tuple[float, float]]:
    """A1111's default Restart plan for a schedule ending in 0: the (sigma, sigma_next) of every
    Heun step, in order; a step whose sigma is above the previous step's end is a restart (renoise).

    With 20 or more steps the schedule is rebuilt, as A1111 does, as a Karras schedule between the
    last nonzero and the first level with fewer steps, and the saved steps go to restarts from
    sigma ~0.1 up to ~2: 9 steps once, or from 36 steps on, steps // 4 steps twice. The number of
    Heun steps stays ``len(sig) - 1``. Fewer steps, or a schedule not ending in 0, run plain Heun.
    """
    steps = len(sig) - 1
    if steps < RESTART_MIN_STEPS or sig[-1] != 0:
        return list(zip(sig[:-1], sig[1:], strict=True))
    restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
    main = [*karras_levels(steps - restart_steps * restart_times, sig[-2], sig[0]), 0.0]

    def nearest(value: float) -> int:
        return min(range(len(main)), key=lambda k: (abs(main[k] - value), k))

    low, high = nearest(RESTART_SIGMA_MIN), nearest(RESTART_SIGMA_MAX)
    plan: list[tuple[float, float]] = []
    for k in range(len(main) - 1):
        plan.append((main[k], main[k + 1]))
        if k + 1 == low and high < low:
            segment = karras_levels(restart_steps + 1, main[low], main[high])
            plan.extend(list(zip(segment[:-1], segment[1:], strict=True)) * restart_times)
    return plan


@torch.no_grad()
def sample_restart(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """Heun steps with renoised restarts (Xu et al. 2023, "Restart Sampling for Improving Generative Processes").

    A1111's default segments (``restart_plan``). Each restart adds fresh noise from the level it
    ended at up to its top with ``noise(top, bottom)``; a source that returns the same draw for the
    same interval (a Brownian tree) gives both restarts of 36+ steps the same noise.
    """
    last = None
    for i, (sigma, sigma_next) in enumerate(restart_plan(levels(sigmas))):
        sigma_t, next_t = level(sigmas, sigma), level(sigmas, sigma_next)
        if last is not None and last < sigma:  # a restart: forward-diffuse from `last` up to `sigma`
            x = x + noise(sigma_t, level(sigmas, last)) * (options.s_noise * math.sqrt(sigma**2 - last**2))
        denoised = denoiser(x, sigma_t)
        d = to_d(x, sigma, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
        else:
            x_2 = x + d * (sigma_next - sigma)
            denoised = denoiser(x_2, next_t)
            x = x + (d + to_d(x_2, sigma_next, denoised)) * ((sigma_next - sigma) / 2)
        report(callback, i, x, sigma_t, denoised)
        last = sigma_next
    return x


@torch.no_grad()
def sample_lcm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """Latent consistency steps: x = D, renoised to the next level (Luo et al. 2023, "Latent Consistency Models")."""
    sig = levels(sigmas)
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sigmas[i])
        x = denoised
        if sig[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sig[i + 1]
        report(callback, i, x, sigmas[i], denoised)
    return x
