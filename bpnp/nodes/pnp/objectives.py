"""Objectives of the weighted PnP layer.

Two views of the same functions:

- :class:`PairedProblem`, the solver's view: ``f = const + sum_k w_k rho(e_k)`` over N pairs, with
  ``e_k`` the angular error ``1 - b_k . normalise(X_k)`` or the squared reprojection error
  ``|pi(X_k) - x_k|^2`` of the camera-frame point ``X_k = R p_k + t``. A dense problem collapses to
  this form exactly (one matrix product, :func:`collapse_dense`), so solver iterations cost O(n).
- :meth:`Objective.dense_value` / :func:`paired_objective`, the backward pass's view: the objective
  in the inputs (the dense one through ``G = W^T F(x2d)``) and the camera points, differentiable in all.

Each objective is an :class:`Objective` object (:data:`ANGULAR`, :data:`REPROJECTION`) holding all
that differs between them; :func:`objective_named` maps a config's name to one.

Local coordinates at a pose ``(R, t)``: ``R(delta) = exp([delta[:3]]_x) R``, ``t(delta) = t + delta[3:]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bpnp.geometry import normalized_to_bearings, skew, so3_exp
from bpnp.nodes.pnp.robust import IDENTITY, RobustKernel


@dataclass
class PairedProblem:
    """``f = const + sum_k weight_k rho(e_k(R points_k + t, target_k))``.

    Attributes:
        objective: :data:`ANGULAR` (target: unit bearings (B, N, 3)) or :data:`REPROJECTION` (target:
            normalised image coordinates (B, N, 2)).
        points: (B, N, 3) world points.
        target: (B, N, 3) or (B, N, 2).
        weight: (B, N) non-negative.
        const: (B,) the part of the objective that does not depend on the pose.
        robust: the robust kernel (:data:`~bpnp.nodes.pnp.robust.IDENTITY` for none).
        scale_sq: squared robust scale ``b``.
    """

    objective: Objective
    points: Tensor
    target: Tensor
    weight: Tensor
    const: Tensor
    robust: RobustKernel = IDENTITY
    scale_sq: float = 1.0


def safe_normalise(X: Tensor) -> Tensor:
    """``X / |X|`` over the last axis; 0 (with zero gradient) where ``X = 0``.

    Args:
        X: (..., 3).
    Returns:
        (..., 3).
    """
    n2 = (X * X).sum(-1, keepdim=True)
    ok = n2 > torch.finfo(X.dtype).tiny
    n = torch.where(ok, n2, torch.ones_like(n2)).sqrt()
    return torch.where(ok, X / n, torch.zeros_like(X))


def safe_project(X: Tensor) -> Tensor:
    """Perspective division ``X[:2] / X[2]``; 0 where the depth is exactly 0 (zero-weight points only).

    Args:
        X: (..., 3).
    Returns:
        (..., 2).
    """
    z = X[..., 2:]
    ok = z != 0
    return torch.where(ok, X[..., :2] / torch.where(ok, z, torch.ones_like(z)), torch.zeros_like(X[..., :2]))


def local_pose(R: Tensor, t: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """Pose after the local update ``delta``: ``(exp([delta[:3]]_x) R, t + delta[3:])``.

    Args:
        R: (B, 3, 3).
        t: (B, 3).
        delta: (B, 6).
    Returns:
        ``(R (B, 3, 3), t (B, 3))``.
    """
    return so3_exp(delta[..., :3]) @ R, t + delta[..., 3:]


def camera_points(R: Tensor, t: Tensor, p: Tensor) -> Tensor:
    """``R p + t``: (B, 3, 3), (B, 3), (B, N, 3) -> (B, N, 3)."""
    return p @ R.transpose(-1, -2) + t[:, None, :]


def paired_value(problem: PairedProblem, R: Tensor, t: Tensor) -> Tensor:
    """Objective value at a pose.

    Args:
        R: (B, 3, 3).
        t: (B, 3).
    Returns:
        (B,).
    """
    e = problem.objective.pair_errors(camera_points(R, t, problem.points), problem.target)
    return problem.const + (problem.weight * problem.robust.rho(e, problem.scale_sq)).sum(-1)


def local_value(problem: PairedProblem, R: Tensor, t: Tensor, delta: Tensor) -> Tensor:
    """Objective as a function of the local update, for exact second derivatives.

    Args:
        R: (B, 3, 3).
        t: (B, 3).
        delta: (B, 6).
    Returns:
        (B,).
    """
    Rd, td = local_pose(R, t, delta)
    return paired_value(problem, Rd, td)


# The solver's derivatives work on coordinate planes: a (B, N, 3) array is kept as three contiguous
# (B, N) tensors, because reductions and stacks over a last axis of size 3 are several times slower on
# the CPU than the same arithmetic on whole planes.
Planes = tuple[Tensor, Tensor, Tensor]


def _lift(y: Planes, a: Planes) -> Tensor:
    """``D^T a`` for ``D = dX / d delta = [-[y]_x | I]``: the 6-vector ``(y x a, a)`` per point.

    Args:
        y: rotated points ``R p`` as planes (B, N) x 3.
        a: planes (B, N) x 3.
    Returns:
        (B, 6, N).
    """
    y0, y1, y2 = y
    a0, a1, a2 = a
    return torch.stack([y1 * a2 - y2 * a1, y2 * a0 - y0 * a2, y0 * a1 - y1 * a0, a0, a1, a2], dim=1)


def _outer_sum(u: Tensor, v: Tensor, w: Tensor) -> Tensor:
    """``sum_k w_k u_k v_k^T``: (B, 6, N), (B, 6, N), (B, N) -> (B, 6, 6), one bmm."""
    return (u * w[:, None, :]) @ v.transpose(-1, -2)


def _dtd_sum(Y: Tensor, c: Tensor) -> Tensor:
    """``sum_k c_k D_k^T D_k`` from weighted moments of y,
    ``D^T D = [[|y|^2 I - y y^T, [y]_x], [-[y]_x, I]]``.

    Args:
        Y: (B, 3, N) rotated points.
        c: (B, N).
    Returns:
        (B, 6, 6).
    """
    Yc = Y * c[:, None, :]
    m0 = c.sum(-1)
    m1 = Yc.sum(-1)
    m2 = Yc @ Y.transpose(-1, -2)
    eye = torch.eye(3, dtype=Y.dtype, device=Y.device)
    rot = m2.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None] * eye - m2
    k = skew(m1)
    return torch.cat([torch.cat([rot, k], -1), torch.cat([-k, m0[:, None, None] * eye], -1)], -2)


def _rotation_curvature(Y: Tensor, lam: Planes, w: Tensor) -> Tensor:
    """Second-order term of ``exp([w]_x) y`` in the Hessian: ``sym(A) - tr(A) I`` with
    ``A = sum_k w_k lambda_k y_k^T``, in the rotation block only.

    Args:
        Y: (B, 3, N).
        lam: ``de/dX`` as planes (B, N) x 3.
        w: (B, N).
    Returns:
        (B, 6, 6).
    """
    A = (torch.stack(lam, dim=1) * w[:, None, :]) @ Y.transpose(-1, -2)
    eye = torch.eye(3, dtype=Y.dtype, device=Y.device)
    S = 0.5 * (A + A.transpose(-1, -2)) - A.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None] * eye
    return torch.nn.functional.pad(S, (0, 3, 0, 3))


def derivatives(
    problem: PairedProblem, R: Tensor, t: Tensor, exact: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Value, gradient and Hessian in local coordinates at ``(R, t)``, analytic and batched.

    ``exact=False`` gives the Gauss-Newton Hessian (the robust kernel as iteratively reweighted least
    squares, weights ``w rho'(e)``; positive semi-definite), ``exact=True`` the true Hessian
    ``sum_k w_k [rho'' g_k g_k^T + rho' (D^T He D + S)]`` with ``g_k = D^T de/dX``, ``He = d2e/dX2`` and
    ``S`` the curvature of the rotation. Every term is a rank-one sum in the 6-vectors ``D^T a``, so
    the cost is a few (B, 6, N) x (B, N, 6) products.

    Args:
        R: (B, 3, 3).
        t: (B, 3).
        exact: which Hessian.
    Returns:
        ``(f (B,), grad (B, 6), H (B, 6, 6), depth (B, N))`` with depth the camera-frame z.
    """
    Y = R @ problem.points.transpose(-1, -2)  # (B, 3, N)
    X = (Y + t[..., None]).unbind(1)
    e, grad, H = problem.objective.terms(problem, Y, X, exact)
    f = problem.const + (problem.weight * problem.robust.rho(e, problem.scale_sq)).sum(-1)
    return f, grad, 0.5 * (H + H.transpose(-1, -2)), X[2]


