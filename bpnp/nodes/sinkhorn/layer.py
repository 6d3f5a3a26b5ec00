"""Declarative Sinkhorn layer: the entropic optimal-transport plan as a differentiable function.

    P* = argmin_P <M, P> + (1/gamma) <P, log P>   s.t.  P 1 = r,  P^T 1 = c

Forward: :func:`bpnp.nodes.sinkhorn.solver.solve_scaling` (stabilised multiplicative iterations with a
log-domain rescue). Backward: implicit differentiation of the optimality conditions
(:mod:`bpnp.nodes.sinkhorn.backward`), so memory does not depend on the number of iterations; or,
for comparison, autograd through log-domain iterations (``backward="unroll"``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bpnp.nodes.declarative import DeclarativeNode, declarative
from bpnp.nodes.sinkhorn.backward import sinkhorn_vjp
from bpnp.nodes.sinkhorn.solver import (
    SolverInfo,
    scaled_span,
    shift_rows,
    solve_log_domain_unrolled,
    solve_scaling,
)

# Largest rounding error of log P accepted from the potentials (SolverInfo.log_error): float32 input
# beyond it is solved again in float64, and float64 beyond it is an error.
MAX_LOG_ERROR = 1e-3


class SinkhornNode(DeclarativeNode):
    """Entropic optimal transport as a declarative node: inputs ``(M, r, c)``, output the plan.

    Objective ``<M, P> + (1/gamma) <P, log P>`` under ``P 1 = r``, ``P^T 1 = c``; the backward solves
    the constrained optimality conditions through the Schur complement (:func:`sinkhorn_vjp`)
    instead of the generic unconstrained VJP.
    """

    def __init__(self, gamma: float, max_iter: int, tol: float) -> None:
        self.gamma, self.max_iter, self.tol = gamma, max_iter, tol

    def solve(self, M: Tensor, r: Tensor, c: Tensor):
        P, info = solve_scaling(self.gamma * M, r, c, self.max_iter, self.tol)
        return P, (info.iterations, info.error, info.converged, info.log_error), (P,)

    def objective(self, M: Tensor, r: Tensor, c: Tensor, y: Tensor) -> Tensor:
        entropy = torch.where(y > 0, y * y.clamp_min(torch.finfo(y.dtype).tiny).log(), 0.0)
        return (M * y).sum((-2, -1)) + entropy.sum((-2, -1)) / self.gamma

    def vjp(self, saved, grads, needs):
        (P,), (grad_P,) = saved, grads
        grad_P = torch.zeros_like(P) if grad_P is None else grad_P
        return sinkhorn_vjp(P, grad_P, self.gamma)


def _marginal(x: Tensor | None, mask: Tensor, name: str, dtype: torch.dtype) -> Tensor:
    """Masked marginal normalised to sum 1 per sample (all zero for a sample with no valid entry)."""
    w = mask.to(dtype)
    if x is not None:
        if x.shape != mask.shape:
            raise ValueError(f"sinkhorn: '{name}' must have shape {tuple(mask.shape)}, got {tuple(x.shape)}")
        bad = mask & ~(torch.isfinite(x) & (x >= 0))
        if bool(bad.any()):
            raise ValueError(f"sinkhorn: '{name}' must be finite and non-negative on its valid entries")
        w = torch.where(mask, x.to(dtype), torch.zeros((), dtype=dtype, device=x.device))
    total = w.sum(-1, keepdim=True)
    return torch.where(
        total > 0, w / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(w)
    )


def _check_settings(M: Tensor, backward: str, gamma: float, max_iter: int, tol: float) -> None:
    if M.dim() != 3:
        raise ValueError(f"sinkhorn: 'M' must have shape (B, m, n), got {tuple(M.shape)}")
    if backward not in ("implicit", "unroll"):
        raise ValueError(f"sinkhorn: 'backward' must be 'implicit' or 'unroll', got {backward!r}")
    if not (math.isfinite(gamma) and gamma > 0) or max_iter < 1 or not tol >= 0:
        raise ValueError(
            f"sinkhorn: need finite gamma > 0, max_iter >= 1, tol >= 0 (got {gamma}, {max_iter}, {tol})"
        )


def _finite_costs(M: Tensor, row_mask: Tensor, col_mask: Tensor, padded: bool) -> Tensor:
    """``M`` with its masked entries set to 0; an error if an unmasked entry is not finite."""
    if padded:
        valid = row_mask[:, :, None] & col_mask[:, None, :]
        if bool((valid & ~torch.isfinite(M)).any()):
            raise ValueError("sinkhorn: 'M' has non-finite entries at unmasked positions")
        return torch.where(valid, M, torch.zeros_like(M))
    if not bool(torch.isfinite(M).all()):
        raise ValueError("sinkhorn: 'M' has non-finite entries at unmasked positions")
    return M


def _append_dustbin(
    M: Tensor, r: Tensor | None, c: Tensor | None, row_mask: Tensor, col_mask: Tensor, dustbin: Tensor | float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Append one row and one column of cost ``z = dustbin`` and the SuperGlue marginals
    ``[1..1, n] / (m + n)``; ``r`` and ``c`` must be None."""
    if r is not None or c is not None:
        raise ValueError("sinkhorn: with 'dustbin' the marginals are fixed; pass r=None and c=None")
    z = torch.as_tensor(dustbin, dtype=M.dtype, device=M.device)
    if z.numel() != 1 or not bool(torch.isfinite(z).all()):
        raise ValueError("sinkhorn: 'dustbin' must be a finite scalar")
    B, m, n = M.shape
    z = z.to(M.dtype).reshape(())
    M = torch.cat([M, z.expand(B, 1, n)], dim=1)
    M = torch.cat([M, z.expand(B, m + 1, 1)], dim=2)
    ms = row_mask.sum(-1, keepdim=True).to(M.dtype)
    ns = col_mask.sum(-1, keepdim=True).to(M.dtype)
    # A sample with no points on one side has nothing to transport.
    has = (ms > 0) & (ns > 0)
    row_mask = torch.cat([row_mask, has], dim=1)
    col_mask = torch.cat([col_mask, has], dim=1)
    r = torch.cat([row_mask[:, :m].to(M.dtype), ns], dim=1)
    c = torch.cat([col_mask[:, :n].to(M.dtype), ms], dim=1)
    return M, r, c, row_mask, col_mask


