"""RANSAC initialisations and the top-pair selection of the PnP layer."""

import pytest
import torch

from bpnp.geometry import axis_angle_to_matrix, rotation_error_deg
from bpnp.nodes.pnp.ransac import opencv_ransac, top_pairs, torch_ransac

F64 = torch.float64


def test_top_pairs_exact_with_full_rows_and_row_best_by_default():
    g = torch.Generator().manual_seed(0)
    W = torch.rand(2, 50, 60, generator=g, dtype=F64)
    rows, cols, w = top_pairs(W, 40, per_row=60)
    torch.testing.assert_close(w, W.reshape(2, -1).topk(40).values, atol=0, rtol=0)
    torch.testing.assert_close(W[torch.arange(2)[:, None], rows, cols], w, atol=0, rtol=0)
    rows, cols, w = top_pairs(W, 30)  # one candidate per row: each row's best column
    best = W.max(-1)
    torch.testing.assert_close(cols, best.indices.gather(1, rows), atol=0, rtol=0)
    assert (w[:, :-1] >= w[:, 1:]).all() and rows.unique(dim=1).shape[1] == 30


@pytest.mark.parametrize("method", ["opencv", "torch"])
def test_ransac_exact_on_noise_free_inliers_with_outliers(method):
    g = torch.Generator().manual_seed(1)
    B, k = 4, 120
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=F64))
    t = torch.randn(B, 3, generator=g, dtype=F64) * 0.3 + torch.tensor([0.0, 0.0, 6.0], dtype=F64)
    X = torch.rand(B, k, 3, generator=g, dtype=F64) * 2 - 1
    Xc = X @ R.mT + t[:, None]
    x = Xc[..., :2] / Xc[..., 2:]
    outlier = torch.rand(B, k, generator=g) < 0.4
    # wrong 2D points at least 0.05 from the true projection (the inlier threshold is 0.01)
    angle = torch.rand(B, k, generator=g, dtype=F64) * 6.3
    shift = (0.05 + 0.1 * torch.rand(B, k, 1, generator=g, dtype=F64)) * torch.stack(
        [angle.cos(), angle.sin()], -1
    )
    x = torch.where(outlier[..., None], x + shift, x)
    w = torch.ones(B, k, dtype=F64)
    w[0, 100:] = 0.0  # zero-weight pairs are left out
    if method == "opencv":
        R_est, t_est, found = opencv_ransac(x, X, w)
    else:
        R_est, t_est, found = torch_ransac(x, X, w, generator=torch.Generator().manual_seed(2))
    assert found.all()
    assert rotation_error_deg(R_est, R).max() < 1e-5
    torch.testing.assert_close(t_est, t, atol=1e-6, rtol=0)


def test_torch_ransac_falls_back_when_nothing_is_found():
    x = torch.zeros(1, 10, 2, dtype=F64)
    X = torch.rand(1, 10, 3, dtype=F64)
    R, t, found = torch_ransac(x, X, torch.zeros(1, 10, dtype=F64))
    assert not found.any() and torch.isfinite(R).all() and torch.isfinite(t).all()
