"""RANSAC initialisations and the top-pair selection of the PnP layer."""

import pytest
import torch

from bpnp.geometry import axis_angle_to_matrix, rotation_error_deg
from bpnp.models.network import NetConfig
from bpnp.nodes import RansacOptions, SolverOptions, weighted_pnp
from bpnp.nodes.pnp import layer
from bpnp.nodes.pnp.ransac import opencv_ransac, top_pairs, torch_ransac

F64 = torch.float64


def scene(B: int, k: int, inlier_ratio: float, *, planar: bool = False, noise: float = 0.0, seed: int = 0):
    """Poses about 6 units from points in [-1, 1]^3 (or on z = 0); outliers: 2D points moved 0.05 to
    0.15 normalised units (the inlier threshold is 0.01). Returns x, X, R, t, outlier mask."""
    g = torch.Generator().manual_seed(seed)
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=F64))
    t = torch.randn(B, 3, generator=g, dtype=F64) * 0.3 + torch.tensor([0.0, 0.0, 6.0], dtype=F64)
    X = torch.rand(B, k, 3, generator=g, dtype=F64) * 2 - 1
    if planar:
        X[..., 2] = 0.0
    Xc = X @ R.mT + t[:, None]
    x = Xc[..., :2] / Xc[..., 2:] + noise * torch.randn(B, k, 2, generator=g, dtype=F64)
    outlier = torch.rand(B, k, generator=g) >= inlier_ratio
    angle = torch.rand(B, k, generator=g, dtype=F64) * 6.3
    shift = (0.05 + 0.1 * torch.rand(B, k, 1, generator=g, dtype=F64)) * torch.stack(
        [angle.cos(), angle.sin()], -1
    )
    return torch.where(outlier[..., None], x + shift, x), X, R, t, outlier


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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
    x, X, R, t, _ = scene(4, 120, 0.6, seed=1)
    w = torch.ones(4, 120, dtype=F64)
    w[0, 100:] = 0.0  # zero-weight pairs are left out
    if method == "opencv":
        R_est, t_est, found = opencv_ransac(x, X, w)
    else:
        R_est, t_est, found = torch_ransac(x, X, w, generator=seeded(2))
    assert found.all()
    assert rotation_error_deg(R_est, R).max() < 1e-5
    torch.testing.assert_close(t_est, t, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["opencv", "torch"])
def test_ransac_exact_on_planar_scenes(method):
    x, X, R, t, _ = scene(8, 100, 0.6, planar=True, seed=3)
    w = torch.ones(8, 100, dtype=F64)
    R_est, t_est, found = (
        opencv_ransac(x, X, w) if method == "opencv" else torch_ransac(x, X, w, generator=seeded(4))
    )
    assert found.all()
    assert rotation_error_deg(R_est, R).max() < 1e-5
    torch.testing.assert_close(t_est, t, atol=1e-6, rtol=0)


def test_torch_ransac_at_low_inlier_ratio_solves_as_many_as_opencv():
    x, X, R, _, _ = scene(16, 96, 0.3, noise=1e-3, seed=5)
    w = torch.ones(16, 96, dtype=F64)
    ours = rotation_error_deg(torch_ransac(x, X, w, generator=seeded(6))[0], R) < 1.0
    theirs = rotation_error_deg(opencv_ransac(x, X, w)[0], R) < 1.0
    assert ours.sum() >= theirs.sum() and ours.sum() >= 15


def test_torch_ransac_deterministic_and_independent_of_batch_mates():
    x, X, _, _, _ = scene(6, 80, 0.4, noise=1e-3, seed=7)
    w = torch.rand(6, 80, generator=seeded(8), dtype=F64) + 0.1
    w[2, 40:] = 0.0
    first = torch_ransac(x, X, w, generator=seeded(9))
    again = torch_ransac(x, X, w, generator=seeded(9))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    # Sample 0 alone, and sample 2 first in a batch with other mates: the same numbers each time.
    alone = torch_ransac(x[:1], X[:1], w[:1], generator=seeded(9))
    mates = [2, 5, 0, 1]
    shuffled = torch_ransac(x[mates], X[mates], w[mates], generator=seeded(9))
    same_place = torch_ransac(x[[2, 3]], X[[2, 3]], w[[2, 3]], generator=seeded(9))
    for a, b, c, d in zip(first, alone, shuffled, same_place, strict=True):
        assert torch.equal(a[:1], b)
        assert torch.equal(c[:1], d[:1])  # sample 2 first, with other mates


def test_torch_ransac_needs_four_positive_pairs():
    x, X, R, t, _ = scene(2, 10, 1.0, seed=10)
    w = torch.zeros(2, 10, dtype=F64)
    w[0, [1, 4, 6, 8]] = 1.0  # 4 positive pairs: enough
    w[1, [2, 5, 7]] = 1.0  # 3: not found, the fallback is finite
    R_est, t_est, found = torch_ransac(x, X, w, generator=seeded(11))
    assert found.tolist() == [True, False]
    assert rotation_error_deg(R_est[:1], R[:1]).max() < 1e-5
    torch.testing.assert_close(t_est[0], t[0], atol=1e-6, rtol=0)
    assert torch.isfinite(R_est).all() and torch.isfinite(t_est).all()


def test_torch_ransac_falls_back_when_nothing_is_found():
    x = torch.zeros(1, 10, 2, dtype=F64)
    X = torch.rand(1, 10, 3, dtype=F64)
    R, t, found = torch_ransac(x, X, torch.zeros(1, 10, dtype=F64))
    assert not found.any() and torch.isfinite(R).all() and torch.isfinite(t).all()


def test_auto_init_is_opencv_on_the_cpu(monkeypatch):
    x, X, _, _, _ = scene(2, 40, 0.7, noise=1e-3, seed=12)
    w = torch.ones(2, 40, dtype=F64)
    calls = []

    def spy(*args, **kwargs):
        calls.append("opencv")
        return opencv_ransac(*args, **kwargs)

    monkeypatch.setattr(layer, "opencv_ransac", spy)
    auto = weighted_pnp(x, X, w, solver=SolverOptions(max_iter=0))
    assert calls == ["opencv"]
    cv = weighted_pnp(x, X, w, solver=SolverOptions(max_iter=0), ransac=RansacOptions(backend="opencv"))
    torch.testing.assert_close(auto.R_init, cv.R_init, atol=0, rtol=0)
    assert layer.resolve_init("auto", torch.device("cpu")) == "opencv"
    assert layer.resolve_init("auto", torch.device("cuda")) == "torch"
    assert layer.resolve_init("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="init must be one of"):
        weighted_pnp(x, X, w, ransac=RansacOptions(backend="dlt"))
    # The network's default follows, and the values older checkpoints recorded still load.
    assert NetConfig().ransac.backend == "auto"
    assert NetConfig.from_dict({"ransac_init": "opencv"}).ransac.backend == "opencv"
    assert NetConfig(ransac={"backend": "torch"}).ransac.backend == "torch"
    with pytest.raises(ValueError, match="init must be one of"):
        NetConfig(ransac={"backend": "dlt"})
