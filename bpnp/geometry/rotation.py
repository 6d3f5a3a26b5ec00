"""Rotations: axis-angle <-> matrix, the SO(3) exponential and rotation distances.

All functions are batched over leading dimensions, differentiable, and work for any float dtype
and device. Axis-angle vectors ``omega`` have shape (..., 3); matrices (..., 3, 3).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Below this squared angle the Rodrigues coefficients switch to their Taylor series, so values
# and gradients stay finite at omega = 0 (sqrt has an infinite derivative there).
_SMALL_ANGLE_SQ = 1e-6


def skew(v: Tensor) -> Tensor:
    """Cross-product matrix ``[v]_x`` with ``[v]_x w = v x w``.

    Args:
        v: (..., 3).
    Returns:
        (..., 3, 3).
    """
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).unflatten(-1, (3, 3))


def vee(S: Tensor) -> Tensor:
    """Inverse of :func:`skew` applied to the skew part of ``S``: ``vee([v]_x) = v``.

    Args:
        S: (..., 3, 3).
    Returns:
        (..., 3).
    """
    return 0.5 * torch.stack(
        [S[..., 2, 1] - S[..., 1, 2], S[..., 0, 2] - S[..., 2, 0], S[..., 1, 0] - S[..., 0, 1]], dim=-1
    )


def _rodrigues_coefficients(theta_sq: Tensor) -> tuple[Tensor, Tensor]:
    """``A = sin(t)/t`` and ``B = (1 - cos t)/t^2`` of ``t = sqrt(theta_sq)``, finite with finite
    gradients everywhere including 0."""
    small = theta_sq < _SMALL_ANGLE_SQ
    safe_sq = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    theta = safe_sq.sqrt()
    a_big = torch.sin(theta) / theta
    b_big = (1.0 - torch.cos(theta)) / safe_sq
    a_small = 1.0 - theta_sq / 6.0 + theta_sq**2 / 120.0
    b_small = 0.5 - theta_sq / 24.0 + theta_sq**2 / 720.0
    return torch.where(small, a_small, a_big), torch.where(small, b_small, b_big)


def axis_angle_to_matrix(omega: Tensor) -> Tensor:
    """Rotation matrix ``R = exp([omega]_x)`` (Rodrigues' formula).

    Finite values and gradients for every angle, including 0 and pi.

    Args:
        omega: (..., 3) axis times angle in radians.
    Returns:
        (..., 3, 3) rotation matrices.
    """
    theta_sq = (omega * omega).sum(-1)
    a, b = _rodrigues_coefficients(theta_sq)
    K = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand(K.shape)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


# The SO(3) exponential of a small update is the same map; the alias names the intent at call sites
# that apply local updates ``R <- exp([delta]_x) R``.
so3_exp = axis_angle_to_matrix


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """Unit quaternion ``(w, x, y, z)`` with ``w >= 0`` of a rotation matrix.

    Uses the numerically best of the four candidate formulas per element (Shepperd's method), so
    it is accurate at every angle, including pi.

    Args:
        R: (..., 3, 3).
    Returns:
        (..., 4).
    """
    m = R.unbind(-1)
    m00, m10, m20 = m[0].unbind(-1)
    m01, m11, m21 = m[1].unbind(-1)
    m02, m12, m22 = m[2].unbind(-1)
    # 4 * q_k^2 for k = w, x, y, z; clamped away from 0 so sqrt stays differentiable.
    four_sq = torch.stack(
        [
            1.0 + m00 + m11 + m22,
            1.0 + m00 - m11 - m22,
            1.0 - m00 + m11 - m22,
            1.0 - m00 - m11 + m22,
        ],
        dim=-1,
    )
    # Each row: the quaternion times 4 q_k, from the formula that divides by q_k.
    cands = torch.stack(
        [
            torch.stack([four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, four_sq[..., 1], m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, four_sq[..., 2], m12 + m21], -1),
            torch.stack([m10 - m01, m02 + m20, m12 + m21, four_sq[..., 3]], -1),
        ],
        dim=-2,
    )
    denom = 2.0 * four_sq.clamp_min(torch.finfo(R.dtype).tiny).sqrt()
    cands = cands / denom[..., None]
    best = four_sq.argmax(-1)
    q = cands.gather(-2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_axis_angle(q: Tensor) -> Tensor:
    """Axis-angle vector of a unit quaternion ``(w, x, y, z)``; angle in [0, pi] when ``w >= 0``.

    Args:
        q: (..., 4).
    Returns:
        (..., 3).
    """
    w, v = q[..., 0], q[..., 1:]
    n_sq = (v * v).sum(-1)
    small = n_sq < _SMALL_ANGLE_SQ
    n = torch.where(small, torch.ones_like(n_sq), n_sq).sqrt()
    # angle / |v| = 2 atan2(|v|, w) / |v|; its series at |v| -> 0 (w -> 1) is 2 / w (1 - |v|^2 / (3 w^2)).
    scale_big = 2.0 * torch.atan2(n, w) / n
    scale_small = 2.0 / w * (1.0 - n_sq / (3.0 * w * w))
    return torch.where(small, scale_small, scale_big)[..., None] * v


def matrix_to_axis_angle(R: Tensor) -> Tensor:
    """Axis-angle vector (angle in [0, pi]) of a rotation matrix; the inverse of
    :func:`axis_angle_to_matrix` (at exactly pi, either of the two equivalent vectors).

    Args:
        R: (..., 3, 3).
    Returns:
        (..., 3).
    """
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def _safe_norm(v: Tensor) -> Tensor:
    """Euclidean norm over the last axis with zero (not NaN) gradient at v = 0."""
    sq = (v * v).sum(-1)
    zero = sq == 0
    return torch.where(zero, torch.zeros_like(sq), torch.where(zero, torch.ones_like(sq), sq).sqrt())


def rotation_angle(R1: Tensor, R2: Tensor) -> Tensor:
    """Geodesic angle in radians between rotations, in [0, pi].

    Computed as ``atan2(|vee(D - D^T)|, tr(D) - 1)`` with ``D = R1^T R2``: accurate at small angles
    (where ``acos`` loses half the digits) and differentiable, with zero gradient at 0, so it can serve
    as a loss.

    Args:
        R1, R2: (..., 3, 3), broadcastable.
    Returns:
        (...,).
    """
    D = R1.transpose(-1, -2) @ R2
    cos2 = D.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0  # 2 cos(angle)
    sin2 = 2.0 * _safe_norm(vee(D))  # 2 sin(angle)
    return torch.atan2(sin2, cos2)


def rotation_error_deg(R_est: Tensor, R_gt: Tensor) -> Tensor:
    """Rotation error ``acos((tr(R_est^T R_gt) - 1) / 2)`` in degrees (evaluated stably).

    Args:
        R_est, R_gt: (..., 3, 3).
    Returns:
        (...,) degrees in [0, 180].
    """
    return torch.rad2deg(rotation_angle(R_est, R_gt))
