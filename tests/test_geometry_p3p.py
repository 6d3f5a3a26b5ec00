"""Batched Lambda Twist P3P against known poses and OpenCV's P3P solvers."""

import cv2
import numpy as np
import pytest
import torch

from bpnp.geometry import axis_angle_to_matrix, solve_p3p
from bpnp.geometry.p3p import cubic_real_root

F64 = torch.float64


def minimal_problems(n: int, seed: int = 0):
    """Random poses looking at three points in [-2, 2]^3 about 6 units away (noise-free)."""
    g = torch.Generator().manual_seed(seed)
    R = axis_angle_to_matrix(torch.randn(n, 3, generator=g, dtype=F64))
    t = torch.randn(n, 3, generator=g, dtype=F64) * 0.5 + torch.tensor([0.0, 0.0, 6.0], dtype=F64)
    X = torch.rand(n, 3, 3, generator=g, dtype=F64) * 4 - 2
    Xc = X @ R.mT + t[:, None]
    return Xc[..., :2] / Xc[..., 2:], X, R, t


def test_true_pose_among_candidates_and_every_candidate_exact():
    x, X, R, t = minimal_problems(1000)
    Rs, ts, valid = solve_p3p(x, X)
    assert Rs.shape == (1000, 4, 3, 3) and ts.shape == (1000, 4, 3) and valid.shape == (1000, 4)
    err = (Rs - R[:, None]).abs().amax((-1, -2)) + (ts - t[:, None]).abs().amax(-1)
    assert torch.where(valid, err, torch.inf).amin(-1).max() < 1e-8
    # Every valid candidate is a rigid pose that puts the three points in front, on their rays.
    Xc = torch.einsum("bhij,bkj->bhki", Rs, X) + ts[:, :, None]
    reproj = (Xc[..., :2] / Xc[..., 2:] - x[:, None]).abs().amax((-1, -2))
    assert reproj[valid].max() < 1e-10 and (Xc[..., 2][valid] > 0).all()
    eye = torch.eye(3, dtype=F64)
    assert (Rs @ Rs.mT - eye)[valid].abs().max() < 1e-9
    assert (torch.linalg.det(Rs[valid]) - 1).abs().max() < 1e-9
    assert (Rs[~valid] == 0).all() and (ts[~valid] == 0).all()


@pytest.mark.parametrize("flag", [cv2.SOLVEPNP_P3P, cv2.SOLVEPNP_AP3P])
def test_solution_sets_match_opencv(flag):
    x, X, _, _ = minimal_problems(300, seed=1)
    Rs, ts, valid = solve_p3p(x, X)
    for i in range(len(x)):
        _, rvecs, tvecs = cv2.solveP3P(X[i].numpy(), x[i].numpy(), np.eye(3), None, flags=flag)
        theirs = [(cv2.Rodrigues(r)[0], tv.ravel()) for r, tv in zip(rvecs, tvecs, strict=True)]
        # AP3P also returns the poses that put the points behind the camera (same image); P3P does not.
        theirs = [(Rc, tc) for Rc, tc in theirs if ((X[i].numpy() @ Rc.T + tc)[:, 2] > 0).all()]
        ours = [(Rs[i, j].numpy(), ts[i, j].numpy()) for j in range(4) if valid[i, j]]
        assert len(ours) == len(theirs)
        for Rc, tc in theirs:
            assert min(np.abs(Rc - Ro).max() + np.abs(tc - to).max() for Ro, to in ours) < 1e-6


def test_bearings_of_any_length_and_leading_dimensions():
    x, X, _, _ = minimal_problems(10, seed=2)
    R2, t2, v2 = solve_p3p(x, X)
    rays = 2.5 * torch.cat([x, torch.ones_like(x[..., :1])], -1)  # homogeneous points, scaled
    R3, t3, v3 = solve_p3p(rays.view(2, 5, 3, 3), X.view(2, 5, 3, 3))
    assert R3.shape == (2, 5, 4, 3, 3) and (v3.view(10, 4) == v2).all()
    torch.testing.assert_close(R3.view(10, 4, 3, 3), R2, atol=1e-10, rtol=0)
    torch.testing.assert_close(t3.view(10, 4, 3), t2, atol=1e-10, rtol=0)
    R32, _, v32 = solve_p3p(x.float(), X.float())  # float32 in and out, solved in float64
    assert R32.dtype == torch.float32 and (v32 == v2).all()


def test_degenerate_problems_have_no_valid_candidate():
    x, X, _, _ = minimal_problems(3, seed=3)
    X[0, 2] = 0.3 * X[0, 0] + 0.7 * X[0, 1]  # collinear world points
    X[1, 1] = X[1, 0]  # coincident world points
    X[2] = torch.nan
    R, t, valid = solve_p3p(x, X)
    assert not valid.any() and torch.isfinite(R).all() and torch.isfinite(t).all()
    with pytest.raises(ValueError, match="solve_p3p"):
        solve_p3p(x[:, :2], X[:, :2])


def test_cubic_real_root_is_a_root_and_the_largest_of_three():
    g = torch.Generator().manual_seed(4)
    c = torch.randn(3, 2000, generator=g, dtype=F64) * torch.tensor([[1.0], [3.0], [10.0]], dtype=F64)
    root = cubic_real_root(*c)
    for (c2, c1, c0), r in zip(c.T.tolist(), root.tolist(), strict=True):
        real = np.roots([1.0, c2, c1, c0])
        real = real[np.abs(real.imag) < 1e-9].real
        assert np.abs(real - r).min() < 1e-8 * (1 + abs(r))
        if len(real) == 3:
            assert abs(r - real.max()) < 1e-8 * (1 + abs(r))