def _angular_terms(
    problem: PairedProblem, Y: Tensor, X: Planes, exact: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Errors ``e = 1 - b . q``, ``q = X / |X|`` (B, N), gradient (B, 6) and Hessian (B, 6, 6), not yet
    symmetrised, of the angular objective; ``Y`` (B, 3, N) the rotated points, ``X`` the camera points."""
    y = Y.unbind(1)
    X0, X1, X2 = X
    w = problem.weight
    tgt = problem.target.unbind(-1)
    tiny = torch.finfo(Y.dtype).tiny
    n2 = (X0 * X0 + X1 * X1 + X2 * X2).clamp_min(tiny)
    inv_n = n2.rsqrt()
    q = (X0 * inv_n, X1 * inv_n, X2 * inv_n)
    beta = tgt[0] * q[0] + tgt[1] * q[1] + tgt[2] * q[2]
    e = 1.0 - beta
    d = tuple(b_i - beta * q_i for b_i, q_i in zip(tgt, q, strict=True))  # -|X| de/dX
    w1 = w * problem.robust.weight(e, problem.scale_sq)
    u_q, u_d = _lift(y, q), _lift(y, d)
    grad = -(u_d * (w1 * inv_n)[:, None, :]).sum(-1)
    a = w1 / n2
    if not exact:
        return e, grad, _dtd_sum(Y, a) - _outer_sum(u_q, u_q, a)
    # He = [b q^T + q b^T + beta (I - 3 q q^T)] / |X|^2
    ubq = _outer_sum(_lift(y, tgt), u_q, a)
    H = ubq + ubq.transpose(-1, -2) - _outer_sum(u_q, u_q, 3.0 * a * beta) + _dtd_sum(Y, a * beta)
    H = H + _rotation_curvature(Y, tuple(-d_i * inv_n for d_i in d), w1)
    if not problem.robust.identity:
        w2 = w * problem.robust.second(e, problem.scale_sq)
        H = H + _outer_sum(u_d, u_d, w2 / n2)
    return e, grad, H


def _reprojection_terms(
    problem: PairedProblem, Y: Tensor, X: Planes, exact: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Errors ``e = |pi(X) - x|^2`` (B, N), gradient (B, 6) and Hessian (B, 6, 6), not yet
    symmetrised, of the reprojection objective; arguments as in :func:`_angular_terms`."""
    y = Y.unbind(1)
    X0, X1, X2 = X
    w = problem.weight
    tgt = problem.target.unbind(-1)
    inv_z = 1.0 / torch.where(X2 != 0, X2, torch.ones_like(X2))
    pi0, pi1 = X0 * inv_z, X1 * inv_z
    r0, r1 = pi0 - tgt[0], pi1 - tgt[1]
    e = r0 * r0 + r1 * r1
    w1 = w * problem.robust.weight(e, problem.scale_sq)
    zero = torch.zeros_like(X2)
    J0 = _lift(y, (inv_z, zero, -pi0 * inv_z))  # d pi_0 / d delta
    J1 = _lift(y, (zero, inv_z, -pi1 * inv_z))
    rp = r0 * pi0 + r1 * pi1
    lam = (2.0 * r0 * inv_z, 2.0 * r1 * inv_z, -2.0 * rp * inv_z)  # de/dX
    u_l = _lift(y, lam)
    grad = (u_l * w1[:, None, :]).sum(-1)
    H = _outer_sum(J0, J0, 2.0 * w1) + _outer_sum(J1, J1, 2.0 * w1)
    if not exact:
        return e, grad, H
    # second derivatives of pi: d2pi_i/dX_i dz = -1/z^2, d2pi_i/dz2 = 2 pi_i / z^2
    inv_z2 = inv_z * inv_z
    c = (-r0 * inv_z2, -r1 * inv_z2, 2.0 * rp * inv_z2)
    u_z = _lift(y, (zero, zero, torch.ones_like(X2)))
    uzc = _outer_sum(u_z, _lift(y, c), 2.0 * w1)
    H = H + uzc + uzc.transpose(-1, -2) - _outer_sum(u_z, u_z, 2.0 * w1 * c[2])
    H = H + _rotation_curvature(Y, lam, w1)
    if not problem.robust.identity:
        w2 = w * problem.robust.second(e, problem.scale_sq)
        H = H + _outer_sum(u_l, u_l, w2)
    return e, grad, H


class Objective:
    """One per-pair error ``e(X, target)`` of the layer and everything that differs with it: the
    target a 2D point gives, the analytic derivatives, and the dense form's collapsed features
    ``G = W^T F(x2d)`` (B, n, 4) with the exact objective as a polynomial in them."""

    name: str = ""
    #: A residual ``r`` (normalised units, radians for the angular error) gives ``e ~ noise_scale r^2``.
    noise_scale: float = 1.0
    #: The error needs positive depth, so one weighted point behind the camera fails the sample.
    projective: bool = False

    def target(self, x2d: Tensor) -> Tensor:
        """The per-pair target of normalised image points (B, N, 2)."""
        raise NotImplementedError

    def pair_errors(self, X: Tensor, target: Tensor) -> Tensor:
        """Per-pair error ``e_k`` (B, N) of camera-frame points X (B, N, 3)."""
        raise NotImplementedError

    def terms(
        self, problem: PairedProblem, Y: Tensor, X: Planes, exact: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Errors (B, N), gradient (B, 6) and Hessian (B, 6, 6), not yet symmetrised; ``Y`` (B, 3, N) the
        rotated points, ``X`` the camera points as planes."""
        raise NotImplementedError

    def dense_features(self, x2d: Tensor) -> Tensor:
        """Per-2D-point features (B, m, 4) whose weighted sums ``G = W^T F`` carry the dense objective."""
        raise NotImplementedError

    def column_mass(self, G: Tensor) -> Tensor:
        """Column sums ``c = W^T 1`` read off the collapsed features G (B, n, 4) -> (B, n)."""
        raise NotImplementedError

    def collapse(self, x3d: Tensor, G: Tensor) -> PairedProblem:
        """The dense problem over all (i, j) pairs as one pair per 3D point (exact); x3d (B, n, 3)."""
        raise NotImplementedError

    def dense_value(self, G: Tensor, X: Tensor) -> Tensor:
        """Dense objective (B,) from G (B, n, 4) and camera points X (B, n, 3), polynomial in G (smooth
        for the backward)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AngularObjective(Objective):
    """``e = 1 - b . normalise(X)`` with the bearing ``b = normalise([x; 1])``; features ``[b, 1]``.

    Collapsed: ``sum_ij W_ij (1 - b_i . q_j) = sum W - sum_j |g_j| + sum_j |g_j| (1 - g^_j . q_j)``
    with ``g = W^T b``.
    """

    name, noise_scale = "angular", 0.5  # 1 - cos(theta) ~ theta^2 / 2
    terms = staticmethod(_angular_terms)

    def target(self, x2d):
        return normalized_to_bearings(x2d)

    def pair_errors(self, X, target):
        return 1.0 - (target * safe_normalise(X)).sum(-1)

    def dense_features(self, x2d):
        return torch.cat([normalized_to_bearings(x2d), torch.ones_like(x2d[..., :1])], dim=-1)

    def column_mass(self, G):
        return G[..., 3]

    def collapse(self, x3d, G):
        g0, g1, g2, c = G.unbind(-1)  # coordinate planes: cheaper than reductions over a last axis of 4
        g_norm = (g0 * g0 + g1 * g1 + g2 * g2).sqrt()
        ok = g_norm > 0
        inv = 1.0 / torch.where(ok, g_norm, torch.ones_like(g_norm))
        # a point without mass gets the (unused) target e_z
        target = torch.stack([g0 * inv, g1 * inv, torch.where(ok, g2 * inv, torch.ones_like(g2))], dim=-1)
        return PairedProblem(self, x3d, target, g_norm, c.sum(-1) - g_norm.sum(-1))

    def dense_value(self, G, X):
        return G[..., 3].sum(-1) - (G[..., :3] * safe_normalise(X)).sum((-1, -2))


class ReprojectionObjective(Objective):
    """``e = |pi(X) - x|^2`` in normalised image coordinates; features ``[x, 1, |x|^2]``.

    Collapsed: ``sum_ij W_ij |pi_j - x_i|^2 = sum_j c_j |pi_j - h_j / c_j|^2 + const`` with
    ``c = W^T 1``, ``h = W^T x``.
    """

    name, projective = "reprojection", True
    terms = staticmethod(_reprojection_terms)

    def target(self, x2d):
        return x2d

    def pair_errors(self, X, target):
        return (safe_project(X) - target).pow(2).sum(-1)

    def dense_features(self, x2d):
        return torch.cat([x2d, torch.ones_like(x2d[..., :1]), x2d.pow(2).sum(-1, keepdim=True)], dim=-1)

    def column_mass(self, G):
        return G[..., 2]

    def collapse(self, x3d, G):
        h0, h1, c, s = G.unbind(-1)
        ok = c > 0
        inv = torch.where(ok, 1.0 / torch.where(ok, c, torch.ones_like(c)), torch.zeros_like(c))
        target = torch.stack([h0 * inv, h1 * inv], dim=-1)
        const = s.sum(-1) - ((h0 * h0 + h1 * h1) * inv).sum(-1)
        return PairedProblem(self, x3d, target, torch.where(ok, c, torch.zeros_like(c)), const)

    def dense_value(self, G, X):
        pi = safe_project(X)
        return (G[..., 2] * pi.pow(2).sum(-1) - 2.0 * (G[..., :2] * pi).sum(-1) + G[..., 3]).sum(-1)


ANGULAR, REPROJECTION = AngularObjective(), ReprojectionObjective()
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (ANGULAR, REPROJECTION)}


def objective_named(objective: str | Objective) -> Objective:
    """The objective a name stands for; an :class:`Objective` passes through.

    Raises:
        ValueError: an unknown name, naming the known ones.
    """
    if isinstance(objective, Objective):
        return objective
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {tuple(OBJECTIVES)}, got {objective!r}")
    return OBJECTIVES[objective]


def paired_objective(
    objective: Objective, robust: RobustKernel, scale_sq: float, x2d: Tensor, X: Tensor, w: Tensor
) -> Tensor:
    """Paired objective in the raw inputs: ``sum_k w_k rho(e_k)``.

    Args:
        x2d: (B, k, 2).
        X: (B, k, 3) camera-frame points.
        w: (B, k).
    Returns:
        (B,).
    """
    return (w * robust.rho(objective.pair_errors(X, objective.target(x2d)), scale_sq)).sum(-1)
