"""DPM-Solver's single-step solvers: "DPM fast" (fixed steps) and "DPM adaptive" (error-controlled).

Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around
10 Steps" (https://arxiv.org/abs/2206.00927), in its noise-prediction form on k-diffusion latents:
x = x0 + sigma * n, t = -log(sigma) (the half log-SNR, lambda), eps = (x - D(x, sigma)) / sigma.
DPM-Solver-k (Alg. 1 to 3 of the paper) spends k model calls on one step from t to t + h.

Unlike the other samplers these two do not step along the given sigmas: they only take their ends,
sigma_max = sigmas[0] and sigma_min = the last nonzero sigma, and choose their own levels in
between, as A1111 and k-diffusion do. Where the schedule ends at 0 they finish with one more model
call, x = D(x, sigma_min), the denoising step every other sampler takes to 0 (k-diffusion leaves the
last sigma_min worth of noise in; A1111 decodes it as is). So DPM fast makes len(sigmas) calls on a
schedule ending at 0: len(sigmas) - 1 for the solver, as A1111's step count, and that last one.
DPM adaptive makes as many as its error control asks (2 or 3 per try), whatever the step count.

With ``options.eta`` > 0 each step is ancestral (as k-diffusion's ``eta``; A1111's "Eta for
ancestral samplers", 1 by default): it solves down to the lower level sigma_down of
``_ancestral_levels`` and adds fresh noise of size sigma_up * s_noise from ``noise``.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from modules.samplers.base import Denoiser, NoiseSource, SamplerOptions, StepCallback, StepInfo


class _Model:
    """The denoiser seen as DPM-Solver's noise predictor at time t = -log(sigma); counts calls."""

    def __init__(self, denoiser: Denoiser, like: torch.Tensor, ends: tuple[float, float]) -> None:
        self.denoiser, self.dtype, self.device = denoiser, like.dtype, like.device
        self.ends = {-math.log(sigma): sigma for sigma in ends}  # the schedule's own ends, unrounded

    def level(self, t: float) -> torch.Tensor:
        """sigma(t) as the 0-dim tensor the denoiser and the noise source take."""
        return torch.tensor(self.ends.get(t, math.exp(-t)), dtype=self.dtype, device=self.device)

    def eps(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, denoised) at x, t."""
        denoised = self.denoiser(x, self.level(t))
        return (x - denoised) / math.exp(-t), denoised


def _sigma(t: float) -> float:
    """The noise level at t = -log(sigma)."""
    return math.exp(-t)


def _dpm_solver_1(x: torch.Tensor, eps: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """DPM-Solver-1 (the paper's eq. 3.7; DDIM): no model call beyond ``eps`` at t."""
    return x - _sigma(t_next) * math.expm1(t_next - t) * eps


def _dpm_solver_2(
    model: _Model, x: torch.Tensor, eps: torch.Tensor, t: float, t_next: float, r1: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver-2 (Alg. 1) with its midpoint at t + r1 * h: one model call; returns (x_next, eps at
    the midpoint)."""
    h = t_next - t
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * math.expm1(r1 * h) * eps
    eps_1, _ = model.eps(u1, s1)
    x_next = x - _sigma(t_next) * math.expm1(h) * eps - _sigma(t_next) / (2 * r1) * math.expm1(h) * (eps_1 - eps)
    return x_next, eps_1


def _dpm_solver_3(
    model: _Model,
    x: torch.Tensor,
    eps: torch.Tensor,
    t: float,
    t_next: float,
    eps_1: torch.Tensor | None = None,
    r1: float = 1 / 3,
    r2: float = 2 / 3,
) -> torch.Tensor:
    """DPM-Solver-3 (Alg. 2) with intermediate times t + r1 * h and t + r2 * h: two model calls, or
    one where ``eps_1`` (eps at the first, as ``_dpm_solver_2`` with the same r1 returns) is given."""
    h = t_next - t
    s1, s2 = t + r1 * h, t + r2 * h
    if eps_1 is None:
        u1 = x - _sigma(s1) * math.expm1(r1 * h) * eps
        eps_1, _ = model.eps(u1, s1)
    phi_2 = math.expm1(r2 * h) / (r2 * h) - 1
    u2 = x - _sigma(s2) * math.expm1(r2 * h) * eps - _sigma(s2) * (r2 / r1) * phi_2 * (eps_1 - eps)
    eps_2, _ = model.eps(u2, s2)
    return x - _sigma(t_next) * math.expm1(h) * eps - _sigma(t_next) / r2 * (math.expm1(h) / h - 1) * (eps_2 - eps)


def _ancestral_levels(t: float, t_next: float, t_end: float, eta: float) -> tuple[float, float]:
    """(t_down, sigma_up): the deterministic step goes from t to t_down, then noise of size sigma_up
    brings it back up to sigma(t_next), as k-diffusion's DPM-Solver does; (t_next, 0) for eta 0."""
    if not eta:
        return t_next, 0.0
    sigma_from, sigma_to = _sigma(t), _sigma(t_next)
    up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    down = math.sqrt(sigma_to**2 - up**2)
    t_down = t_end if down <= 0 else min(t_end, -math.log(down))
    return t_down, math.sqrt(max(sigma_to**2 - _sigma(t_down) ** 2, 0.0))


def _ends(sigmas: torch.Tensor) -> tuple[float, float]:
    """(sigma_max, sigma_min): the first and the last nonzero sigma of a decreasing schedule."""
    levels = sigmas.tolist()
    nonzero = [s for s in levels if s > 0]
    if not nonzero or nonzero != levels[: len(nonzero)] or any(a < b for a, b in pairwise(nonzero)):
        raise ValueError(f"DPM-Solver needs decreasing positive sigmas, optionally ending at 0; got {levels}")
    return nonzero[0], nonzero[-1]


def _fast_orders(nfe: int) -> list[int]:
    """The orders of DPM-Solver-fast's steps for ``nfe`` model calls (the paper's Sec. 3.4): as many
    order-3 steps as fit, the remainder as one order-1 or order-2 step (order 2 + 1 when 3 divides)."""
    steps = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (steps - 2) + [2, 1]
    return [3] * (steps - 1) + [nfe % 3]


def _denoise_to_zero(
    model: _Model, x: torch.Tensor, sigmas: torch.Tensor, t_end: float, i: int, callback: StepCallback | None
) -> torch.Tensor:
    """The final step from sigma_min to a schedule's closing 0: x = D(x, sigma_min)."""
    if sigmas[-1] > 0:
        return x
    _, denoised = model.eps(x, t_end)
    if callback is not None:
        callback(StepInfo(i, denoised, model.level(t_end), denoised))
    return denoised


@torch.no_grad()
def sample_dpm_fast(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """DPM-Solver-fast, steps uniform in log-SNR (Lu et al. 2022, https://arxiv.org/abs/2206.00927)."""
    if len(sigmas) < 2:
        return x
    sigma_max, sigma_min = _ends(sigmas)
    model = _Model(denoiser, x, (sigma_max, sigma_min))
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    orders = _fast_orders(len(sigmas) - 1) if t_end > t_start else []
    ts = torch.linspace(t_start, t_end, len(orders) + 1, dtype=torch.float64).tolist()
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_down, sigma_up = _ancestral_levels(t, t_next, t_end, options.eta)
        eps, denoised = model.eps(x, t)
        if order == 1:
            x = _dpm_solver_1(x, eps, t, t_down)
        elif order == 2:
            x, _ = _dpm_solver_2(model, x, eps, t, t_down, r1=1 / 2)
        else:
            x = _dpm_solver_3(model, x, eps, t, t_down)
        if sigma_up > 0:
            x = x + (sigma_up * options.s_noise) * noise(model.level(t), model.level(t_next))
        if callback is not None:
            callback(StepInfo(i, x, model.level(t), denoised))
    return _denoise_to_zero(model, x, sigmas, t_end, len(orders), callback)


class _PIDStepSize:
    """Step-size control (Söderlind's PID controller, as k-diffusion's ``PIDStepSizeController``):
    h is scaled by a factor of the last inverse errors, limited by 1 + atan(factor - 1); a step is
    accepted when the factor is at least ``accept_safety``."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.inv_errors: list[float] = []  # this, last accepted, the one before

    def propose(self, error: float) -> bool:
        """Scale h for this step's error (1 = on tolerance); whether the step is accepted."""
        inv_error = 1 / (error + 1e-8)
        if not self.inv_errors:
            self.inv_errors = [inv_error] * 3
        self.inv_errors[0] = inv_error
        e0, e1, e2 = self.inv_errors
        factor = 1 + math.atan(e0**self.b1 * e1**self.b2 * e2**self.b3 - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.inv_errors = [e0, e0, e1]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
    *,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
) -> torch.Tensor:
    """DPM-Solver-12/23, adaptive step size (Lu et al. 2022, https://arxiv.org/abs/2206.00927)."""
    if order not in (2, 3):
        raise ValueError(f"DPM adaptive's order must be 2 or 3, got {order}")
    if len(sigmas) < 2:
        return x
    sigma_max, sigma_min = _ends(sigmas)
    model = _Model(denoiser, x, (sigma_max, sigma_min))
    t, t_end = -math.log(sigma_max), -math.log(sigma_min)
    pid = _PIDStepSize(h_init, pcoeff, icoeff, dcoeff, 1.5 if options.eta else order, accept_safety)
    x_prev, accepted = x, 0
    while t < t_end - 1e-5:
        t_next = min(t_end, t + pid.h)
        t_down, sigma_up = _ancestral_levels(t, t_next, t_end, options.eta)
        eps, denoised = model.eps(x, t)
        if order == 2:
            x_low = _dpm_solver_1(x, eps, t, t_down)
            x_high, _ = _dpm_solver_2(model, x, eps, t, t_down, r1=1 / 2)
        else:
            x_low, eps_1 = _dpm_solver_2(model, x, eps, t, t_down, r1=1 / 3)
            x_high = _dpm_solver_3(model, x, eps, t, t_down, eps_1=eps_1)
        scale = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
        error = torch.linalg.vector_norm((x_low - x_high) / scale).item() / math.sqrt(x.numel())
        if pid.propose(error):
            x_prev = x_low
            x = x_high
            if sigma_up > 0:
                x = x + (sigma_up * options.s_noise) * noise(model.level(t), model.level(t_next))
            if callback is not None:
                callback(StepInfo(accepted, x, model.level(t), denoised))
            t, accepted = t_next, accepted + 1
    return _denoise_to_zero(model, x, sigmas, t_end, accepted, callback)
