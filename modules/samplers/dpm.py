"""The DPM-Solver++ family (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models"), as k-diffusion's samplers of the same names step.

The solvers work in half-log-SNR time: with x = x0 + sigma * n (alpha = 1), lambda = -log(sigma),
and a step of size h = lambda_next - lambda integrates the data prediction D(x, sigma) exactly
for the linear part. The SDE variants add fresh noise each step with the amount eta (eta = 0 makes
each of them a deterministic ODE solver, and then they draw no noise at all). A step to sigma = 0
is always a plain denoised step (x = D(x, sigma)), as in k-diffusion.
"""

from __future__ import annotations

import torch

from modules.samplers.base import Denoiser, NoiseSource, SamplerOptions, StepCallback, ancestral_step, report


def _lam(sigma: torch.Tensor) -> torch.Tensor:
    """Half-log-SNR lambda = -log(sigma) (alpha = 1)."""
    return -sigma.log()


def _sigma(lam: torch.Tensor) -> torch.Tensor:
    """The noise level at half-log-SNR ``lam``."""
    return (-lam).exp()


def _ancestral_split(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``base.ancestral_step`` on 0-dim tensors."""
    down, up = ancestral_step(float(sigma), float(sigma_next), eta)
    return sigma_next.new_tensor(down), sigma_next.new_tensor(up)


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """Ancestral DPM-Solver++(2S), two model calls a step (Lu et al. 2022, "DPM-Solver++")."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        sigma_down, sigma_up = _ancestral_split(sigma, sigma_next, options.eta)
        if sigma_down == 0:
            x = denoised  # Euler's step to 0: x + (x - D) / sigma * (0 - sigma)
        else:
            lam, lam_next = _lam(sigma), _lam(sigma_down)
            h = lam_next - lam
            lam_mid = lam + h / 2
            x_mid = (_sigma(lam_mid) / sigma) * x - torch.expm1(-h / 2) * denoised
            denoised = denoiser(x_mid, _sigma(lam_mid))
            x = (sigma_down / sigma) * x - torch.expm1(-h) * denoised
        if sigma_next > 0 and sigma_up > 0:
            x = x + noise(sigma, sigma_next) * (options.s_noise * sigma_up)
        report(callback, i, x, sigma, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """DPM-Solver++(2M), the deterministic second-order multistep solver (Lu et al. 2022, "DPM-Solver++")."""
    old_denoised: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = _lam(sigma_next) - _lam(sigma)
            estimate = denoised
            if old_denoised is not None:
                r = (_lam(sigma) - _lam(sigmas[i - 1])) / h  # h_last / h
                estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * estimate
        old_denoised = denoised
        report(callback, i, x, sigma, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """DPM-Solver++ SDE: two stages a step, the first to r = 1/2 of it in lambda (Lu et al. 2022, "DPM-Solver++")."""
    r = 0.5
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            lam, lam_next = _lam(sigma), _lam(sigma_next)
            h = lam_next - lam
            sigma_mid = _sigma(lam + r * h)
            # Stage 1: an ancestral first-order step to the midpoint.
            down, up = _ancestral_split(sigma, sigma_mid, options.eta)
            x_mid = (down / sigma) * x - torch.expm1(lam - _lam(down)) * denoised
            if up > 0:
                x_mid = x_mid + noise(sigma, sigma_mid) * (options.s_noise * up)
            denoised_mid = denoiser(x_mid, sigma_mid)
            # Stage 2: the whole step, with the estimate extrapolated from both (r = 1/2: the midpoint's).
            down, up = _ancestral_split(sigma, sigma_next, options.eta)
            weight = 1 / (2 * r)
            estimate = (1 - weight) * denoised + weight * denoised_mid
            x = (down / sigma) * x - torch.expm1(lam - _lam(down)) * estimate
            if up > 0:
                x = x + noise(sigma, sigma_next) * (options.s_noise * up)
            denoised = denoised_mid
        report(callback, i, x, sigma, denoised)
    return x


def _sample_2m_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
    solver: str,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE; ``solver`` ("midpoint" or "heun") picks the second-order correction."""
    eta = options.eta
    old_denoised: torch.Tensor | None = None
    h_last: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = _lam(sigma_next) - _lam(sigma)
            eta_h = eta * h
            decay = -torch.expm1(-h - eta_h)  # 1 - exp(-(1 + eta) h)
            x = (sigma_next / sigma) * (-eta_h).exp() * x + decay * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                if solver == "heun":
                    x = x + (decay / (-h - eta_h) + 1) / r * (denoised - old_denoised)
                else:
                    x = x + 0.5 * decay / r * (denoised - old_denoised)
            if eta:
                amount = sigma_next * (-torch.expm1(-2 * eta_h)).sqrt() * options.s_noise
                x = x + noise(sigma, sigma_next) * amount
            h_last = h
        old_denoised = denoised
        report(callback, i, x, sigma, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE with the midpoint correction (Lu et al. 2022, "DPM-Solver++")."""
    return _sample_2m_sde(denoiser, x, sigmas, options, callback, noise, "midpoint")


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE with the Heun (exponential-integrator) correction (Lu et al. 2022, "DPM-Solver++")."""
    return _sample_2m_sde(denoiser, x, sigmas, options, callback, noise, "heun")


@torch.no_grad()
def sample_dpmpp_3m_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplerOptions,
    callback: StepCallback | None,
    noise: NoiseSource,
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE, third-order multistep (Lu et al. 2022, "DPM-Solver++"; Gonzalez et al. 2023, "SEEDS")."""
    eta = options.eta
    denoised_1: torch.Tensor | None = None  # the previous step's estimate
    denoised_2: torch.Tensor | None = None  # the one before
    h_1: torch.Tensor | None = None
    h_2: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        h: torch.Tensor | None = None
        if sigma_next == 0:
            x = denoised
        else:
            h = _lam(sigma_next) - _lam(sigma)
            h_eta = h * (eta + 1)
            x = (-h_eta).exp() * x - torch.expm1(-h_eta) * denoised
            phi_2 = torch.expm1(-h_eta) / h_eta + 1
            if denoised_2 is not None and h_1 is not None and h_2 is not None and denoised_1 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif denoised_1 is not None and h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                amount = sigma_next * (-torch.expm1(-2 * eta * h)).sqrt() * options.s_noise
                x = x + noise(sigma, sigma_next) * amount
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
        report(callback, i, x, sigma, denoised)
    return x


__all__ = [
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2m_sde_heun",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
]
