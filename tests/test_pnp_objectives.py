"""PnP objectives: analytic derivatives against autograd, the dense collapse against the O(mn) sum."""

import pytest
import torch

from bpnp.geometry import axis_angle_to_matrix, normalized_to_bearings
from bpnp.nodes.pnp.objectives import (
    PairedProblem,
    camera_points,
    derivatives,
    local_pose,
    local_value,
    objective_named,
)
from bpnp.nodes.pnp.robust import ROBUST_KERNELS, robust_kernel

F64 = torch.float64
B, N = 3, 12


def _pose_and_points(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=F64))
    t = torch.randn(B, 3, generator=g, dtype=F64) * 0.3 + torch.tensor([0.0, 0.0, 5.0], dtype=F64)
    X = torch.rand(B, N, 3, generator=g, dtype=F64) * 2 - 1
    x = torch.randn(B, N, 2, generator=g, dtype=F64) * 0.2
    w = torch.rand(B, N, generator=g, dtype=F64)
    return R, t, X, x, w


def _problem(objective: str, robust: str | None, seed: int = 0):
    R, t, X, x, w = _pose_and_points(seed)
    target = normalized_to_bearings(x) if objective == "angular" else x
    problem = PairedProblem(
        objective_named(objective), X, target, w, torch.zeros(B, dtype=F64), robust_kernel(robust), 0.05**2
    )
    return problem, R, t


def _autograd_hessian(problem, R, t):
    d0 = torch.zeros(B, 6, dtype=F64)
    H = torch.autograd.functional.hessian(lambda d: local_value(problem, R, t, d).sum(), d0)
    return torch.stack([H[b, :, b, :] for b in range(B)])


@pytest.mark.parametrize("robust", [None, *ROBUST_KERNELS])
@pytest.mark.parametrize("objective", ["angular", "reprojection"])
def test_exact_derivatives_match_autograd(objective, robust):
    problem, R, t = _problem(objective, robust)
    f, grad, H, _ = derivatives(problem, R, t, exact=True)
    d0 = torch.zeros(B, 6, dtype=F64, requires_grad=True)
    f_ref = local_value(problem, R, t, d0)
    (g_ref,) = torch.autograd.grad(f_ref.sum(), d0)
    torch.testing.assert_close(f, f_ref.detach(), atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(grad, g_ref, atol=1e-13, rtol=1e-10)
    torch.testing.assert_close(H, _autograd_hessian(problem, R, t), atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("objective", ["angular", "reprojection"])
def test_gauss_newton_hessian_is_weighted_jacobian_product(objective):
    problem, R, t = _problem(objective, "cauchy", seed=1)
    _, _, H, _ = derivatives(problem, R, t, exact=False)

    def residuals(d):  # e = factor / 2 |r|^2 with factor 1 (angular) or 2 (reprojection)
        X = camera_points(*local_pose(R, t, d), problem.points)
        if objective == "angular":
            return X / X.norm(dim=-1, keepdim=True) - problem.target
        return X[..., :2] / X[..., 2:] - problem.target

    J = torch.autograd.functional.jacobian(residuals, torch.zeros(B, 6, dtype=F64))  # (B,N,r,B,6)
    J = torch.stack([J[b, :, :, b, :] for b in range(B)])  # (B, N, r, 6)
    e = problem.objective.pair_errors(camera_points(R, t, problem.points), problem.target)
    factor = 1.0 if objective == "angular" else 2.0
    w_eff = factor * problem.weight * robust_kernel("cauchy").weight(e, problem.scale_sq)
    H_ref = torch.einsum("bn,bnri,bnrj->bij", w_eff, J, J)
    torch.testing.assert_close(H, H_ref, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("objective", ["angular", "reprojection"])
def test_dense_collapse_equals_sum_over_all_pairs(objective):
    R, t, X, _, _ = _pose_and_points(2)
    m = 9
    x = torch.randn(B, m, 2, dtype=F64) * 0.2
    W = torch.rand(B, m, N, dtype=F64)
    W[0, :, 3] = 0.0  # a 3D point without mass
    Xc = camera_points(R, t, X)
    # O(mn) reference: every pair's error, weighted
    if objective == "angular":
        b = normalized_to_bearings(x)
        q = Xc / Xc.norm(dim=-1, keepdim=True)
        E = 1.0 - b @ q.transpose(-1, -2)
    else:
        pi = Xc[..., :2] / Xc[..., 2:]
        E = (x[:, :, None, :] - pi[:, None, :, :]).pow(2).sum(-1)
    ref = (W * E).sum((1, 2))
    obj = objective_named(objective)
    G = W.transpose(-1, -2) @ obj.dense_features(x)
    problem = obj.collapse(X, G)
    e = obj.pair_errors(Xc, problem.target)
    torch.testing.assert_close(problem.const + (problem.weight * e).sum(-1), ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(obj.dense_value(G, Xc), ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kernel", ROBUST_KERNELS)
def test_robust_kernel_derivatives(kernel):
    b = 0.3
    k = robust_kernel(kernel)
    e = torch.linspace(0.0, 3.0, 41, dtype=F64)[1:].requires_grad_()
    rho, rho1, rho2 = k(e, b)
    (d1,) = torch.autograd.grad(rho.sum(), e, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), e)
    torch.testing.assert_close(rho1, d1.detach())
    torch.testing.assert_close(rho2, d2.detach())
    small = torch.tensor([1e-9], dtype=F64)
    torch.testing.assert_close(k.rho(small, b), small, atol=1e-15, rtol=1e-6)


def test_kernel_and_objective_names_resolve_and_unknown_names_are_errors():
    assert robust_kernel(None).identity and robust_kernel("tanh") is robust_kernel(robust_kernel("tanh"))
    assert objective_named("angular").name == "angular" and objective_named("reprojection").projective
    with pytest.raises(ValueError, match="robust must be None or one of"):
        robust_kernel("tukey")
    with pytest.raises(ValueError, match="objective must be one of"):
        objective_named("l1")
