"""Robust kernels ``rho(e)`` applied to a per-pair squared error ``e >= 0``.

Conventions follow Ceres: with residual scale ``a`` and ``b = a^2``, every kernel satisfies
``rho(e) ~ e`` for ``e << b``:

- huber:         ``e`` for ``e <= b``, else ``2 sqrt(b e) - b``
- cauchy:        ``b log(1 + e / b)``
- tanh:          ``b tanh(e / b)``
- geman_mcclure: ``b e / (b + e)``
"""

from __future__ import annotations

import torch
from torch import Tensor

ROBUST_KERNELS = ("huber", "cauchy", "tanh", "geman_mcclure")


def robust_rho(e: Tensor, kernel: str | None, b: float) -> Tensor:
    """Kernel value, twice differentiable away from the Huber knee.

    Args:
        e: (...) non-negative squared errors.
        kernel: one of :data:`ROBUST_KERNELS` or None (identity).
        b: squared scale.
    Returns:
        (...) same shape as ``e``.
    """
    if kernel is None:
        return e
    if kernel == "huber":
        big = e > b
        # Double ``where`` so sqrt's infinite derivative at 0 never meets a zero mask (0 * inf = nan).
        e_big = torch.where(big, e, torch.full_like(e, b))
        return torch.where(big, 2.0 * (b * e_big).sqrt() - b, e)
    if kernel == "cauchy":
        return b * torch.log1p(e / b)
    if kernel == "tanh":
        return b * torch.tanh(e / b)
    if kernel == "geman_mcclure":
        return b * e / (b + e)
    raise ValueError(f"unknown robust kernel {kernel!r}; expected one of {ROBUST_KERNELS} or None")


def robust_weight(e: Tensor, kernel: str | None, b: float) -> Tensor:
    """First derivative ``rho'(e)``: the iteratively reweighted least-squares weight.

    Args:
        e: (...) non-negative squared errors.
        kernel: as in :func:`robust_rho`.
        b: squared scale.
    Returns:
        (...) in (0, 1].
    """
    if kernel is None:
        return torch.ones_like(e)
    if kernel == "huber":
        big = e > b
        e_big = torch.where(big, e, torch.full_like(e, b))
        return torch.where(big, (b / e_big).sqrt(), torch.ones_like(e))
    if kernel == "cauchy":
        return 1.0 / (1.0 + e / b)
    if kernel == "tanh":
        return 1.0 - torch.tanh(e / b).pow(2)
    if kernel == "geman_mcclure":
        return (b / (b + e)).pow(2)
    raise ValueError(f"unknown robust kernel {kernel!r}; expected one of {ROBUST_KERNELS} or None")


def robust_second(e: Tensor, kernel: str | None, b: float) -> Tensor:
    """Second derivative ``rho''(e)`` (for exact Hessians).

    Args:
        e: (...) non-negative squared errors.
        kernel: as in :func:`robust_rho`.
        b: squared scale.
    Returns:
        (...) non-positive.
    """
    if kernel is None:
        return torch.zeros_like(e)
    if kernel == "huber":
        big = e > b
        e_big = torch.where(big, e, torch.full_like(e, b))
        return torch.where(big, -0.5 * b**0.5 * e_big.pow(-1.5), torch.zeros_like(e))
    if kernel == "cauchy":
        return -1.0 / (b * (1.0 + e / b).pow(2))
    if kernel == "tanh":
        th = torch.tanh(e / b)
        return -2.0 * th * (1.0 - th * th) / b
    if kernel == "geman_mcclure":
        return -2.0 * b * b / (b + e).pow(3)
    raise ValueError(f"unknown robust kernel {kernel!r}; expected one of {ROBUST_KERNELS} or None")
