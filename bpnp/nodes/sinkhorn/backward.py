"""Implicit vector-Jacobian product of the entropic optimal-transport plan.

With ``P_ij = exp(f_i + g_j - gamma M_ij)`` and the constraints ``P 1 = r``, ``P^T 1 = c``, an upstream
gradient ``V = dL/dP`` gives (docs/design.md section 3)

    dL/dM_ij = gamma P_ij (lambda_i + mu_j - V_ij),   dL/dr = lambda,   dL/dc = mu,

where ``(lambda, mu)`` solve ``[[diag(r), P], [P^T, diag(c)]] [lambda; mu] = [rowsum(P*V); colsum(P*V)]``.
Eliminating ``mu`` leaves the Schur complement ``S = diag(r) - P diag(1/c) P^T`` on the smaller side.
``S`` is positive semi-definite with the constant vector as null space (the gauge
``lambda + s, mu - s``); adding ``rho * 1 1^T`` over the valid rows fixes the gauge without dropping a
row, so all samples of a padded batch share one shape.

Two solvers, chosen per call by the smaller side ``k = min(m, n)``:
- direct (``k <= direct_max``): form ``S`` and factor it with batched Cholesky, in float64 whatever
  the input precision — exact, and the path used by the tests; samples whose factorisation fails
  are damped and retried, then solved by a pseudo-inverse;
- conjugate gradients (larger ``k``): Jacobi-preconditioned CG whose matrix-vector product costs two
  passes over ``P`` and never forms ``S``; samples that do not reach the tolerance fall back to the
  direct path.
``r`` and ``c`` are the actual sums of the returned ``P``, so the gradient stays consistent when the
forward pass stopped before full convergence.
"""

from __future__ import annotations

import torch
from torch import Tensor

DIRECT_MAX = 384  # measured crossover on a 2-core CPU (scripts/bench_sinkhorn.py); see README


def _safe_reciprocal(x: Tensor) -> Tensor:
    return torch.where(x > 0, 1.0 / torch.where(x > 0, x, torch.ones_like(x)), torch.zeros_like(x))


def _schur_matrix(P: Tensor, rs: Tensor, inv_cs: Tensor, rho: Tensor, valid: Tensor) -> Tensor:
    """``S + rho w w^T + diag(1 - w)``: (B, m, m) with ``w`` the valid rows."""
    S = -torch.bmm(P * inv_cs[:, None, :], P.transpose(1, 2))
    w = valid.to(P.dtype)
    S = S + rho[:, None, None] * w[:, :, None] * w[:, None, :]
    S.diagonal(dim1=1, dim2=2).add_(rs + (1.0 - w))
    return S


def _solve_direct(P: Tensor, rs: Tensor, inv_cs: Tensor, rhs: Tensor, rho: Tensor, valid: Tensor) -> Tensor:
    """Batched Cholesky solve of the regularised Schur system; damped / pseudo-inverse where it fails."""
    S = _schur_matrix(P, rs, inv_cs, rho, valid)
    L, info = torch.linalg.cholesky_ex(S)
    eps = torch.finfo(P.dtype).eps
    scale = rs.amax(-1)
    for damping in (1e2 * eps, 1e4 * eps, 1e6 * eps):
        bad = info != 0
        if not bool(bad.any()):
            break
        Sd = S[bad] + (damping * scale[bad])[:, None, None] * torch.eye(
            S.shape[-1], dtype=S.dtype, device=S.device
        )
        L[bad], info[bad] = torch.linalg.cholesky_ex(Sd)
    x = torch.cholesky_solve(rhs[:, :, None], L).squeeze(-1)
    bad = info != 0
    if bool(bad.any()):
        x[bad] = (torch.linalg.pinv(S[bad], hermitian=True) @ rhs[bad][:, :, None]).squeeze(-1)
    return x


def _solve_cg(
    P: Tensor, rs: Tensor, inv_cs: Tensor, rhs: Tensor, rho: Tensor, valid: Tensor, tol: float, max_iter: int
) -> tuple[Tensor, Tensor]:
    """Jacobi-preconditioned conjugate gradients on the regularised Schur system.

    Returns:
        the solution (B, m) and a (B,) bool mask of the samples that reached ``tol`` (relative residual).
    """
    w = valid.to(P.dtype)
    off = 1.0 - w

    def matvec(x: Tensor) -> Tensor:
        Ptx = torch.bmm(x[:, None, :], P).squeeze(1) * inv_cs
        return (
            rs * x
            - torch.bmm(P, Ptx[:, :, None]).squeeze(-1)
            + rho[:, None] * w * (w * x).sum(-1, keepdim=True)
            + off * x
        )

    diag = rs - torch.bmm(P * P, inv_cs[:, :, None]).squeeze(-1) + rho[:, None] * w + off
    inv_diag = _safe_reciprocal(diag)
    x = torch.zeros_like(rhs)
    res = rhs.clone()
    z = inv_diag * res
    p = z.clone()
    rz = (res * z).sum(-1)
    target = tol * rhs.norm(dim=-1)
    converged = rhs.norm(dim=-1) == 0
    for k in range(max_iter):
        Ap = matvec(p)
        pAp = (p * Ap).sum(-1)
        alpha = torch.where((pAp > 0) & ~converged, rz / torch.where(pAp > 0, pAp, torch.ones_like(pAp)), 0.0)
        x = x + alpha[:, None] * p
        res = res - alpha[:, None] * Ap
        if k % 10 == 9:  # one host sync every 10 iterations
            converged = converged | (res.norm(dim=-1) <= target)
            if bool(converged.all()):
                break
        z = inv_diag * res
        rz_new = (res * z).sum(-1)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, torch.ones_like(rz)), 0.0)
        p = z + beta[:, None] * p
        rz = rz_new
    converged = converged | (res.norm(dim=-1) <= target)
    return x, converged


