"""Linear pose from 2D-3D correspondences: the weighted direct linear transform (DLT).

The camera matrix ``P ~ [R | t]`` (normalised image coordinates, so K = I) is the null vector of the
stacked projection constraints; it needs 6 correspondences in general position and non-coplanar 3D
points. Batched over leading dimensions, so thousands of small RANSAC hypotheses solve at once.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _normalise_points(X: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centre and scale points for conditioning: ``X_n = (X - c) / s``, RMS distance sqrt(3).

    Args:
        X: (..., N, 3).
        w: (..., N) non-negative weights.
    Returns:
        ``(X_n (..., N, 3), c (..., 3), s (...,))``.
    """
    wsum = w.sum(-1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)
    c = (w[..., None] * X).sum(-2) / wsum
    d2 = (w * (X - c[..., None, :]).pow(2).sum(-1)).sum(-1, keepdim=True) / wsum
    s = (d2 / 3.0).sqrt().clamp_min(torch.finfo(X.dtype).eps).squeeze(-1)
    return (X - c[..., None, :]) / s[..., None, None], c, s


def dlt_camera_matrix(x: Tensor, X: Tensor, w: Tensor | None = None, fix_depth: bool = False) -> Tensor:
    """Weighted DLT estimate of the 3x4 camera matrix with ``x ~ P [X; 1]``.

    Minimises ``sum_k w_k |A_k vec(P)|^2`` (algebraic error) over ``|P| = 1`` (an eigenvector of
    the 12x12 normal matrix), or, with ``fix_depth``, over ``P[2, 3] = 1`` (an 11x11 linear solve,
    several times faster for many small problems). ``P[2, 3]`` is the depth of the points' weighted
    centroid in the conditioned frame, so the constraint is safe whenever the points lie in front
    of the camera. The sign is chosen so that the left 3x3 block has a positive determinant.

    Args:
        x: (..., N, 2) normalised image coordinates.
        X: (..., N, 3) world points.
        w: (..., N) non-negative weights, or None for all ones.
        fix_depth: normalise by ``P[2, 3] = 1`` instead of ``|P| = 1``.
    Returns:
        (..., 3, 4).
    """
    if w is None:
        w = torch.ones(X.shape[:-1], dtype=X.dtype, device=X.device)
    Xn, c, s = _normalise_points(X, w)
    Xh = torch.cat([Xn, torch.ones_like(Xn[..., :1])], dim=-1)  # (..., N, 4)
    zero = torch.zeros_like(Xh)
    u, v = x[..., 0:1], x[..., 1:2]
    rows_u = torch.cat([Xh, zero, -u * Xh], dim=-1)  # (..., N, 12)
    rows_v = torch.cat([zero, Xh, -v * Xh], dim=-1)
    A = torch.cat([rows_u, rows_v], dim=-2)  # (..., 2N, 12)
    wa = torch.cat([w, w], dim=-1)
    normal = (A * wa[..., None]).transpose(-1, -2) @ A  # (..., 12, 12)
    if fix_depth:
        sol = torch.linalg.solve_ex(normal[..., :11, :11], -normal[..., :11, 11:])[0]
        Pn = torch.cat([sol.squeeze(-1), torch.ones_like(sol[..., 0, :])], dim=-1).unflatten(-1, (3, 4))
    else:
        Pn = torch.linalg.eigh(normal)[1][..., 0].unflatten(-1, (3, 4))
    # Undo the conditioning: P [X; 1] = Pn [(X - c) / s; 1].
    M = Pn[..., :3] / s[..., None, None]
    p4 = Pn[..., 3] - (M @ c[..., None]).squeeze(-1)
    P = torch.cat([M, p4[..., None]], dim=-1)
    sign = torch.where(torch.linalg.det(M) < 0, -1.0, 1.0).to(P.dtype)
    return P * sign[..., None, None]


def camera_matrix_to_pose(P: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest rigid pose to a camera matrix ``P ~ s [R | t]`` with ``s > 0``.

    ``R`` is the orthogonal polar factor of the left block (a proper rotation when its determinant is
    positive), ``s`` the mean of its singular values.

    Args:
        P: (..., 3, 4).
    Returns:
        ``(R (..., 3, 3), t (..., 3))``.
    """
    M = P[..., :3]
    U, S, Vh = torch.linalg.svd(M)
    D = torch.ones_like(S)
    D[..., 2] = torch.sign(torch.linalg.det(U @ Vh))
    R = U @ (D[..., None] * Vh)
    scale = S.mean(-1).clamp_min(torch.finfo(P.dtype).tiny)
    return R, P[..., 3] / scale[..., None]


def dlt_pose(x: Tensor, X: Tensor, w: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Rigid pose ``x_cam = R X + t`` from the weighted DLT.

    Exact for noise-free correspondences of at least 6 non-coplanar points; with noise, an
    initialisation for iterative refinement.

    Args:
        x: (..., N, 2) normalised image coordinates.
        X: (..., N, 3) world points.
        w: (..., N) non-negative weights, or None.
    Returns:
        ``(R (..., 3, 3), t (..., 3))``.
    """
    return camera_matrix_to_pose(dlt_camera_matrix(x, X, w))
