"""Weighted DLT pose: exact on noise-free data, weights select the pairs, batched."""

import pytest
import torch

from bpnp.geometry import axis_angle_to_matrix, rotation_error_deg
from bpnp.geometry.dlt import camera_matrix_to_pose, dlt_camera_matrix, dlt_pose

F64 = torch.float64


def _scene(shape: tuple[int, ...], n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    R = axis_angle_to_matrix(torch.randn(*shape, 3, generator=g, dtype=F64))
    t = torch.randn(*shape, 3, generator=g, dtype=F64) + torch.tensor([0.0, 0.0, 8.0], dtype=F64)
    X = torch.randn(*shape, n, 3, generator=g, dtype=F64) + 5.0  # off-centre, to exercise conditioning
    Xc = X @ R.transpose(-1, -2) + t[..., None, :]
    return Xc[..., :2] / Xc[..., 2:], X, R, t


@pytest.mark.parametrize("fix_depth", [False, True])
def test_dlt_exact_on_six_points_batched(fix_depth):
    x, X, R, t = _scene((3, 4), 6)
    R_est, t_est = camera_matrix_to_pose(dlt_camera_matrix(x, X, fix_depth=fix_depth))
    assert R_est.shape == (3, 4, 3, 3) and t_est.shape == (3, 4, 3)
    assert rotation_error_deg(R_est, R).max() < 1e-7
    torch.testing.assert_close(t_est, t, atol=1e-8, rtol=0)


def test_zero_weights_ignore_outliers():
    x, X, R, t = _scene((2,), 20, seed=1)
    x = x.clone()
    x[:, 12:] = torch.rand(2, 8, 2, dtype=F64)  # wrong 2D points
    w = (torch.arange(20) < 12).to(F64).expand(2, -1)
    R_est, t_est = dlt_pose(x, X, w)
    assert rotation_error_deg(R_est, R).max() < 1e-7
    R_bad, _ = dlt_pose(x, X)
    assert rotation_error_deg(R_bad, R).max() > 1e-3


def test_camera_matrix_sign_and_scale():
    x, X, R, t = _scene((5,), 10, seed=2)
    P = dlt_camera_matrix(x, X)
    assert (torch.linalg.det(P[..., :3]) > 0).all()
    R2, t2 = camera_matrix_to_pose(3.0 * torch.cat([R, t[..., None]], -1))
    torch.testing.assert_close(R2, R)
    torch.testing.assert_close(t2, t)
