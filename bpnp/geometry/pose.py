"""Rigid poses in the world-to-camera convention ``x_cam = R @ X + t`` (COLMAP's and OpenCV's).

A pose is a pair ``(R, t)`` with ``R`` (..., 3, 3) and ``t`` (..., 3); leading dimensions broadcast.
"""

from __future__ import annotations

from torch import Tensor


def transform_points(R: Tensor, t: Tensor, X: Tensor) -> Tensor:
    """Apply a pose to points: ``R @ X + t``.

    Args:
        R: (..., 3, 3).
        t: (..., 3).
        X: (..., N, 3).
    Returns:
        (..., N, 3).
    """
    return X @ R.transpose(-1, -2) + t[..., None, :]


def compose_poses(R1: Tensor, t1: Tensor, R2: Tensor, t2: Tensor) -> tuple[Tensor, Tensor]:
    """Pose of applying ``(R2, t2)`` first and then ``(R1, t1)``: ``x -> R1 (R2 x + t2) + t1``.

    Args:
        R1, R2: (..., 3, 3).
        t1, t2: (..., 3).
    Returns:
        ``(R1 R2, R1 t2 + t1)``.
    """
    return R1 @ R2, (R1 @ t2[..., None]).squeeze(-1) + t1


def invert_pose(R: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse pose ``(R^T, -R^T t)``.

    Args:
        R: (..., 3, 3).
        t: (..., 3).
    Returns:
        ``(R_inv (..., 3, 3), t_inv (..., 3))``.
    """
    Rt = R.transpose(-1, -2)
    return Rt, -(Rt @ t[..., None]).squeeze(-1)


def camera_center(R: Tensor, t: Tensor) -> Tensor:
    """Camera centre in world coordinates, ``-R^T t``.

    Args:
        R: (..., 3, 3).
        t: (..., 3).
    Returns:
        (..., 3).
    """
    return invert_pose(R, t)[1]


def translation_error(t_est: Tensor, t_gt: Tensor) -> Tensor:
    """``||t_est - t_gt||``.

    Args:
        t_est, t_gt: (..., 3).
    Returns:
        (...,).
    """
    return (t_est - t_gt).norm(dim=-1)


def center_error(R_est: Tensor, t_est: Tensor, R_gt: Tensor, t_gt: Tensor) -> Tensor:
    """Distance between estimated and true camera centres, ``||c_est - c_gt||``.

    Args:
        R_est, R_gt: (..., 3, 3).
        t_est, t_gt: (..., 3).
    Returns:
        (...,).
    """
    return (camera_center(R_est, t_est) - camera_center(R_gt, t_gt)).norm(dim=-1)
