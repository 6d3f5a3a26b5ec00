"""Batched Levenberg-Marquardt refinement of a :class:`PairedProblem` in local pose coordinates.

Every sample carries its own damping and convergence flag; the batch is processed as a whole
(one ``any()`` per iteration decides whether to stop). Gauss-Newton steps first, then Newton steps
with the exact Hessian so the returned pose is stationary to working precision, which the implicit
gradient assumes; the exact Hessian at the solution is returned for the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bpnp.nodes.pnp.objectives import PairedProblem, derivatives, local_pose


@dataclass
class SolverResult:
    """Refined poses with per-sample diagnostics.

    Attributes:
        R: (B, 3, 3).
        t: (B, 3).
        value: (B,) objective value.
        grad: (B, 6) gradient in local coordinates.
        hessian: (B, 6, 6) exact Hessian in local coordinates.
        depth: (B, N) camera-frame depths of the points.
        iterations: (B,) accepted and rejected LM iterations used.
        converged: (B,) bool.
    """

    R: Tensor
    t: Tensor
    value: Tensor
    grad: Tensor
    hessian: Tensor
    depth: Tensor
    iterations: Tensor
    converged: Tensor


# Relative step below which Gauss-Newton hands over to Newton with the exact Hessian.
_NEWTON_SWITCH = 1e-3
# A sample that stalls (no decrease at any damping) counts as converged if its Newton step is within
# this multiple of the tolerance: the rounding floor of the objective in float32.
_STALL_SLACK = 100.0


def default_tolerance(dtype: torch.dtype) -> float:
    """Relative step tolerance: tight in float64 (implicit gradients need a true stationary point)."""
    return 1e-12 if dtype == torch.float64 else 1e-6


def _behind(problem: PairedProblem, depth: Tensor) -> Tensor:
    """Reprojection only: does a weighted point have non-positive depth? (B,) bool."""
    if not problem.objective.projective:
        return torch.zeros(depth.shape[0], dtype=torch.bool, device=depth.device)
    return ((problem.weight > 0) & (depth <= 0)).any(-1)


def _damped_step(H: Tensor, grad: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Solve ``(H + lam |diag(H)| + eps tr|H| I) step = -grad`` per sample.

    An indefinite exact Hessian (far from a minimum) makes the Cholesky factorisation fail; the
    caller then raises the damping, which with ``|diag(H)|`` eventually makes the matrix definite.

    Args:
        H: (B, 6, 6).
        grad: (B, 6).
        lam: (B,).
    Returns:
        ``(step (B, 6), ok (B,) bool)``; the step is zero where the factorisation failed.
    """
    diag = H.diagonal(dim1=-2, dim2=-1).abs()
    floor = (torch.finfo(H.dtype).eps * diag.sum(-1, keepdim=True)).clamp_min(torch.finfo(H.dtype).tiny)
    L, info = torch.linalg.cholesky_ex(H + torch.diag_embed(lam[:, None] * diag + floor))
    ok = info == 0
    L = torch.where(ok[:, None, None], L, torch.eye(6, dtype=H.dtype, device=H.device))
    step = torch.cholesky_solve(-grad[..., None], L).squeeze(-1)
    ok = ok & torch.isfinite(step).all(-1)
    return torch.where(ok[:, None], step, torch.zeros_like(step)), ok


def _small_step(step: Tensor, t: Tensor, tol: float) -> Tensor:
    """Relative step size test: (B,) bool. Rotation in radians, translation relative to |t|."""
    return (step[:, :3].norm(dim=-1) <= tol) & (step[:, 3:].norm(dim=-1) <= tol * (1.0 + t.norm(dim=-1)))


@dataclass
class _State:
    R: Tensor
    t: Tensor
    f: Tensor
    grad: Tensor
    H: Tensor
    depth: Tensor

    def where(self, cond: Tensor, other: _State) -> _State:
        """Per sample: ``other`` where ``cond`` (B,), else self."""
        c1, c2, c3 = cond, cond[:, None], cond[:, None, None]
        return _State(
            torch.where(c3, other.R, self.R),
            torch.where(c2, other.t, self.t),
            torch.where(c1, other.f, self.f),
            torch.where(c2, other.grad, self.grad),
            torch.where(c3, other.H, self.H),
            torch.where(c2, other.depth, self.depth),
        )


def _evaluate(problem: PairedProblem, R: Tensor, t: Tensor, exact: bool) -> _State:
    return _State(R, t, *derivatives(problem, R, t, exact))


