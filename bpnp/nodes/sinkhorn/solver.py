"""Forward solvers of the entropic optimal-transport problem (no autograd).

Both solvers return the plan ``P_ij = exp(f_i + g_j - gamma M_ij)`` of

    min_P <M, P> + (1/gamma) <P, log P>   s.t.  P 1 = r,  P^T 1 = c.

The fast path is the multiplicative Sinkhorn iteration on a kernel ``K = exp(f_i + g_j - gamma M_ij)``
whose log-potentials ``f, g`` absorb the scalings whenever they grow (Schmitzer's stabilisation):
two batched matrix-vector products per iteration. A chunk of iterations whose scalings overflow or
underflow is redone for those samples alone with log-sum-exp updates, which are exact for any
``gamma * (max M - min M)`` but several times slower, so the common case keeps the fast path.

Padded rows / columns carry zero marginal; their potentials are ``-inf`` and their mass exactly 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Scalings whose log magnitude exceeds this are folded into the log-potentials (K recomputed).
_ABSORB_LOG = 20.0
# Scaled-cost span above which the potentials are warm-started by epsilon scaling.
ANNEAL_SPAN = 200.0


@dataclass
class SolverInfo:
    """Per-sample diagnostics of the last stage, each (B,): ``iterations`` run, ``error`` the final L1
    row-marginal error, ``converged`` whether it met the tolerance (``tol``, or 1e-6 with ``tol = 0``),
    ``log_error`` the rounding error of ``log P_ij = f_i + g_j - C_ij`` that the potentials' magnitude
    implies (``eps * (max |f| + max |g|)``): above about 1e-3 the plan's entries are not resolved."""

    iterations: Tensor
    error: Tensor
    converged: Tensor
    log_error: Tensor


def _converged(error: Tensor, tol: float) -> Tensor:
    return error <= (tol if tol > 0 else 1e-6)


def _log_error(f: Tensor, g: Tensor) -> Tensor:
    size = [
        torch.where(torch.isfinite(x), x.abs(), 0.0).amax(-1) if x.shape[-1] else x.sum(-1) for x in (f, g)
    ]
    return torch.finfo(f.dtype).eps * (size[0] + size[1])


def _masked_log(x: Tensor) -> Tensor:
    """``log x`` with ``-inf`` where ``x == 0`` (without the warning-free NaN risk of log(0) * 0)."""
    return torch.where(x > 0, x.clamp_min(torch.finfo(x.dtype).tiny).log(), float("-inf"))


def log_domain_iterations(C: Tensor, log_r: Tensor, log_c: Tensor, f: Tensor, g: Tensor, steps: int):
    """Run ``steps`` log-domain Sinkhorn iterations.

    Args:
        C: (B, m, n) scaled cost ``gamma * M``.
        log_r: (B, m), ``log_c``: (B, n) log-marginals (``-inf`` for padding).
        f: (B, m), ``g``: (B, n) log-potentials to start from.
    Returns:
        ``(f, g)`` after the iterations; the column constraint holds exactly after the last one.
    """
    row_ok, col_ok = torch.isfinite(log_r), torch.isfinite(log_c)
    for _ in range(steps):
        f = torch.where(row_ok, log_r - torch.logsumexp(g[:, None, :] - C, dim=2), float("-inf"))
        g = torch.where(col_ok, log_c - torch.logsumexp(f[:, :, None] - C, dim=1), float("-inf"))
    return f, g


def plan_from_potentials(C: Tensor, f: Tensor, g: Tensor) -> Tensor:
    """``P = exp(f_i + g_j - C_ij)``: (B, m, n)."""
    if torch.is_grad_enabled() and (C.requires_grad or f.requires_grad or g.requires_grad):
        return torch.exp(f[:, :, None] + g[:, None, :] - C)
    # One allocation instead of three: these (B, m, n) buffers dominate the cost outside the loop.
    return torch.neg(C).add_(f[:, :, None]).add_(g[:, None, :]).exp_()


def row_error(P: Tensor, r: Tensor) -> Tensor:
    """L1 error of the row marginals, (B,)."""
    return (P.sum(-1) - r).abs().sum(-1)


