"""Weighted PnP layer: accuracy against known poses and OpenCV, implicit gradients by finite
differences, RANSAC with outliers, degenerate samples."""

import logging
import math

import cv2
import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from bpnp.geometry import axis_angle_to_matrix, matrix_to_axis_angle, rotation_error_deg
from bpnp.nodes import PnPResult, RansacOptions, SolverOptions, weighted_pnp
from bpnp.nodes.pnp import checks

F64 = torch.float64


def make_scene(B: int, n: int, *, noise: float = 0.0, seed: int = 0, dtype=F64):
    """Random poses looking at points in [-1, 1]^3 about 6 units away; 2D points in normalised units."""
    g = torch.Generator().manual_seed(seed)
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=F64))
    t = torch.randn(B, 3, generator=g, dtype=F64) * 0.3 + torch.tensor([0.0, 0.0, 6.0], dtype=F64)
    X = torch.rand(B, n, 3, generator=g, dtype=F64) * 2 - 1
    Xc = X @ R.mT + t[:, None]
    x = Xc[..., :2] / Xc[..., 2:] + noise * torch.randn(B, n, 2, generator=g, dtype=F64)
    return x.to(dtype), X.to(dtype), R.to(dtype), t.to(dtype)


def reprojection_objective_np(R: np.ndarray, t: np.ndarray, x: np.ndarray, X: np.ndarray) -> float:
    """Independent evaluation: sum of squared distances in the normalised image plane."""
    Xc = X @ R.T + t
    return float(((Xc[:, :2] / Xc[:, 2:] - x) ** 2).sum())


@pytest.mark.parametrize("objective", ["angular", "reprojection"])
@pytest.mark.parametrize("form", ["paired", "dense"])
def test_noise_free_pose_recovered(objective, form):
    x, X, R, t = make_scene(4, 30, seed=1)
    if form == "dense":
        # one-hot weights under a random permutation of the 2D points
        perm = torch.stack([torch.randperm(30, generator=torch.Generator().manual_seed(b)) for b in range(4)])
        x = x.gather(1, perm[..., None].expand(-1, -1, 2))
        W = torch.zeros(4, 30, 30, dtype=F64)
        W.scatter_(2, perm[..., None], 1.0)
    else:
        W = torch.rand(4, 30, dtype=F64) + 0.5
    res = weighted_pnp(x, X, W, solver=SolverOptions(objective=objective))
    assert isinstance(res, PnPResult)
    assert res.valid.all() and res.converged.all()
    assert (rotation_error_deg(res.R, R) * math.pi / 180).max() < 1e-9
    assert (res.t - t).abs().max() < 1e-9
    assert res.objective.abs().max() < 1e-12


def test_noisy_objective_no_worse_than_opencv_iterative():
    B, n = 6, 40
    x, X, _, _ = make_scene(B, n, noise=0.01, seed=2)
    res = weighted_pnp(x, X, torch.ones(B, n, dtype=F64), solver=SolverOptions(objective="reprojection"))
    assert res.valid.all()
    for b in range(B):
        Xb, xb = X[b].numpy(), x[b].numpy()
        ok, rvec, tvec = cv2.solvePnP(Xb, xb, np.eye(3), None, flags=cv2.SOLVEPNP_ITERATIVE)
        assert ok
        f_cv = reprojection_objective_np(cv2.Rodrigues(rvec)[0], tvec.ravel(), xb, Xb)
        f_ours = reprojection_objective_np(res.R[b].numpy(), res.t[b].numpy(), xb, Xb)
        assert f_ours <= f_cv * (1 + 1e-9)
        assert abs(res.objective[b].item() - f_ours) <= 1e-12 * max(f_ours, 1.0)


GRAD_CASES = [("dense", obj, None) for obj in ("angular", "reprojection")] + [
    ("paired", obj, rob)
    for obj in ("angular", "reprojection")
    for rob in (None, "huber", "cauchy", "tanh", "geman_mcclure")
]


