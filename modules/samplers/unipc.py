"""UniPC: a multistep predictor (UniP) with a corrector (UniC) that reuses each new model call.

Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models". This is the data-prediction form with B(h) = expm1(h) ("bh2"), A1111's and diffusers'
default, written for k-diffusion latents: x = x0 + sigma * n, lambda = -log(sigma), h = lambda_next -
lambda. A step of order p from sigma to sigma_next, with denoised estimates m0 (at sigma) and m_k
(at earlier levels, r_k = (lambda_k - lambda) / h, D_k = (m_k - m0) / r_k), is

    x_next = (sigma_next / sigma) * x - expm1(-h) * m0 - expm1(-h) * sum_k rho_k * D_k

where rho solves the Vandermonde system of the paper (a lone rho is 1/2, as in the paper's and
diffusers' code). The corrector redoes the last step once the model has been called at its end
point, adding that estimate with r = 1, which raises the order by one at no extra model call.

Orders follow diffusers' ``UniPCMultistepScheduler`` (``lower_order_final=True``): step i of N uses
order min(order, i + 1, N - i), so the first steps warm up the history and the last two drop to 2
and 1. The corrector runs after every step except the last (there is no model call after it).

The last step to sigma = 0 (lambda = inf) is the limit of the order-1 update, x = denoised; diffusers
gets the same value through expm1(-inf) = -1 and 0 / sigma = 0.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from modules.samplers.base import Denoiser, NoiseSource, SamplerOptions, StepCallback, StepInfo


def _b_over_bh(hh: float, order: int) -> list[float]:
    """The right-hand side b_1..b_order of UniPC's linear system, divided by B(h) = expm1(hh)
    (hh = -h in data prediction): g_1 = expm1(hh) / hh - 1, g_(k+1) = g_k / hh - 1 / (k+1)!,
    b_k = k! * g_k / B(h)."""
    bh = math.expm1(hh)
    g = bh / hh - 1.0
    b = []
    for k in range(1, order + 1):
        b.append(g * math.factorial(k) / bh)
        g = g / hh - 1.0 / math.factorial(k + 1)
    return b


def _solve(rks: list[float], b: list[float]) -> list[float]:
    """rho with sum_k rho_k * r_k^(j-1) = b_j for j = 1..len(rks) (the paper's R_p rho = b)."""
    n = len(rks)
    matrix = torch.tensor([[r**j for r in rks] for j in range(n)], dtype=torch.float64)
    return torch.linalg.solve(matrix, torch.tensor(b[:n], dtype=torch.float64)).tolist()


def _update(
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    m0: torch.Tensor,
    older: list[tuple[float, torch.Tensor]],
    new: torch.Tensor | None,
) -> torch.Tensor:
    """x at ``sigma_next`` from ``x`` at ``sigma``, with ``m0`` the denoised estimate at ``sigma`` and
    ``older`` (lambda, denoised) at earlier levels, most recent first.

    ``new`` None: the predictor UniP of order p = len(older) + 1. ``new`` given (the estimate at
    ``sigma_next``, from the model call that starts the next step): the corrector UniC of that
    same step, of order p + 1."""
    lam = -math.log(sigma)
    h = -math.log(sigma_next) - lam
    hh = -h
    rks = [(lam_k - lam) / h for lam_k, _ in older]
    diffs = [(m_k - m0) / r_k for r_k, (_, m_k) in zip(rks, older, strict=True)]
    if new is None:  # predictor of order p = len(older) + 1
        if len(rks) == 1:  # order 2: 1/2 rather than b_1 (-> 1/2 as h -> 0), as the paper's code
            rhos = [0.5]
        elif rks:
            rhos = _solve(rks, _b_over_bh(hh, len(rks)))
        else:
            rhos = []
    else:  # corrector: the new estimate enters with r = 1
        rks.append(1.0)
        diffs.append(new - m0)
        rhos = [0.5] if len(rks) == 1 else _solve(rks, _b_over_bh(hh, len(rks)))  # order 1: 1/2 likewise
    bh = math.expm1(hh)
    x_next = (sigma_next / sigma) * x - bh * m0
    for rho, diff in zip(rhos, diffs, strict=True):
        x_next = x_next - (bh * rho) * diff
    return x_next


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """UniPC-p with UniC, bh2, data prediction (Zhao et al. 2023, https://arxiv.org/abs/2302.04867)."""
    if options.order < 1:
        raise ValueError(f"UniPC order must be 1 or more, got {options.order}")
    levels = sigmas.tolist()
    if any(a <= b for a, b in pairwise(levels)) or (levels and levels[-1] < 0):
        raise ValueError(f"UniPC needs strictly decreasing sigmas ending at 0 or above, got {levels}")
    steps = len(levels) - 1
    history: list[tuple[float, torch.Tensor]] = []  # (lambda, denoised), most recent last
    x_before: torch.Tensor | None = None  # x at the start of the last step, for the corrector
    last_order = 0  # the last step's order
    for i in range(steps):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = denoiser(x, sigmas[i])
        if x_before is not None:  # UniC: redo the last step with this new estimate
            m0, older = history[-1][1], history[-2::-1][: last_order - 1]
            x = _update(x_before, levels[i - 1], sigma, m0, older, denoised)
        history = [*history, (-math.log(sigma), denoised)][-options.order :]
        last_order = min(options.order, i + 1, steps - i)
        x_before = x
        if sigma_next == 0:
            x = denoised
        else:
            x = _update(x, sigma, sigma_next, denoised, history[-2::-1][: last_order - 1], None)
        if callback is not None:
            callback(StepInfo(i, x, sigmas[i], denoised))
    return x