def shift_rows(C: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """``C`` minus each row's minimum over the valid columns (the plan is unchanged; no gradient flows).

    Every valid row then holds a 0, so the potentials stay of the order of the cost span rather than of
    its offset: an offset of 1e7 in float32 would otherwise swamp the costs in ``f_i + g_j - C_ij``.
    Padded rows (``r = 0``) keep their values; they get no mass.
    """
    with torch.no_grad():
        masked = torch.where((c > 0)[:, None, :], C, torch.inf)
        shift = masked.amin(-1, keepdim=True) if C.shape[-1] > 0 else torch.zeros_like(C[..., :1])
        shift = torch.where(torch.isfinite(shift) & (r > 0)[:, :, None], shift, 0.0)
    return C - shift


def scaled_span(C: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """Per-sample span of ``C`` over the entries that carry mass: (B,), 0 for a sample with none."""
    valid = (r > 0)[:, :, None] & (c > 0)[:, None, :]
    if C.numel() == 0:
        return C.new_zeros(C.shape[0])
    hi = torch.where(valid, C, -torch.inf).flatten(1).amax(-1)
    lo = torch.where(valid, C, torch.inf).flatten(1).amin(-1)
    return torch.where(valid.flatten(1).any(-1), hi - lo, 0.0)


class _ScalingState:
    """Stabilised multiplicative iteration for a subset of the batch."""

    def __init__(self, C: Tensor, r: Tensor, c: Tensor, init: tuple[Tensor, Tensor]):
        self.C, self.r, self.c = C, r, c
        self.log_r, self.log_c = _masked_log(r), _masked_log(c)
        row_ok, col_ok = torch.isfinite(self.log_r), torch.isfinite(self.log_c)
        self.f = torch.where(row_ok, init[0], -torch.inf)
        self.g = torch.where(col_ok, init[1], -torch.inf)
        self.K = plan_from_potentials(C, self.f, self.g)
        self.u = (r > 0).to(C.dtype)
        self.v = (c > 0).to(C.dtype)

    def select(self, keep: Tensor) -> None:
        for name in ("C", "r", "c", "log_r", "log_c", "f", "g", "K", "u", "v"):
            setattr(self, name, getattr(self, name)[keep])

    def iterate(self, steps: int) -> None:
        tiny = torch.finfo(self.C.dtype).tiny
        K, r, c, v = self.K, self.r, self.c, self.v
        for _ in range(steps):
            u = r / torch.bmm(K, v[:, :, None]).squeeze(-1).clamp_min(tiny)
            v = c / torch.bmm(u[:, None, :], K).squeeze(1).clamp_min(tiny)
        self.u, self.v = u, v

    def stabilised_iterate(self, steps: int, tol: float, last: bool) -> tuple[Tensor, Tensor, bool, bool]:
        """:meth:`iterate`, then scalings past ``_ABSORB_LOG`` folded into the potentials, and the chunk
        redone in the log domain, from where it started, for samples whose scalings overflowed.

        One host sync per call (the chunk's flags read together), plus one per rare event (an
        absorption or a rescue). Returns the row-marginal errors (B,), which samples are finished
        (converged with ``tol > 0``, or at the iteration cap: ``last``), and whether all / any are."""
        big = torch.finfo(self.C.dtype).max ** 0.25
        f0, g0 = self.f.clone(), self.g.clone()
        lu0, lv0 = self.log_scalings()
        self.iterate(steps)
        u, v = self.u, self.v
        healthy = torch.isfinite(u).all(-1) & torch.isfinite(v).all(-1)
        healthy &= (u.amax(-1) < big) & (v.amax(-1) < big)
        lu, lv = self.log_scalings()
        spread = torch.maximum(
            torch.where(torch.isfinite(lu), lu.abs(), 0.0).amax(-1),
            torch.where(torch.isfinite(lv), lv.abs(), 0.0).amax(-1),
        )
        absorb = healthy & (spread > _ABSORB_LOG)
        # Folding scalings into the potentials leaves the plan as it is: the error is read before.
        err = self.error()
        finished = _finished(err, tol, last)
        any_absorb, any_sick, all_finished, any_finished = torch.stack(
            [absorb.any(), ~healthy.all(), finished.all(), finished.any()]
        ).tolist()
        if any_absorb:
            self.absorb(absorb.nonzero().squeeze(1))
        if any_sick:
            sick = (~healthy).nonzero().squeeze(1)
            lr, lc = self.log_r[sick], self.log_c[sick]
            f = f0[sick] + torch.where(torch.isfinite(lr), lu0[sick], 0.0)
            g = g0[sick] + torch.where(torch.isfinite(lc), lv0[sick], 0.0)
            f, g = log_domain_iterations(self.C[sick], lr, lc, f, g, steps)
            self.f[sick], self.g[sick] = f, g
            self.reset(sick)
            err = self.error()
            finished = _finished(err, tol, last)
            all_finished, any_finished = torch.stack([finished.all(), finished.any()]).tolist()
        return err, finished, all_finished, any_finished

    def log_scalings(self) -> tuple[Tensor, Tensor]:
        return _masked_log(self.u), _masked_log(self.v)

    def absorb(self, idx: Tensor) -> None:
        """Fold the scalings of samples ``idx`` into their potentials and recompute their kernel."""
        lu, lv = self.log_scalings()
        self.f[idx] = self.f[idx] + torch.where(torch.isfinite(self.log_r[idx]), lu[idx], 0.0)
        self.g[idx] = self.g[idx] + torch.where(torch.isfinite(self.log_c[idx]), lv[idx], 0.0)
        self.reset(idx)

    def reset(self, idx: Tensor) -> None:
        self.K[idx] = plan_from_potentials(self.C[idx], self.f[idx], self.g[idx])
        self.u[idx] = (self.r[idx] > 0).to(self.C.dtype)
        self.v[idx] = (self.c[idx] > 0).to(self.C.dtype)

    def plan(self) -> Tensor:
        return self.u[:, :, None] * self.K * self.v[:, None, :]

    def plan_in_place(self) -> Tensor:
        """The plan written over the kernel (the state is unusable afterwards)."""
        return self.K.mul_(self.u[:, :, None]).mul_(self.v[:, None, :])

    def potentials(self) -> tuple[Tensor, Tensor]:
        lu, lv = self.log_scalings()
        return self.f + lu, self.g + lv

    def error(self) -> Tensor:
        row_mass = self.u * torch.bmm(self.K, self.v[:, :, None]).squeeze(-1)
        return (row_mass - self.r).abs().sum(-1)


def _finished(err: Tensor, tol: float, last: bool) -> Tensor:
    """(B,) bool: converged (``tol > 0``), or every sample at the iteration cap (``last``)."""
    if last:
        return torch.ones_like(err, dtype=torch.bool)
    return err <= tol if tol > 0 else torch.zeros_like(err, dtype=torch.bool)


@torch.no_grad()
def solve_scaling(
    C: Tensor, r: Tensor, c: Tensor, max_iter: int, tol: float, check_every: int = 10
) -> tuple[Tensor, SolverInfo]:
    """Stabilised Sinkhorn with per-sample convergence and log-domain rescue.

    When a sample's scaled cost spans more than ``ANNEAL_SPAN`` (large ``gamma``), plain Sinkhorn needs
    iterations in proportion to ``gamma``; its potentials are then warm-started by solving the problem
    at ``gamma / 4^k, ..., gamma / 4`` first (epsilon scaling, each stage capped at ``max_iter``). The
    number of stages is chosen per sample, so a sample's plan does not depend on its batch-mates. With
    ``tol = 0`` exactly ``max_iter`` iterations run, without that warm start.

    Args:
        C: (B, m, n) finite scaled cost ``gamma * M`` (padded entries any finite value).
        r: (B, m), ``c``: (B, n) non-negative marginals, each summing to 1 (or 0 for an empty sample).
        max_iter: iteration cap; ``tol``: L1 row-marginal error at which a sample stops (0: run all).
    Returns:
        ``P`` (B, m, n) and per-sample :class:`SolverInfo` of the last stage.
    """
    B = C.shape[0]
    if C.numel() == 0:
        zeros = torch.zeros(B, dtype=C.dtype, device=C.device)
        info = SolverInfo(torch.zeros(B, dtype=torch.long, device=C.device), zeros, zeros == 0, zeros)
        return torch.zeros_like(C), info
    # Row-minimum shift: every valid row of the kernel then holds an entry equal to r_i (none underflows).
    # The potentials stay small when C has been through shift_rows, as sinkhorn() does.
    col_ok = c > 0
    row_min = C.amin(-1) if bool(col_ok.all()) else torch.where(col_ok[:, None, :], C, torch.inf).amin(-1)
    f = _masked_log(r) + torch.where(torch.isfinite(row_min), row_min, 0.0)
    g = torch.zeros_like(c)
    if tol > 0:
        span = scaled_span(C, r, c)
        stages = (
            torch.where(
                span > ANNEAL_SPAN, torch.log(span.clamp_min(ANNEAL_SPAN) / ANNEAL_SPAN) / math.log(4), 0.0
            )
            .ceil()
            .long()
        )
        for k in range(int(stages.max()), 0, -1):
            idx = (stages >= k).nonzero().squeeze(1)
            _, fk, gk, _ = _solve_stage(
                C[idx] / 4.0**k, r[idx], c[idx], max_iter, max(tol, 1e-3), check_every, (f[idx], g[idx])
            )
            f[idx], g[idx] = 4 * fk, 4 * gk  # potentials scale with gamma
    P, f, g, info = _solve_stage(C, r, c, max_iter, tol, check_every, (f, g))
    info.log_error = _log_error(f, g)
    return P, info


def _solve_stage(
    C: Tensor,
    r: Tensor,
    c: Tensor,
    max_iter: int,
    tol: float,
    check_every: int,
    init: tuple[Tensor, Tensor],
) -> tuple[Tensor, Tensor, Tensor, SolverInfo]:
    """One Sinkhorn solve; returns the plan, the final log-potentials ``f`` (B, m), ``g`` (B, n), info."""
    B = C.shape[0]
    P: Tensor | None = None
    f_out, g_out = torch.zeros_like(r), torch.zeros_like(c)
    iterations = torch.zeros(B, dtype=torch.long, device=C.device)
    error = torch.zeros(B, dtype=C.dtype, device=C.device)
    active = torch.arange(B, device=C.device)
    state = _ScalingState(C, r, c, init)
    done = 0
    while done < max_iter and active.numel() > 0:
        steps = min(check_every, max_iter - done)
        done += steps
        err, finished, all_finished, any_finished = state.stabilised_iterate(steps, tol, done >= max_iter)
        if all_finished and active.numel() == B:
            # The whole batch stops together (the usual case): no copy of the plan.
            f, g = state.potentials()
            info = SolverInfo(torch.full_like(iterations, done), err, _converged(err, tol), err * 0)
            return state.plan_in_place(), f, g, info
        if any_finished:
            if P is None:
                P = torch.zeros_like(C)
            idx = finished.nonzero().squeeze(1)
            P[active[idx]] = state.plan()[idx]
            f, g = state.potentials()
            f_out[active[idx]], g_out[active[idx]] = f[idx], g[idx]
            iterations[active[idx]] = done
            error[active[idx]] = err[idx]
            keep = (~finished).nonzero().squeeze(1)
            active = active[keep]
            state.select(keep)
    if P is None:  # an empty batch
        P = torch.zeros_like(C)
    return P, f_out, g_out, SolverInfo(iterations, error, _converged(error, tol), error * 0)


def solve_log_domain_unrolled(
    C: Tensor, r: Tensor, c: Tensor, max_iter: int, tol: float, check_every: int = 10
) -> tuple[Tensor, SolverInfo]:
    """Differentiable log-domain Sinkhorn: autograd records every iteration (memory grows with them).

    Each sample stops when it meets ``tol`` (checked without gradient every ``check_every``
    iterations), as it would alone.
    Samples with nothing to transport are left out of the iterations (their plan is 0, and so is
    their gradient: log-sum-exp over an all ``-inf`` row has a NaN derivative).

    Args:
        C: (B, m, n); ``r`` (B, m); ``c`` (B, n), as in :func:`solve_scaling`.
    Returns:
        ``P`` (B, m, n), differentiable with respect to ``C``, ``r`` and ``c``, and :class:`SolverInfo`.
    """
    B = C.shape[0]
    busy = ((r > 0).any(-1) & (c > 0).any(-1)).nonzero().squeeze(1)
    iterations = torch.zeros(B, dtype=torch.long, device=C.device)
    error = torch.zeros(B, dtype=C.dtype, device=C.device)
    log_error = torch.zeros_like(error)
    if busy.numel() < B:
        P = C * 0  # zeros that keep the graph (and a zero gradient) for the idle samples
        if busy.numel() > 0:
            Pb, info = solve_log_domain_unrolled(C[busy], r[busy], c[busy], max_iter, tol, check_every)
            P = P.index_put((busy,), Pb)
            iterations[busy], error[busy] = info.iterations, info.error
            log_error[busy] = info.log_error
        return P, SolverInfo(iterations, error, _converged(error, tol), log_error)
    C = shift_rows(C, r, c)
    log_r, log_c = _masked_log(r), _masked_log(c)
    f = torch.zeros_like(log_r)
    g = torch.where(torch.isfinite(log_c), torch.zeros_like(log_c), -torch.inf)
    done = 0
    running = torch.ones(B, dtype=torch.bool, device=C.device)
    while done < max_iter and bool(running.any()):
        steps = min(check_every, max_iter - done)
        f_new, g_new = log_domain_iterations(C, log_r, log_c, f, g, steps)
        # A sample that met tol keeps its potentials: it stops where it would stop alone.
        f, g = torch.where(running[:, None], f_new, f), torch.where(running[:, None], g_new, g)
        done += steps
        iterations = torch.where(running, done, iterations)
        if tol > 0:
            with torch.no_grad():
                running = running & (row_error(plan_from_potentials(C, f, g), r) > tol)
    P = plan_from_potentials(C, f, g)
    with torch.no_grad():
        error = row_error(P, r)
        log_error = _log_error(f, g)
    return P, SolverInfo(iterations, error, _converged(error, tol), log_error)