@pytest.mark.parametrize("form,objective,robust", GRAD_CASES)
def test_gradcheck(form, objective, robust):
    n = 8
    x, X, R, t = make_scene(1, n, noise=0.003, seed=3)
    g = torch.Generator().manual_seed(4)
    if form == "dense":
        W = torch.rand(1, n, n, generator=g, dtype=F64) + 0.1 + 4 * torch.eye(n, dtype=F64)
    else:
        W = torch.rand(1, n, generator=g, dtype=F64) + 0.5
    # A robust scale near the noise level puts some residuals past the knee / in the down-weighted range.
    scale = 0.003

    def fn(x2d, x3d, w):
        opts = SolverOptions(objective=objective, robust=robust, robust_scale=scale)
        r = weighted_pnp(x2d, x3d, w, pose_init=(R, t), solver=opts)
        assert r.valid.all() and r.converged.all()
        return r.R, r.t, r.objective

    inputs = tuple(v.clone().requires_grad_() for v in (x, X, W))
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("init", ["opencv", "torch"])
def test_ransac_with_half_wrong_pairs(init):
    B, k = 3, 200
    x, X, R, t = make_scene(B, k, noise=0.0005, seed=5)
    g = torch.Generator().manual_seed(6)
    wrong = torch.arange(k) % 2 == 1
    x = torch.where(wrong[None, :, None], torch.rand(B, k, 2, generator=g, dtype=F64) * 0.4 - 0.2, x)
    w = torch.rand(B, k, generator=g, dtype=F64) * 0.5 + 0.5
    res = weighted_pnp(
        x,
        X,
        w,
        generator=torch.Generator().manual_seed(7),
        solver=SolverOptions(objective="reprojection", robust="tanh", robust_scale=0.003),
        ransac=RansacOptions(backend=init),
    )
    assert res.valid.all()
    assert rotation_error_deg(res.R, R).max() < 0.1
    assert (res.t - t).norm(dim=-1).max() < 0.02


@pytest.mark.parametrize("init", ["opencv", "torch"])
def test_dense_plan_half_wrong_top_pairs_sparse_robust(init):
    B, n = 2, 100
    x, X, R, t = make_scene(B, n, noise=0.0005, seed=8)
    g = torch.Generator().manual_seed(9)
    W = torch.rand(B, n, n, generator=g, dtype=F64) * 1e-4
    idx = torch.arange(n)
    W[:, idx, idx] += 1.0 * (idx % 2 == 0)  # true matches for half of the points
    W[:, idx, (idx + 7) % n] += 1.0 * (idx % 2 == 1)  # wrong matches, as heavy, for the other half
    res = weighted_pnp(
        x,
        X,
        W,
        sparse_topk=100,
        generator=torch.Generator().manual_seed(10),
        solver=SolverOptions(objective="reprojection", robust="tanh", robust_scale=0.003),
        ransac=RansacOptions(backend=init, topk=100),
    )
    assert res.valid.all()
    assert rotation_error_deg(res.R, R).max() < 0.1


def test_paired_angular_equals_dense_diagonal():
    x, X, R, t = make_scene(3, 20, noise=0.01, seed=11)
    w = torch.rand(3, 20, dtype=F64) + 0.2
    a = weighted_pnp(x, X, w, pose_init=(R, t))
    b = weighted_pnp(x, X, torch.diag_embed(w), pose_init=(R, t))
    torch.testing.assert_close(a.R, b.R, atol=1e-10, rtol=0)
    torch.testing.assert_close(a.t, b.t, atol=1e-10, rtol=0)
    torch.testing.assert_close(a.objective, b.objective, atol=1e-12, rtol=1e-10)