def _multipliers_rows(P: Tensor, a: Tensor, b: Tensor, direct_max: int, cg_tol: float, cg_max_iter: int):
    """Solve for ``(lambda, mu)`` eliminating ``mu`` (use with m <= n)."""
    rs, cs = P.sum(-1), P.sum(-2)
    inv_cs = _safe_reciprocal(cs)
    valid = rs > 0
    rhs = a - torch.bmm(P, (b * inv_cs)[:, :, None]).squeeze(-1)
    # Remove the (round-off) component along the null space so the regularised system is consistent.
    w = valid.to(P.dtype)
    rhs = rhs - w * (rhs * w).sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp_min(1)
    # The gauge eigenvalue rho * |w|^2 is set to the mean row mass, the scale of S's spectrum, so the
    # regularisation does not worsen the conditioning.
    count = w.sum(-1).clamp_min(1)
    rho = rs.sum(-1) / count**2
    if P.shape[1] <= direct_max:
        lam = _solve_direct(P, rs, inv_cs, rhs, rho, valid)
    else:
        lam, ok = _solve_cg(P, rs, inv_cs, rhs, rho, valid, cg_tol, cg_max_iter)
        if not bool(ok.all()):
            bad = ~ok
            lam[bad] = _solve_direct(P[bad], rs[bad], inv_cs[bad], rhs[bad], rho[bad], valid[bad])
    mu = (b - torch.bmm(lam[:, None, :], P).squeeze(1)) * inv_cs
    return lam, mu


def sinkhorn_vjp(
    P: Tensor,
    V: Tensor,
    gamma: float,
    direct_max: int = DIRECT_MAX,
    cg_tol: float | None = None,
    cg_max_iter: int = 200,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of a loss with respect to the cost and the marginals.

    Args:
        P: (B, m, n) plan returned by the forward pass.
        V: (B, m, n) ``dL/dP``.
        gamma: inverse regularisation.
        direct_max: largest smaller-side size solved by Cholesky; larger ones use CG.
        cg_tol: relative residual of CG (default: 1e-10 in float64, 1e-6 in float32).
    Returns:
        ``(dL/dM (B, m, n), dL/dr (B, m), dL/dc (B, n))``.
    """
    out_dtype = P.dtype
    if P.numel() == 0:
        return torch.zeros_like(P), P.new_zeros(P.shape[:2]), P.new_zeros(P.shape[::2])
    if min(P.shape[1:]) <= direct_max:
        # On sharp plans lambda_i + mu_j cancels V_ij to a few digits and S is ill-conditioned, so the
        # direct path works in float64 for lower-precision input (its cost is the m^2 n Schur product).
        P, V = P.double(), V.double()
    if cg_tol is None:
        cg_tol = 1e-10 if P.dtype == torch.float64 else 1e-6
    # One pass forms Q = -gamma P * V; the multipliers are linear in its row and column sums, so they
    # come out scaled by -gamma, and Q becomes the output in place: three passes over (B, m, n) in all.
    grad_M = torch.addcmul(P.new_zeros(()), P, V, value=-gamma)
    a, b = grad_M.sum(-1), grad_M.sum(-2)
    if P.shape[1] <= P.shape[2]:
        lam, mu = _multipliers_rows(P, a, b, direct_max, cg_tol, cg_max_iter)
    else:
        mu, lam = _multipliers_rows(P.transpose(1, 2), b, a, direct_max, cg_tol, cg_max_iter)
    # gamma P (lambda_i + mu_j - V_ij) = Q - P (-gamma lambda)_i - P (-gamma mu)_j.
    grad_M.addcmul_(P, lam[:, :, None], value=-1).addcmul_(P, mu[:, None, :], value=-1)
    return grad_M.to(out_dtype), (lam / -gamma).to(out_dtype), (mu / -gamma).to(out_dtype)
