"""Robust kernels ``rho(e)`` applied to a per-pair squared error ``e >= 0``.

Each kernel is an object with ``rho``, its first derivative ``weight`` (the iteratively reweighted
least-squares weight) and its second derivative ``second`` (for exact Hessians); calling it returns
all three. Conventions follow Ceres: with residual scale ``a`` and ``b = a^2``, every kernel
satisfies ``rho(e) ~ e`` for ``e << b``:

- huber:         ``e`` for ``e <= b``, else ``2 sqrt(b e) - b``
- cauchy:        ``b log(1 + e / b)``
- tanh:          ``b tanh(e / b)``
- geman_mcclure: ``b e / (b + e)``

:data:`IDENTITY` (``rho(e) = e``) stands for "no kernel".
"""

from __future__ import annotations

import torch
from torch import Tensor


class RobustKernel:
    """``rho(e)`` on squared errors ``e`` (any shape) with squared scale ``b``; subclasses define the
    three functions, all elementwise and twice differentiable away from a kernel's knee."""

    name: str = ""
    #: ``rho(e) = e``: the solver skips the kernel's terms.
    identity: bool = False

    def rho(self, e: Tensor, b: float) -> Tensor:
        raise NotImplementedError

    def weight(self, e: Tensor, b: float) -> Tensor:
        """``rho'(e)``, in (0, 1]."""
        raise NotImplementedError

    def second(self, e: Tensor, b: float) -> Tensor:
        """``rho''(e)``, non-positive."""
        raise NotImplementedError

    def __call__(self, e: Tensor, b: float) -> tuple[Tensor, Tensor, Tensor]:
        """``(rho, rho', rho'')`` at ``e``."""
        return self.rho(e, b), self.weight(e, b), self.second(e, b)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(RobustKernel):
    name, identity = "none", True

    def rho(self, e, b):
        return e

    def weight(self, e, b):
        return torch.ones_like(e)

    def second(self, e, b):
        return torch.zeros_like(e)


def _above(e: Tensor, b: float) -> tuple[Tensor, Tensor]:
    """Huber's branch mask and ``e`` clamped to the knee on the quadratic side: the double ``where``
    keeps sqrt's infinite derivative at 0 from meeting a zero mask (0 * inf = nan)."""
    big = e > b
    return big, torch.where(big, e, torch.full_like(e, b))


class Huber(RobustKernel):
    name = "huber"

    def rho(self, e, b):
        big, e_big = _above(e, b)
        return torch.where(big, 2.0 * (b * e_big).sqrt() - b, e)

    def weight(self, e, b):
        big, e_big = _above(e, b)
        return torch.where(big, (b / e_big).sqrt(), torch.ones_like(e))

    def second(self, e, b):
        big, e_big = _above(e, b)
        return torch.where(big, -0.5 * b**0.5 * e_big.pow(-1.5), torch.zeros_like(e))


class Cauchy(RobustKernel):
    name = "cauchy"

    def rho(self, e, b):
        return b * torch.log1p(e / b)

    def weight(self, e, b):
        return 1.0 / (1.0 + e / b)

    def second(self, e, b):
        return -1.0 / (b * (1.0 + e / b).pow(2))


class Tanh(RobustKernel):
    name = "tanh"

    def rho(self, e, b):
        return b * torch.tanh(e / b)

    def weight(self, e, b):
        return 1.0 - torch.tanh(e / b).pow(2)

    def second(self, e, b):
        th = torch.tanh(e / b)
        return -2.0 * th * (1.0 - th * th) / b


class GemanMcClure(RobustKernel):
    name = "geman_mcclure"

    def rho(self, e, b):
        return b * e / (b + e)

    def weight(self, e, b):
        return (b / (b + e)).pow(2)

    def second(self, e, b):
        return -2.0 * b * b / (b + e).pow(3)


IDENTITY = Identity()
KERNELS: dict[str, RobustKernel] = {k.name: k for k in (Huber(), Cauchy(), Tanh(), GemanMcClure())}
# The names a config or a keyword argument may give.
ROBUST_KERNELS = tuple(KERNELS)


def robust_kernel(kernel: str | RobustKernel | None) -> RobustKernel:
    """The kernel a name stands for (None: :data:`IDENTITY`); a kernel object passes through.

    Raises:
        ValueError: an unknown name, naming the known ones.
    """
    if kernel is None:
        return IDENTITY
    if isinstance(kernel, RobustKernel):
        return kernel
    if kernel not in KERNELS:
        raise ValueError(f"robust must be None or one of {ROBUST_KERNELS}, got {kernel!r}")
    return KERNELS[kernel]