def test_masks_match_unpadded_solve():
    x, X, R, t = make_scene(2, 12, noise=0.005, seed=12)
    W = torch.rand(2, 12, 12, dtype=F64) + 3 * torch.eye(12, dtype=F64)
    full = weighted_pnp(x[:1, :9], X[:1, :10], W[:1, :9, :10], pose_init=(R[:1], t[:1]))
    row_mask = torch.arange(12) < torch.tensor([[9], [12]])
    col_mask = torch.arange(12) < torch.tensor([[10], [12]])
    x_pad = torch.where(row_mask[..., None], x, torch.nan)  # padding may hold anything
    padded = weighted_pnp(x_pad, X, W, pose_init=(R, t), row_mask=row_mask, col_mask=col_mask)
    assert padded.valid.all()
    torch.testing.assert_close(padded.R[:1], full.R, atol=1e-12, rtol=0)
    torch.testing.assert_close(padded.t[:1], full.t, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference"])
def test_dtypes_and_grad_modes(dtype, mode):
    x, X, R, t = make_scene(2, 50, noise=0.0, seed=13, dtype=dtype)
    W = (torch.eye(50, dtype=dtype) + 1e-3 * torch.rand(50, 50, dtype=dtype)).expand(2, -1, -1).clone()
    ctx = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference": torch.inference_mode}[mode]
    with ctx():
        W_in = W.requires_grad_() if mode == "grad" else W
        res = weighted_pnp(
            x, X, W_in, generator=torch.Generator().manual_seed(0), ransac=RansacOptions(backend="torch")
        )
    assert res.R.dtype == dtype and res.t.dtype == dtype
    assert res.valid.all()
    assert rotation_error_deg(res.R, R).max() < 0.5  # the diffuse mass biases the dense objective a little
    if mode == "grad":
        res.t.sum().backward()
        assert W.grad is not None and torch.isfinite(W.grad).all()


def test_gradient_of_pose_loss_matches_finite_difference_through_weights():
    # An independent first-order check on a larger problem than gradcheck's: a loss on the pose,
    # perturbed along a random weight direction.
    x, X, R, t = make_scene(1, 30, noise=0.01, seed=14)
    g = torch.Generator().manual_seed(14)  # not the global stream, which other tests move
    W = torch.rand(1, 30, 30, generator=g, dtype=F64) * 0.05 + torch.eye(30, dtype=F64)
    D = torch.randn(W.shape, generator=g, dtype=F64)

    def loss(w):
        r = weighted_pnp(x, X, w, pose_init=(R, t))
        rot = matrix_to_axis_angle(r.R) * torch.tensor([1.0, -2.0, 3.0], dtype=F64)
        return rot.sum() + r.t.pow(2).sum()

    Wg = W.clone().requires_grad_()
    loss(Wg).backward()
    eps = 1e-6
    fd = (loss(W + eps * D) - loss(W - eps * D)) / (2 * eps)
    assert abs((Wg.grad * D).sum().item() - fd.item()) <= 1e-6 * max(1.0, abs(fd.item()))


# ---------------------------------------------------------------------------------------------
# Degenerate samples next to a normal one: flagged, exactly zero gradient, the normal one unchanged.


def _degenerate(kind: str):
    """A paired batch [normal, degenerate] (angular objective unless stated) and its pose_init."""
    x, X, R, t = make_scene(2, 10, noise=0.003, seed=15)
    w = torch.rand(2, 10, dtype=F64) + 0.5
    objective = "angular"
    if kind == "zero_weights":
        w[1] = 0.0
    elif kind == "three_pairs":
        w[1, 3:] = 0.0
    elif kind == "collinear":
        s = torch.linspace(-1, 1, 10, dtype=F64)
        X[1] = torch.stack([s, 0.5 * s, 0.2 * s], -1)
    elif kind in ("nan_x2d", "inf_x3d", "nan_weights"):
        target = {"nan_x2d": x, "inf_x3d": X, "nan_weights": w}[kind]
        target[1, 2] = math.nan if kind != "inf_x3d" else math.inf
    elif kind == "behind_camera":
        objective = "reprojection"
        t[1, 2] = -6.0  # every point at negative depth; its "projections" are consistent with that pose
        Xc = X[1] @ R[1].T + t[1]
        x[1] = Xc[:, :2] / Xc[:, 2:]
    elif kind == "singular_hessian":
        # all 10 pairs look along one bearing: the camera distance is unconstrained
        g = torch.Generator().manual_seed(19)
        x[1] = x[1, :1].expand(10, 2)
        X[1] = X[1, :1] + torch.linspace(0, 1, 10, dtype=F64)[:, None] * torch.randn(
            1, 3, generator=g, dtype=F64
        )
        X[1, :, 2] += 0.3 * torch.rand(10, generator=g, dtype=F64)
    else:
        raise ValueError(kind)
    return x, X, w, (R, t), objective


DEGENERATE = [
    "zero_weights",
    "three_pairs",
    "collinear",
    "nan_x2d",
    "inf_x3d",
    "nan_weights",
    "behind_camera",
    "singular_hessian",
]


REASON = {
    "zero_weights": "all weights zero",
    "three_pairs": "fewer than 4 effective correspondences",
    "collinear": "collinear 3D points",
    "nan_x2d": "non-finite input",
    "inf_x3d": "non-finite input",
    "nan_weights": "non-finite input",
    "behind_camera": "points behind the camera",
    "singular_hessian": "singular Hessian",
}


@pytest.mark.parametrize("kind", DEGENERATE)
def test_degenerate_sample_in_batch(kind, caplog, monkeypatch):
    monkeypatch.setattr(checks, "_warned", set())
    x, X, w, (R, t), objective = _degenerate(kind)
    inputs = [v.clone().requires_grad_() for v in (x, X, w)]
    with caplog.at_level(logging.WARNING, logger="bpnp.nodes.pnp"):
        res = weighted_pnp(*inputs, pose_init=(R, t), solver=SolverOptions(objective=objective))
    assert res.valid.tolist() == [True, False]
    assert [r.getMessage() for r in caplog.records if REASON[kind] in r.getMessage()]
    for out in (res.R, res.t, res.objective):
        assert torch.isfinite(out).all()
    (res.R.sum() + res.t.sum() + res.objective.sum()).backward()

    alone_inputs = [v[:1].clone().requires_grad_() for v in (x, X, w)]
    alone = weighted_pnp(*alone_inputs, pose_init=(R[:1], t[:1]), solver=SolverOptions(objective=objective))
    (alone.R.sum() + alone.t.sum() + alone.objective.sum()).backward()
    torch.testing.assert_close(res.R[:1], alone.R, atol=0, rtol=0)
    torch.testing.assert_close(res.t[:1], alone.t, atol=0, rtol=0)
    for v, a in zip(inputs, alone_inputs, strict=True):
        assert torch.equal(v.grad[1], torch.zeros_like(v.grad[1]))
        torch.testing.assert_close(v.grad[:1], a.grad, atol=1e-12, rtol=1e-10)


def test_degenerate_dense_sample_with_ransac_init():
    x, X, R, t = make_scene(2, 40, seed=16)
    W = torch.eye(40, dtype=F64).expand(2, -1, -1).clone()
    W[1, 5, 5] = math.nan
    W.requires_grad_()
    res = weighted_pnp(x, X, W)
    assert res.valid.tolist() == [True, False]
    assert rotation_error_deg(res.R[:1], R[:1]).item() < 1e-6
    res.R.sum().backward()
    assert torch.equal(W.grad[1], torch.zeros_like(W.grad[1])) and torch.isfinite(W.grad).all()


def test_degenerate_warning_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(checks, "_warned", set())
    x, X, w, pose, objective = _degenerate("zero_weights")
    with caplog.at_level(logging.WARNING, logger="bpnp.nodes.pnp"):
        for _ in range(3):
            weighted_pnp(x, X, w, pose_init=pose, solver=SolverOptions(objective=objective))
    msgs = [r for r in caplog.records if "all weights zero" in r.getMessage()]
    assert len(msgs) == 1


def test_invalid_arguments():
    x, X, _, _ = make_scene(1, 8)
    with pytest.raises(ValueError):
        weighted_pnp(
            x, X, torch.ones(1, 8, 8, dtype=F64), solver=SolverOptions(robust="huber")
        )  # dense needs sparse_topk
    with pytest.raises(ValueError):
        weighted_pnp(x, X, torch.ones(1, 7, dtype=F64))
    with pytest.raises(ValueError):
        weighted_pnp(x, X, torch.ones(1, 8, dtype=F64), solver=SolverOptions(objective="euclidean"))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x, X, R, t = make_scene(2, 30, noise=0.003, seed=17)
    W = torch.rand(2, 30, 30, dtype=F64) * 0.01 + torch.eye(30, dtype=F64)
    cpu = weighted_pnp(x, X, W.clone().requires_grad_(), pose_init=(R, t))
    Wc = W.cuda().requires_grad_()
    gpu = weighted_pnp(x.cuda(), X.cuda(), Wc, pose_init=(R.cuda(), t.cuda()))
    torch.testing.assert_close(gpu.R.cpu(), cpu.R, atol=1e-10, rtol=0)
    gpu.t.sum().backward()
    assert torch.isfinite(Wc.grad).all()
    res = weighted_pnp(x.cuda(), X.cuda(), W.cuda(), ransac=RansacOptions(backend="torch"))
    assert res.valid.all() and res.R.device.type == "cuda"


def test_max_iter_zero_returns_the_initial_pose():
    x, X, R, t = make_scene(2, 20, noise=0.01, seed=18)
    R0 = axis_angle_to_matrix(torch.tensor([[0.01, 0.0, 0.0], [0.0, 0.02, 0.0]], dtype=F64)) @ R
    res = weighted_pnp(
        x, X, torch.ones(2, 20, dtype=F64), pose_init=(R0, t), solver=SolverOptions(max_iter=0)
    )
    assert res.iterations.eq(0).all()
    torch.testing.assert_close(res.R, R0, atol=0, rtol=0)
    torch.testing.assert_close(res.t, t, atol=1e-12, rtol=0)  # through the normalised frame and back
    assert not res.valid.any()  # no iteration ran: not a stationary point


@pytest.mark.parametrize(
    "objective,robust", [("angular", None), ("reprojection", "cauchy"), ("angular", "tanh")]
)
def test_converges_from_a_distant_initial_pose(objective, robust):
    x, X, R, t = make_scene(4, 60, noise=0.001, seed=20)
    g = torch.Generator().manual_seed(21)
    axis = torch.nn.functional.normalize(torch.randn(4, 3, generator=g, dtype=F64), dim=-1)
    R0 = axis_angle_to_matrix(axis * math.radians(20)) @ R
    t0 = t + torch.tensor([0.3, -0.2, 1.0], dtype=F64)
    w = torch.ones(4, 60, dtype=F64)
    opts = SolverOptions(objective=objective, robust=robust, robust_scale=0.05)
    res = weighted_pnp(x, X, w, pose_init=(R0, t0), solver=opts)
    near = weighted_pnp(x, X, w, pose_init=(R, t), solver=opts)  # the minimum next to the true pose
    assert res.valid.all() and res.converged.all()
    assert (rotation_error_deg(res.R, near.R) * math.pi / 180).max() < 1e-9
    torch.testing.assert_close(res.t, near.t, atol=1e-9, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("form", ["paired", "dense"])
def test_scene_scale_changes_nothing(dtype, form):
    # The objectives are invariant to the scene's units; the layer solves in a normalised frame, so
    # the pose (t in the scene's units), validity and gradients follow the scale exactly.
    x, X, R, t = make_scene(4, 40, noise=0.002, seed=40, dtype=dtype)
    g = torch.Generator().manual_seed(41)
    W = (torch.rand(4, 40, 40, generator=g, dtype=F64) * 0.02 + torch.eye(40, dtype=F64)).to(dtype)
    if form == "paired":
        W = W.diagonal(dim1=1, dim2=2).contiguous()
    tol = 1e-10 if dtype == F64 else 2e-4
    out = {}
    for scale in (1e-3, 1.0, 1e3):
        Ws = W.clone().requires_grad_()
        Xs = (X * scale).requires_grad_()
        res = weighted_pnp(
            x, Xs, Ws, generator=torch.Generator().manual_seed(0), ransac=RansacOptions(backend="torch")
        )
        loss = (res.R * torch.arange(9, dtype=dtype).view(3, 3)).sum() + (res.t / scale).square().sum()
        loss.backward()
        out[scale] = (res.R.detach(), res.t.detach() / scale, res.valid, Ws.grad, Xs.grad * scale)
    R1, t1, v1, gW1, gX1 = out[1.0]
    assert v1.all()
    for scale in (1e-3, 1e3):
        Rs, ts, vs, gWs, gXs = out[scale]
        assert torch.equal(vs, v1)
        torch.testing.assert_close(Rs, R1, atol=tol, rtol=0)
        torch.testing.assert_close(ts, t1, atol=tol, rtol=0)
        torch.testing.assert_close(gWs, gW1, atol=50 * tol * gW1.abs().max(), rtol=0)
        torch.testing.assert_close(gXs, gX1, atol=50 * tol * gX1.abs().max(), rtol=0)


def test_unconverged_samples_are_flagged_but_keep_their_refined_pose():
    x, X, R, t = make_scene(3, 30, noise=0.01, seed=42)
    R0 = axis_angle_to_matrix(torch.tensor([[0.3, 0.0, 0.0]], dtype=F64).expand(3, 3)) @ R
    W = torch.ones(3, 30, dtype=F64, requires_grad=True)
    res = weighted_pnp(x, X, W, pose_init=(R0, t), solver=SolverOptions(max_iter=2))
    assert not res.converged.any() and not res.valid.any() and res.refined.all()
    # two iterations from 17 degrees got closer than the start, but it is not a stationary point
    assert (rotation_error_deg(res.R, R) < rotation_error_deg(R0, R)).all()
    res.R.sum().backward()
    assert (W.grad == 0).all()
    full = weighted_pnp(x, X, W.detach(), pose_init=(R0, t))
    assert full.converged.all() and full.valid.all()


def test_pose_init_of_the_wrong_shape_is_named():
    x, X, R, t = make_scene(3, 10, seed=43)
    with pytest.raises(ValueError, match="pose_init"):
        weighted_pnp(x, X, torch.ones(3, 10, dtype=F64), pose_init=(R[:1], t[0]))
    with pytest.raises(ValueError, match="pose_init"):
        weighted_pnp(x, X, torch.ones(3, 10, dtype=F64), pose_init=R)


def _scene_with(X: torch.Tensor, seed: int):
    """Poses about 6 units in front of given points (B, n, 3), and their exact projections."""
    g = torch.Generator().manual_seed(seed)
    B = X.shape[0]
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=F64))
    t = torch.randn(B, 3, generator=g, dtype=F64) * 0.3 + torch.tensor([0.0, 0.0, 6.0], dtype=F64)
    Xc = X @ R.mT + t[:, None]
    return Xc[..., :2] / Xc[..., 2:], R, t