def sinkhorn(
    M: Tensor,
    r: Tensor | None = None,
    c: Tensor | None = None,
    *,
    gamma: float = 10.0,
    max_iter: int = 100,
    tol: float = 1e-6,
    backward: str = "implicit",
    row_mask: Tensor | None = None,
    col_mask: Tensor | None = None,
    dustbin: Tensor | float | None = None,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, SolverInfo]:
    """Entropic optimal-transport plan of a batch of cost matrices.

    Args:
        M: (B, m, n) cost; entries under a False mask are ignored (may be anything, even NaN).
        r: (B, m) row marginals, or None for uniform over the valid rows; normalised to sum 1.
        c: (B, n) column marginals, likewise.
        gamma: inverse entropic regularisation (sharper plans for larger values), finite and > 0.
        max_iter: iteration cap. ``tol``: L1 row-marginal error at which a sample stops (columns are
            exact after each iteration); ``tol=0`` runs exactly ``max_iter`` iterations.
        backward: ``"implicit"`` (memory independent of the iterations) or ``"unroll"`` (autograd
            through log-domain iterations).
        row_mask: (B, m), ``col_mask``: (B, n) bool, True for real entries; padding gets zero mass.
        dustbin: None, or a scalar (tensor, may require grad) ``z``: one row and one column of cost ``z``
            are appended with marginals ``[1,...,1, n] / (m + n)`` and ``[1,...,1, m] / (m + n)``
            (``m``, ``n`` counting valid entries); then ``r`` and ``c`` must be None.
        return_info: also return the per-sample :class:`SolverInfo` (iterations, final row error,
            convergence, precision), which is how a capped ``max_iter`` shows.
    Returns:
        ``P`` (B, m, n), or (B, m + 1, n + 1) with a dustbin (last row / column), in ``M``'s dtype;
        half-precision costs (e.g. under autocast) are solved and returned in float32. With
        ``return_info``, ``(P, info)``.
    Raises:
        ValueError: bad arguments, or a plan that float64 cannot resolve (the potentials of
            ``gamma`` times a cost span beyond about 1e12); the message names the sample and its span.
            float32 input whose potentials lose the costs is solved again in float64.
    """
    _check_settings(M, backward, gamma, max_iter, tol)
    out_dtype = M.dtype if M.dtype in (torch.float32, torch.float64) else torch.float32
    M = M.to(out_dtype)
    B, m, n = M.shape
    padded = row_mask is not None or col_mask is not None
    row_mask = _mask(row_mask, "row_mask", (B, m), M.device)
    col_mask = _mask(col_mask, "col_mask", (B, n), M.device)
    with torch.autocast(M.device.type, enabled=False):
        M = _finite_costs(M, row_mask, col_mask, padded)
        if dustbin is not None:
            M, r, c, row_mask, col_mask = _append_dustbin(M, r, c, row_mask, col_mask, dustbin)
        r = _marginal(r, row_mask, "r", M.dtype)
        c = _marginal(c, col_mask, "c", M.dtype)
        # A sample with mass on only one side has no feasible plan: transport nothing.
        both = (r.sum(-1, keepdim=True) > 0) & (c.sum(-1, keepdim=True) > 0)
        r, c = r * both, c * both
        M = shift_rows(M, r, c)  # exact for the plan; keeps gamma * M free of a large offset
        P, info = _solve_resolved(M, r, c, gamma, max_iter, tol, backward, dustbin is not None)
    P = P.to(out_dtype)
    return (P, info) if return_info else P


