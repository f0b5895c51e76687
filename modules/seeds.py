"""Seeds and initial noise, as A1111 draws them.

The noise of image ``i`` of a batch is drawn on the CPU from a generator seeded with
``seed + i``, so a request gives the same latents on every machine and bit-identical images on
the same machine. Variation seeds blend in a second noise (``subseed + i``) by spherical
interpolation with weight ``subseed_strength``.
"""

from __future__ import annotations

import random

import torch

MAX_SEED = 2**32 - 1


def resolve_seed(seed: int, rng: random.Random | None = None) -> int:
    """-1 means random (drawn from ``rng``, or the system's entropy)."""
    if seed is None or seed < 0:
        return (rng or random.SystemRandom()).randrange(MAX_SEED)
    return int(seed)


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (flattened), t=0 gives a, t=1 gives b."""
    a_flat, b_flat = a.flatten(), b.flatten()
    cos = torch.dot(a_flat / a_flat.norm(), b_flat / b_flat.norm()).clamp(-1.0, 1.0)
    if cos.abs() > 0.9995:  # nearly parallel: plain interpolation is accurate and stable
        return (1 - t) * a + t * b
    omega = torch.acos(cos)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def noise_for_seed(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float32)


def _resized_noise(seed: int, shape: tuple[int, int, int], from_shape: tuple[int, int, int]) -> torch.Tensor:
    """A1111's "resize seed from": noise drawn at another size, centred into this one."""
    src = noise_for_seed(seed, from_shape)
    out = noise_for_seed(seed, shape)
    c, h, w = shape
    _, fh, fw = from_shape
    dy, dx = (h - fh) // 2, (w - fw) // 2
    ty, tx = max(dy, 0), max(dx, 0)
    sy, sx = max(-dy, 0), max(-dx, 0)
    hh, ww = min(h - ty, fh - sy), min(w - tx, fw - sx)
    out[:, ty : ty + hh, tx : tx + ww] = src[:, sy : sy + hh, sx : sx + ww]
    return out


def create_noise(
    shape: tuple[int, int, int],
    seeds: list[int],
    subseeds: list[int] | None = None,
    subseed_strength: float = 0.0,
    seed_resize_from: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Initial latents (B, C, H, W) on the CPU in float32, one seeded draw per image."""
    out = []
    for i, seed in enumerate(seeds):
        if seed_resize_from and seed_resize_from != shape:
            noise = _resized_noise(seed, shape, seed_resize_from)
        else:
            noise = noise_for_seed(seed, shape)
        if subseeds is not None and subseed_strength > 0:
            noise = slerp(subseed_strength, noise, noise_for_seed(subseeds[i], shape))
        out.append(noise)
    return torch.stack(out)