def test_planar_scenes_get_the_right_pose_with_the_opencv_initialisation():
    # P3P RANSAC's final fit lands on the mirrored pose of a plane in about a third of these.
    g = torch.Generator().manual_seed(44)
    X = torch.rand(40, 30, 3, generator=g, dtype=F64) * 2 - 1
    X[..., 2] = 0
    x, R, t = _scene_with(X, 45)
    res = weighted_pnp(x, X, torch.ones(40, 30, dtype=F64))
    assert res.valid.all()
    assert rotation_error_deg(res.R, R).max() < 1e-6


@pytest.mark.parametrize("objective", ["angular", "reprojection"])
def test_a_wrong_minimum_is_flagged_against_the_noise_level(objective):
    # IPPE's second pose of a plane is the mirrored local minimum, an independent way to land on it.
    g = torch.Generator().manual_seed(60)
    X = torch.rand(12, 30, 3, generator=g, dtype=F64) * 2 - 1
    X[..., 2] = 0
    x, R, t = _scene_with(X, 61)
    sigma = 1e-3
    x = x + sigma / math.sqrt(2) * torch.randn(x.shape, generator=g, dtype=F64)
    Rm, tm = [], []
    for b in range(12):
        _, rvecs, tvecs, _ = cv2.solvePnPGeneric(
            X[b].numpy(), x[b].numpy(), np.eye(3), None, flags=cv2.SOLVEPNP_IPPE
        )
        r = matrix_to_axis_angle(torch.from_numpy(cv2.Rodrigues(rvecs[0])[0])[None])[0]
        best = 1 if rotation_error_deg(axis_angle_to_matrix(r[None]), R[b : b + 1]).item() < 1 else 0
        Rm.append(torch.from_numpy(cv2.Rodrigues(rvecs[best])[0]))
        tm.append(torch.from_numpy(tvecs[best].ravel()))
    mirror = (torch.stack(Rm), torch.stack(tm))
    w = torch.ones(12, 30, dtype=F64)
    far = (
        rotation_error_deg(
            weighted_pnp(x, X, w, pose_init=mirror, solver=SolverOptions(objective=objective)).R, R
        )
        > 5
    )
    assert far.sum() >= 6  # the mirrored minimum holds the solver in these samples
    plain = weighted_pnp(x, X, w, pose_init=mirror, solver=SolverOptions(objective=objective))
    assert plain.valid[far].all()  # a stationary point: valid without a noise level
    res = weighted_pnp(
        x, X, w, pose_init=mirror, solver=SolverOptions(objective=objective, noise_level=sigma)
    )
    assert not res.valid[far].any()
    assert res.valid[~far].all()
    # at the true pose the same noise never trips the test
    right = weighted_pnp(
        x, X, w, pose_init=(R, t), solver=SolverOptions(objective=objective, noise_level=sigma)
    )
    assert right.valid.all() and rotation_error_deg(right.R, R).max() < 1.0
    with pytest.raises(ValueError, match="noise_level"):
        weighted_pnp(x, X, w, solver=SolverOptions(noise_level=-1.0))