def _solve_resolved(
    M: Tensor, r: Tensor, c: Tensor, gamma: float, max_iter: int, tol: float, backward: str, has_dustbin: bool
) -> tuple[Tensor, SolverInfo]:
    """:func:`_solve`, again in float64 when the float32 potentials no longer resolve the costs; an
    error naming the sample when float64 does not either."""
    P, info = _solve(M, r, c, gamma, max_iter, tol, backward)
    resolved = bool((info.log_error <= MAX_LOG_ERROR).all())  # one host sync (NaN counts as not)
    if M.dtype == torch.float32 and not resolved:
        P, info = _solve(M.double(), r.double(), c.double(), gamma, max_iter, tol, backward)
        resolved = bool((info.log_error <= MAX_LOG_ERROR).all())
    if not resolved:
        b = int((~(info.log_error <= MAX_LOG_ERROR)).nonzero()[0])
        span = float(gamma * scaled_span(M[b : b + 1].detach(), r[b : b + 1], c[b : b + 1])[0])
        raise ValueError(
            f"sinkhorn: the plan of sample {b} is not resolved in float64: gamma * cost span = "
            f"{span:.3g}{' (dustbin included)' if has_dustbin else ''} needs potentials whose "
            f"rounding error in log P is {float(info.log_error[b]):.2g}; rescale 'M' or lower 'gamma'"
        )
    return P, info


def _solve(
    M: Tensor, r: Tensor, c: Tensor, gamma: float, max_iter: int, tol: float, backward: str
) -> tuple[Tensor, SolverInfo]:
    if backward == "implicit":
        P, *info = declarative(SinkhornNode(float(gamma), int(max_iter), float(tol)), M, r, c)
        return P, SolverInfo(*info)
    return solve_log_domain_unrolled(gamma * M, r, c, max_iter, tol)


def _mask(mask: Tensor | None, name: str, shape: tuple[int, int], device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if tuple(mask.shape) != shape:
        raise ValueError(f"sinkhorn: '{name}' must have shape {shape}, got {tuple(mask.shape)}")
    return mask.bool()


class Sinkhorn(nn.Module):
    """:func:`sinkhorn` as a module, optionally with a learnable dustbin score.

    Args:
        gamma, max_iter, tol, backward: as in :func:`sinkhorn`.
        dustbin_init: None for no dustbin, else the initial (learnable) dustbin cost.
    """

    def __init__(
        self,
        gamma: float = 10.0,
        max_iter: int = 100,
        tol: float = 1e-6,
        backward: str = "implicit",
        dustbin_init: float | None = None,
    ):
        super().__init__()
        self.gamma, self.max_iter, self.tol, self.backward = gamma, max_iter, tol, backward
        self.dustbin = None if dustbin_init is None else nn.Parameter(torch.tensor(float(dustbin_init)))

    def forward(
        self,
        M: Tensor,
        row_mask: Tensor | None = None,
        col_mask: Tensor | None = None,
        return_info: bool = False,
    ) -> Tensor | tuple[Tensor, SolverInfo]:
        """(B, m, n) cost -> (B, m, n) plan, or (B, m + 1, n + 1) with the dustbin; ``(P, info)`` with
        ``return_info``."""
        return sinkhorn(
            M,
            gamma=self.gamma,
            max_iter=self.max_iter,
            tol=self.tol,
            backward=self.backward,
            row_mask=row_mask,
            col_mask=col_mask,
            dustbin=self.dustbin,
            return_info=return_info,
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, max_iter={self.max_iter}, tol={self.tol}, backward={self.backward!r}"
