"""Minimal absolute pose from three 2D-3D correspondences: Lambda Twist P3P, batched.

Persson and Nordberg, "Lambda Twist: An Accurate Fast Robust Perspective Three Point (P3P) Solver",
ECCV 2018. The depths ``l_i`` of the three points along their unit bearings ``y_i`` satisfy
``f_ij = l_i^2 + l_j^2 - 2 b_ij l_i l_j - a_ij = 0`` with ``b_ij = y_i . y_j`` and ``a_ij`` the squared
world distances. Eliminating the ``a_ij`` gives two homogeneous conics ``D1``, ``D2`` in ``l``; a
root ``g`` of the cubic ``det(D1 + g D2)`` makes ``D0 = D1 + g D2`` a pair of lines through the
solutions, read off its eigen decomposition (one eigenvalue is zero). Each line, put into one
homogeneous constraint, is a quadratic in a depth ratio: up to 2 x 2 = 4 solutions, polished by
Newton steps on the three distance constraints, then the rotation that maps the world triangle
onto the camera one.

Every step is closed form and branch-free (``torch.where`` selects), so any number of problems
solve as one sequence of element-wise operations. They run on the coordinates as separate
contiguous tensors (a 3-vector is a tuple of three): on small problems this is several times faster
than (..., 3) tensors with their small reductions. Computed in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A candidate counts as a solution when its depths meet the three distance constraints to this
# fraction of the triangle's summed squared side lengths (refined roots reach ~1e-15).
_CONSTRAINT_TOL = 1e-7
# Newton steps on the cubic and on the depths (both converge quadratically from closed-form starts;
# one step on the depths brings the closed form's 1e-10 to rounding).
_CUBIC_STEPS = 2
_DEPTH_STEPS = 1

Vec = tuple[Tensor, Tensor, Tensor]


def _dot(a: Vec, b: Vec) -> Tensor:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: Vec, b: Vec) -> Vec:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _sign(x: Tensor) -> Tensor:
    """+1 or -1 (never 0), for the cancellation-free root formulas."""
    return torch.ones_like(x).copysign(x)


def _nonzero(x: Tensor) -> Tensor:
    """``x`` with zeros replaced by ones: a safe divisor (the result is masked where ``x = 0``)."""
    return x + (x == 0)


def _sym_cofactors(p: Tensor, q: Tensor, r: Tensor, s: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, ...]:
    """Cofactors ``(C00, C01, C02, C11, C12, C22)`` of the symmetric ``[[p, q, r], [q, s, u], [r, u, v]]``."""
    return s * v - u * u, r * u - q * v, q * u - r * s, p * v - r * r, q * r - p * u, p * s - q * q


def _sym_inner(A: tuple[Tensor, ...], C: tuple[Tensor, ...]) -> Tensor:
    """``sum_ij A_ij C_ij`` of symmetric matrices given by their upper triangles (00, 01, 02, 11, 12, 22)."""
    return A[0] * C[0] + A[3] * C[3] + A[5] * C[5] + 2.0 * (A[1] * C[1] + A[2] * C[2] + A[4] * C[4])


def cubic_real_root(c2: Tensor, c1: Tensor, c0: Tensor) -> Tensor:
    """One real root of ``g^3 + c2 g^2 + c1 g + c0`` (the largest when all three are real).

    Closed form (Cardano with a cancellation-free pairing of the cube roots, or the trigonometric form
    for three real roots), then Newton steps.

    Args:
        c2, c1, c0: (...) coefficients.
    Returns:
        (...).
    """
    p = c1 - c2 * c2 / 3.0
    q = (2.0 * c2 * c2 - 9.0 * c1) * c2 / 27.0 + c0
    disc = q * q / 4.0 + p * p * p / 27.0
    one = disc > 0
    # One real root: u = A - p / (3 A), A = cbrt(-q/2 - sign(q) sqrt(disc)) the larger cube root.
    m = -(q / 2.0 + _sign(q) * disc.clamp_min(0).sqrt())
    A = _sign(m) * m.abs().pow(1.0 / 3.0)
    u_one = torch.where(A != 0, A - p / (3.0 * _nonzero(A)), torch.zeros_like(A))
    # Three real roots: u = 2 r cos(acos(-q / (2 r^3)) / 3) with r = sqrt(-p / 3).
    r = (-p).clamp_min(0).sqrt() / 3.0**0.5
    cos3 = (-q / (2.0 * _nonzero(r * r * r))).clamp(-1.0, 1.0)
    u_three = 2.0 * r * torch.cos(torch.acos(cos3) / 3.0)
    g = torch.where(one, u_one, u_three) - c2 / 3.0
    for _ in range(_CUBIC_STEPS):
        f = ((g + c2) * g + c1) * g + c0
        df = (3.0 * g + 2.0 * c2) * g + c1
        g = torch.where(df != 0, g - f / _nonzero(df), g)
    return g


def _constraints(lam: Vec, a: Vec, b: Vec) -> Vec:
    """``f_12, f_13, f_23`` at the depths ``lam``."""
    l1, l2, l3 = lam
    return (
        l1 * (l1 - 2.0 * b[0] * l2) + l2 * l2 - a[0],
        l1 * (l1 - 2.0 * b[1] * l3) + l3 * l3 - a[1],
        l2 * (l2 - 2.0 * b[2] * l3) + l3 * l3 - a[2],
    )


def _abs_sum(r: Vec) -> Tensor:
    return r[0].abs() + r[1].abs() + r[2].abs()


def _refine_depths(lam: Vec, a: Vec, b: Vec) -> Vec:
    """Newton steps on the three distance constraints (the sparse 3x3 Jacobian solved by its
    adjugate); a step is kept only where it lowers the residual."""
    r = _constraints(lam, a, b)
    for _ in range(_DEPTH_STEPS):
        l1, l2, l3 = lam
        # J = [[j11, j12, 0], [j21, 0, j23], [0, j32, j33]]
        j11, j12 = 2.0 * (l1 - b[0] * l2), 2.0 * (l2 - b[0] * l1)
        j21, j23 = 2.0 * (l1 - b[1] * l3), 2.0 * (l3 - b[1] * l1)
        j32, j33 = 2.0 * (l2 - b[2] * l3), 2.0 * (l3 - b[2] * l2)
        det = -(j11 * j23 * j32 + j12 * j21 * j33)
        inv = 1.0 / _nonzero(det)
        step = (
            (-j23 * j32 * r[0] - j12 * j33 * r[1] + j12 * j23 * r[2]) * inv,
            (-j21 * j33 * r[0] + j11 * j33 * r[1] - j11 * j23 * r[2]) * inv,
            (j21 * j32 * r[0] - j11 * j32 * r[1] - j12 * j21 * r[2]) * inv,
        )
        new = (l1 - step[0], l2 - step[1], l3 - step[2])
        r_new = _constraints(new, a, b)
        keep = (det != 0) & (_abs_sum(r_new) < _abs_sum(r))  # False for NaN too
        lam = tuple(torch.where(keep, n, o) for n, o in zip(new, lam, strict=True))
        r = tuple(torch.where(keep, n, o) for n, o in zip(r_new, r, strict=True))
    return lam


def _normalised(v: Vec) -> Vec:
    n = _dot(v, v).clamp_min(torch.finfo(v[0].dtype).tiny).rsqrt()
    return (v[0] * n, v[1] * n, v[2] * n)


def _frame(a: Vec, b: Vec) -> tuple[Vec, Vec, Vec]:
    """Orthonormal right-handed frame: along ``a``, in the plane of ``a`` and ``b``, normal to it."""
    e1 = _normalised(a)
    e3 = _normalised(_cross(a, b))
    return e1, _cross(e3, e1), e3


def solve_p3p(bearings: Tensor, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All poses ``x_cam = R X + t`` that put three world points on three viewing rays (P3P).

    Up to four solutions per problem, as candidates in a fixed order; the unused ones are marked
    invalid and hold zeros. Degenerate problems (collinear or coincident world points, non-finite
    input) have no valid candidate.

    Args:
        bearings: (..., 3, 3) viewing rays, one per row, of any positive length (unit bearings, or
            homogeneous normalised image points ``[x, y, 1]``), or (..., 3, 2) normalised image points.
        points: (..., 3, 3) world points, one per row.
    Returns:
        ``(R (..., 4, 3, 3), t (..., 4, 3), valid (..., 4) bool)``, floating point of the inputs' dtype.

    Example:
        >>> x, X = torch.rand(10, 3, 2) - 0.5, torch.randn(10, 3, 3) + torch.tensor([0.0, 0.0, 5.0])
        >>> R, t, valid = solve_p3p(x, X)  # (10, 4, 3, 3), (10, 4, 3), (10, 4)
    """
    if bearings.shape[-2:] not in ((3, 3), (3, 2)) or points.shape[-2:] != (3, 3):
        raise ValueError(
            f"solve_p3p: 'bearings' must be (..., 3, 3) or (..., 3, 2) and 'points' (..., 3, 3), got "
            f"{tuple(bearings.shape)} and {tuple(points.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(bearings.dtype, points.dtype), torch.float32)
    entries, valid = p3p_camera_entries(bearings, points)
    P = torch.stack(entries, dim=-1).unflatten(-1, (3, 4))
    P = torch.where(valid[..., None, None], P, torch.zeros_like(P)).to(dtype)
    return P[..., :3].contiguous(), P[..., 3].contiguous(), valid


def p3p_camera_entries(bearings: Tensor, points: Tensor) -> tuple[list[Tensor], Tensor]:
    """:func:`solve_p3p` as the 12 entries of the camera matrices ``[R | t]`` (row-major), each (..., 4)
    float64, and the (..., 4) validity mask; invalid candidates hold anything. For callers that
    need the candidates in another layout or precision (one stack then builds it).

    Args:
        bearings: (..., 3, 3) or (..., 3, 2); points: (..., 3, 3), as :func:`solve_p3p`'s.
    """
    # Long because Lambda Twist is one straight-line sequence of scalar steps: split, each helper
    # would take and return a dozen of the intermediate per-coordinate tensors.
    y, X = bearings.double(), points.double()
    if y.shape[-1] == 2:
        y = torch.cat([y, torch.ones_like(y[..., :1])], dim=-1)
    y, X = torch.broadcast_tensors(y, X)
    y = y / y.norm(dim=-1, keepdim=True)
    # Points and coordinates to the front, contiguous: y[i][c] is coordinate c of ray i, shape (...).
    y = y.movedim((-2, -1), (0, 1)).contiguous()
    X = X.movedim((-2, -1), (0, 1)).contiguous()
    y1, y2, y3 = (tuple(v.unbind(0)) for v in y.unbind(0))
    X1, X2, X3 = (tuple(v.unbind(0)) for v in X.unbind(0))
    d12 = tuple(p - q for p, q in zip(X1, X2, strict=True))
    d13 = tuple(p - q for p, q in zip(X1, X3, strict=True))
    d23 = tuple(p - q for p, q in zip(X2, X3, strict=True))
    a12, a13, a23 = _dot(d12, d12), _dot(d13, d13), _dot(d23, d23)
    b12, b13, b23 = _dot(y1, y2), _dot(y1, y3), _dot(y2, y3)

    # Upper triangles of the conics a23 M12 - a12 M23 and a23 M13 - a13 M23 (l^T M_ij l = a_ij).
    zero = torch.zeros_like(a12)
    D1 = (a23, -a23 * b12, zero, a23 - a12, a12 * b23, -a12)
    D2 = (a23, zero, -a23 * b13, -a13, a13 * b23, a23 - a13)
    C1, C2 = _sym_cofactors(*D1), _sym_cofactors(*D2)
    # det(D1 + g D2) = det D1 + g <C1, D2> + g^2 <C2, D1> + g^3 det D2
    det1 = D1[0] * C1[0] + D1[1] * C1[1] + D1[2] * C1[2]
    det2 = D2[0] * C2[0] + D2[1] * C2[1] + D2[2] * C2[2]
    inv3 = 1.0 / _nonzero(det2)
    gamma = cubic_real_root(_sym_inner(D1, C2) * inv3, _sym_inner(D2, C1) * inv3, det1 * inv3)
    D0 = tuple(p + gamma * q for p, q in zip(D1, D2, strict=True))

    # Eigenvalues s1, s2 (|s1| >= |s2|) of the rank-2 D0: roots of s^2 - tr s + m, m its principal minors.
    C0 = _sym_cofactors(*D0)
    tr, m = D0[0] + D0[3] + D0[5], C0[0] + C0[3] + C0[5]
    s1 = _nonzero(tr / 2.0 + _sign(tr) * (tr * tr / 4.0 - m).clamp_min(0).sqrt())
    ratio = (-m / (s1 * s1)).clamp_min(0).sqrt()  # sqrt(-s2 / s1): real lines need s1 s2 <= 0
    # Unit eigenvectors (last axis: s1, s2): adj(D0 - s I) is a multiple of e e^T, so the row of
    # its largest diagonal entry is the best-conditioned multiple of e.
    sig = torch.stack([s1, m / s1], dim=-1)
    C = _sym_cofactors(*(d[..., None] - sig if i in (0, 3, 5) else d[..., None] for i, d in enumerate(D0)))
    pick0 = (C[0].abs() >= C[3].abs()) & (C[0].abs() >= C[5].abs())
    pick1 = ~pick0 & (C[3].abs() >= C[5].abs())
    rows = ((C[0], C[1], C[2]), (C[1], C[3], C[4]), (C[2], C[4], C[5]))
    e = tuple(torch.where(pick0, r0, torch.where(pick1, r1, r2)) for r0, r1, r2 in zip(*rows, strict=True))
    n = _dot(e, e).clamp_min(torch.finfo(s1.dtype).tiny).rsqrt()
    # s1 (e1 . l)^2 + s2 (e2 . l)^2 = 0: the lines (e1 -+ ratio e2) . l = 0, last axis (-, +).
    rs = torch.stack([ratio, -ratio], dim=-1)
    u1, u2, u3 = (ec[..., :1] * n[..., :1] - rs * ec[..., 1:] * n[..., 1:] for ec in e)  # (..., 2)

    # On each line solve for the depth p (1 or 2) with the larger coefficient in terms of the other,
    # q, and l3: l_p = w0 l_q + w1 l3, tau = l3 / l_q. Swapping points 1 and 2 maps the formulas
    # onto themselves with a13 <-> a23, b13 <-> b23.
    swap = u1.abs() < u2.abs()
    up = _nonzero(torch.where(swap, u2, u1))
    w0, w1 = -torch.where(swap, u1, u2) / up, -u3 / up
    a12_, b12_ = a12[..., None], b12[..., None]
    a_p3, a_q3, b_p3, b_q3 = (
        torch.where(swap, s[..., None], o[..., None])
        for s, o in ((a23, a13), (a13, a23), (b23, b13), (b13, b23))
    )
    # a_p3 f_pq - a12 f_p3 = 0 divided by l_q^2: qa tau^2 + qb tau + qc = 0.
    k = a_p3 - a12_
    qa = (k * w1 + 2.0 * a12_ * b_p3) * w1 - a12_
    qb = 2.0 * (k * w0 * w1 - a_p3 * b12_ * w1 + a12_ * b_p3 * w0)
    qc = (k * w0 - 2.0 * a_p3 * b12_) * w0 + a_p3
    sq = (qb * qb - 4.0 * qa * qc).clamp_min(0).sqrt()  # complex roots then fail the validation
    h = -0.5 * (qb + _sign(qb) * sq)
    tau = torch.stack([h / qa, qc / h], dim=-1)  # (..., 2 lines, 2 roots)
    # l_q from f_q3 = 0 with l3 = tau l_q (per-line values broadcast against the roots).
    lq = (a_q3[..., None] / ((tau - 2.0 * b_q3[..., None]) * tau + 1.0)).sqrt()
    l3 = tau * lq
    lp = w0[..., None] * lq + w1[..., None] * l3
    sw = swap[..., None]
    lam = tuple(v.flatten(-2) for v in (torch.where(sw, lq, lp), torch.where(sw, lp, lq), l3))  # (..., 4)
    lam = tuple(torch.where(torch.isfinite(v), v, torch.zeros_like(v)) for v in lam)

    a, b = (a12_, a13[..., None], a23[..., None]), (b12_, b13[..., None], b23[..., None])
    lam = _refine_depths(lam, a, b)
    r = _constraints(lam, a, b)
    resid = torch.maximum(torch.maximum(r[0].abs(), r[1].abs()), r[2].abs())
    valid = (lam[0] > 0) & (lam[1] > 0) & (lam[2] > 0) & (resid <= _CONSTRAINT_TOL * (a[0] + a[1] + a[2]))

    # R maps an orthonormal frame of the world triangle (along d12, in its plane, normal to it) onto
    # the camera triangle's: a rotation to rounding however thin the triangle.
    c = _cross(d12, d13)
    valid = valid & (_dot(c, c) > 1e-12 * a12 * a13)[..., None]
    W = tuple(tuple(v[..., None] for v in e) for e in _frame(d12, d13))
    l1, l2, l3 = lam
    v1 = tuple(l1 * p[..., None] - l2 * q[..., None] for p, q in zip(y1, y2, strict=True))
    v2 = tuple(l1 * p[..., None] - l3 * q[..., None] for p, q in zip(y1, y3, strict=True))
    C = _frame(v1, v2)
    R = [[C[0][i] * W[0][j] + C[1][i] * W[1][j] + C[2][i] * W[2][j] for j in range(3)] for i in range(3)]
    t = [l1 * y1[i][..., None] - _dot(tuple(R[i]), tuple(x[..., None] for x in X1)) for i in range(3)]
    # Camera matrix [R | t] row by row; a non-finite entry anywhere makes the sum non-finite.
    entries = [v for i in range(3) for v in (*R[i], t[i])]
    return entries, valid & torch.isfinite(sum(entries))