def test_three_distinct_points_repeated_are_flagged():
    g = torch.Generator().manual_seed(46)
    X = (torch.rand(10, 3, 3, generator=g, dtype=F64) * 2 - 1).repeat(1, 4, 1)
    x, R, t = _scene_with(X, 47)
    res = weighted_pnp(x, X, torch.ones(10, 12, dtype=F64))
    assert not res.valid.any()
    # three more distinct points make the same samples well posed
    X4 = torch.cat([X, torch.rand(10, 3, 3, generator=g, dtype=F64)], dim=1)
    x4, R4, _ = _scene_with(X4, 47)
    res = weighted_pnp(x4, X4, torch.ones(10, 15, dtype=F64))
    assert res.valid.all() and rotation_error_deg(res.R, R4).max() < 1e-6


def test_distinct_points_counts_duplicates_once():
    X = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]]], dtype=F64)
    w = torch.tensor([[1.0, 1, 1, 1, 1, 1]], dtype=F64)
    assert checks.distinct_points(X, w).item() == 4
    w0 = torch.tensor([[1.0, 1, 1, 1, 0, 0]], dtype=F64)  # the zero-weight point does not count
    assert checks.distinct_points(X, w0).item() == 3


@pytest.mark.parametrize("n", [4, 5])
def test_torch_initialisation_with_fewer_than_six_pairs(n):
    x, X, R, t = make_scene(30, n, seed=48)
    res = weighted_pnp(
        x,
        X,
        torch.ones(30, n, dtype=F64),
        generator=torch.Generator().manual_seed(0),
        ransac=RansacOptions(backend="torch"),
    )
    good = res.valid & (rotation_error_deg(res.R, R) < 1e-6)
    # four points may have two exact poses; none may be wrong and still valid
    assert (good | ~res.valid).all() and good.float().mean() >= 0.9
