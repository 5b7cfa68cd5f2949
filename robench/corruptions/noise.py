"""The four CIFAR-10-C noise corruptions, drawn in torch on the input's own device.

Each function takes float pixels in [0, 1] (any shape), a severity 1–5 and a ``torch.Generator``
living on the same device, and returns the corrupted pixels *before* clipping; the registry clips,
optionally quantises and casts back. Formulas and tables follow Hendrycks & Dietterich's
``make_cifar_c.py`` (CIFAR parameters, not the ImageNet-C ones).
"""
from __future__ import annotations

import torch

GAUSSIAN_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_LAMBDA = (500.0, 250.0, 100.0, 75.0, 50.0)
IMPULSE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)
SPECKLE_SIGMA = (0.06, 0.10, 0.12, 0.16, 0.20)


def _randn(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def gaussian_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """x + N(0, σ²) per sub-pixel."""
    return x + GAUSSIAN_SIGMA[severity - 1] * _randn(x, g)


def shot_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Poisson(λ·x)/λ: photon counting with λ photons at full intensity."""
    lam = SHOT_LAMBDA[severity - 1]
    return torch.poisson(x * lam, generator=g) / lam


def impulse_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Salt and pepper as ``skimage.util.random_noise(mode='s&p', amount)``: every sub-pixel is hit
    independently with probability ``amount`` and then set to 1 or 0 with equal probability."""
    amount = IMPULSE_AMOUNT[severity - 1]
    hit = torch.rand(x.shape, generator=g, device=x.device) < amount
    salt = torch.rand(x.shape, generator=g, device=x.device) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def speckle_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """x + x·N(0, σ²): multiplicative noise, strongest on bright pixels."""
    return x + x * (SPECKLE_SIGMA[severity - 1] * _randn(x, g))


NOISE = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
}