def _lm_phase(
    problem: PairedProblem,
    state: _State,
    running: Tensor,
    exact: bool,
    tol: float,
    budget: Tensor,
    check_every: int | None = None,
) -> tuple[_State, Tensor, Tensor, Tensor]:
    """Damped (Gauss-)Newton iterations on the running samples, at most ``budget`` (B,) each.

    A trial is accepted when it lowers f, or keeps f within rounding while lowering the gradient
    norm (near the optimum f stops resolving progress before the gradient does).

    Returns:
        ``(state, converged (B,), stalled (B,): no decrease even with heavy damping, iterations (B,))``.
    """
    running = running & (budget > 0)
    max_iter = int(budget.max()) if budget.numel() else 0
    B = state.R.shape[0]
    lam = torch.full((B,), 1e-4 if exact else 1e-3, dtype=state.R.dtype, device=state.R.device)
    converged = torch.zeros_like(running)
    stalled = torch.zeros_like(running)
    iterations = torch.zeros(B, dtype=torch.long, device=state.R.device)
    # Rounding of f grows with the summed weights (each pair's error carries ~eps), not with |f|.
    slack = 64 * torch.finfo(state.f.dtype).eps * (state.f.abs() + problem.weight.abs().sum(-1))
    # The early exit reads the device: every iteration on the CPU, where that is free, every 10 on an
    # accelerator. Finished samples are masked, so the results do not depend on it.
    check_every = check_every or (1 if state.R.device.type == "cpu" else 10)
    for k in range(max_iter):
        if k % check_every == 0 and not bool(running.any()):
            break
        step, solved = _damped_step(state.H, state.grad, lam)
        trial = _evaluate(problem, *local_pose(state.R, state.t, step), exact)
        ok = solved & torch.isfinite(trial.f) & ~_behind(problem, trial.depth)
        lower = trial.f < state.f
        level = (trial.f <= state.f + slack) & (trial.grad.norm(dim=-1) < state.grad.norm(dim=-1))
        accept = running & ok & (lower | level)
        iterations = iterations + running.long()
        # Converged: a small, barely damped step (rejected ones too: the decrease is then below
        # rounding). Stalled: no decrease even with heavy damping.
        small = solved & _small_step(step, state.t, tol) & (accept | (lam < 1.0))
        state = state.where(accept, trial)
        lam = torch.where(accept, (lam * 0.2).clamp_min(1e-12), lam * 10.0)
        stalled = stalled | (running & ~small & (lam > 1e12))
        done = running & (small | (lam > 1e12) | (iterations >= budget))
        converged = converged | (running & small)
        running = running & ~done
    return state, converged, stalled, iterations


def levenberg_marquardt(
    problem: PairedProblem,
    R: Tensor,
    t: Tensor,
    active: Tensor,
    max_iter: int = 50,
    tol: float | None = None,
    check_every: int | None = None,
) -> SolverResult:
    """Minimise ``problem`` from ``(R, t)``; samples with ``active = False`` are left where they are.

    Gauss-Newton (positive semi-definite, robust far from the optimum) until the relative step is
    below ``max(tol, 1e-3)``, then Newton with the exact Hessian: Gauss-Newton converges only linearly
    when residuals are large (a diffuse dense plan), Newton quadratically.

    Args:
        R: (B, 3, 3) initial rotations.
        t: (B, 3) initial translations.
        active: (B,) bool, samples to refine.
        max_iter: iterations at most, both phases together.
        tol: relative step tolerance (default by dtype).
        check_every: iterations between host syncs of the early exit (default 1 on the CPU, 10 on
            an accelerator).
    Returns:
        :class:`SolverResult`.
    """
    tol = default_tolerance(R.dtype) if tol is None else tol
    state = _evaluate(problem, R, t, exact=False)
    running = active & torch.isfinite(state.f) & ~_behind(problem, state.depth)
    budget = torch.full((R.shape[0],), max_iter, dtype=torch.long, device=R.device)
    state, _, _, it_gn = _lm_phase(
        problem, state, running, False, max(tol, _NEWTON_SWITCH), budget, check_every
    )
    state = _evaluate(problem, state.R, state.t, exact=True)
    # Each sample's own remaining budget, so that no sample's result depends on the others.
    state, converged, stalled, it_newton = _lm_phase(
        problem, state, running, True, tol, budget - it_gn, check_every
    )
    # In float32 the objective stops resolving decreases a little before the step test is met: a
    # stalled sample whose undamped Newton step is within _STALL_SLACK * tol is at its minimum.
    newton, solved = _damped_step(state.H, state.grad, torch.zeros_like(state.f))
    converged = converged | (stalled & solved & _small_step(newton, state.t, _STALL_SLACK * tol))
    return SolverResult(
        state.R, state.t, state.f, state.grad, state.H, state.depth, it_gn + it_newton, converged & active
    )
