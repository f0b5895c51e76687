"""Loss weights and learning-rate schedules shared by the bundled trainings (base and ControlNet)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def silhouette_map(image: np.ndarray) -> np.ndarray:
    """White where the pixel differs from the background (the corner), black elsewhere."""
    corner = image[:2, :2].reshape(-1, 3).mean(0)
    return ((np.abs(image.astype(np.float32) - corner).max(-1) > 60) * 255).astype(np.uint8)


def outline_band(image: np.ndarray, width: int = 2) -> np.ndarray:
    """(H, W) float32, 1 within ``width`` pixels of the shape's outline, 0 elsewhere."""
    sil = silhouette_map(image)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return ((cv2.dilate(sil, kernel) > 0) & (cv2.erode(sil, kernel) == 0)).astype(np.float32)


def loss_weights(pictures: list[np.ndarray], latent_side: int, outline_weight: float) -> torch.Tensor:
    """(B, 1, h, w) per-latent-pixel loss weights: 1, plus ``outline_weight`` on latent pixels that
    hold part of the shape's outline (the band max-pooled to the latent grid)."""
    bands = torch.from_numpy(np.stack([outline_band(p) for p in pictures]))[:, None]
    return 1.0 + outline_weight * F.adaptive_max_pool2d(bands, latent_side)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean squared error with per-pixel ``weights``, normalised by their mean (same scale as MSE)."""
    return ((pred - target) ** 2 * weights).mean() / weights.mean()


def lr_at(step: int, start: int, end: int, peak: float, schedule: str, warmup: int = 100, warmup_from: int = 0) -> float:
    """Learning rate at ``step`` of a run from ``start`` to ``end``: a linear warm-up over ``warmup``
    steps counted from ``warmup_from`` (0: from the first step of training, as the shipped files
    were trained), then constant or a cosine decay from ``start`` to zero at ``end``."""
    warm = min(1.0, (step - warmup_from + 1) / warmup)
    if schedule == "cosine":
        done = (step - start) / max(1, end - start)
        return peak * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return peak * warm
