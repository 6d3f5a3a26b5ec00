"""Pinhole camera: projection with intrinsics K and conversions between pixels, normalised image
coordinates ``x = K^-1 [u, v, 1]`` and unit bearing vectors ``b = normalise([x; 1])``.

``K`` is (..., 3, 3) and broadcasts against the points' leading dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _homogeneous(x: Tensor) -> Tensor:
    """Append a 1: (..., N, 2) -> (..., N, 3)."""
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def pixels_to_normalized(uv: Tensor, K: Tensor) -> Tensor:
    """Normalised image coordinates of pixels, ``K^-1 [u, v, 1]`` without its last entry.

    Args:
        uv: (..., N, 2) pixels.
        K: (..., 3, 3).
    Returns:
        (..., N, 2).
    """
    xh = _homogeneous(uv) @ torch.linalg.inv(K).transpose(-1, -2)
    return xh[..., :2] / xh[..., 2:]


def normalized_to_pixels(x: Tensor, K: Tensor) -> Tensor:
    """Pixels of normalised image coordinates, ``K [x, y, 1]`` without its last entry.

    Args:
        x: (..., N, 2).
        K: (..., 3, 3).
    Returns:
        (..., N, 2).
    """
    uvh = _homogeneous(x) @ K.transpose(-1, -2)
    return uvh[..., :2] / uvh[..., 2:]


def normalized_to_bearings(x: Tensor) -> Tensor:
    """Unit bearing vectors ``normalise([x, y, 1])``.

    Args:
        x: (..., N, 2).
    Returns:
        (..., N, 3), unit length.
    """
    xh = _homogeneous(x)
    return xh / xh.norm(dim=-1, keepdim=True)


def bearing_angles(a: Tensor, b: Tensor) -> Tensor:
    """Angles (radians) between every pair of unit bearings, from the chord ``|a - b| = 2 sin(angle / 2)``
    by one product (a zero vector, such as padding, is at 90 degrees from everything).

    Args:
        a: (..., m, 3); b: (..., n, 3).
    Returns:
        (..., m, n) in [0, pi].
    """
    chord = (2.0 - 2.0 * a @ b.transpose(-1, -2)).clamp(0.0, 4.0).sqrt()
    return 2.0 * torch.asin(0.5 * chord)


def pixels_to_bearings(uv: Tensor, K: Tensor) -> Tensor:
    """Unit bearing vectors of pixels.

    Args:
        uv: (..., N, 2).
        K: (..., 3, 3).
    Returns:
        (..., N, 3).
    """
    return normalized_to_bearings(pixels_to_normalized(uv, K))


def project_normalized(X_cam: Tensor) -> Tensor:
    """Perspective division of camera-frame points onto the plane z = 1.

    Args:
        X_cam: (..., N, 3).
    Returns:
        (..., N, 2). Points with z = 0 give inf; callers mask points behind the camera.
    """
    return X_cam[..., :2] / X_cam[..., 2:]


def project(X_cam: Tensor, K: Tensor) -> Tensor:
    """Pixel coordinates of camera-frame points.

    Args:
        X_cam: (..., N, 3).
        K: (..., 3, 3).
    Returns:
        (..., N, 2).
    """
    return normalized_to_pixels(project_normalized(X_cam), K)


def project_points(X: Tensor, R: Tensor, t: Tensor, K: Tensor) -> Tensor:
    """Pixel coordinates of world points under pose ``(R, t)`` and intrinsics ``K``.

    Args:
        X: (..., N, 3) world points.
        R: (..., 3, 3).
        t: (..., 3).
        K: (..., 3, 3).
    Returns:
        (..., N, 2).
    """
    return project(X @ R.transpose(-1, -2) + t[..., None, :], K)
