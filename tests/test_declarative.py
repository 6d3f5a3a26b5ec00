"""The declarative-node contract (bpnp/nodes/declarative.py), checked on a node with a closed form and
on both layers: finite-difference gradients, a stationary solver output, and the same answer under
``no_grad`` and ``inference_mode``."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from bpnp.geometry import axis_angle_to_matrix
from bpnp.nodes.declarative import DeclarativeNode, declarative
from bpnp.nodes.pnp.layer import PnPNode, _Config
from bpnp.nodes.pnp.objectives import REPROJECTION, local_pose
from bpnp.nodes.pnp.robust import IDENTITY
from bpnp.nodes.sinkhorn import SinkhornNode

F64 = torch.float64


class WeightedMean(DeclarativeNode):
    """``y = argmin_u sum_k w_k ||u - a_k||^2 + 0.5 ||u||^2``: closed form ``sum w a / (sum w + 0.5)``;
    its backward is the generic implicit VJP (Hessian by autograd)."""

    def solve(self, a, w):
        y = (w[..., None] * a).sum(1) / (w.sum(1, keepdim=True) + 0.5)
        return y, (), (a, w, y)

    def objective(self, a, w, y):
        return (w * (y[:, None] - a).square().sum(-1)).sum(-1) + 0.5 * y.square().sum(-1)


def sinkhorn_case():
    g = torch.Generator().manual_seed(0)
    M = torch.rand(2, 4, 5, generator=g, dtype=F64)
    r = torch.full((2, 4), 1 / 4, dtype=F64)
    c = torch.full((2, 5), 1 / 5, dtype=F64)
    return SinkhornNode(2.0, 5000, 1e-13), (M, r, c)


def pnp_case(dense: bool):
    g = torch.Generator().manual_seed(1)
    R = axis_angle_to_matrix(torch.tensor([[0.2, -0.1, 0.3], [-0.3, 0.2, 0.1]], dtype=F64))
    t = torch.tensor([[0.1, -0.2, 5.0], [0.0, 0.1, 6.0]], dtype=F64)
    X = torch.rand(2, 8, 3, generator=g, dtype=F64) * 2 - 1
    Xc = X @ R.mT + t[:, None]
    x = Xc[..., :2] / Xc[..., 2:] + 0.003 * torch.randn(2, 8, 2, generator=g, dtype=F64)
    W = torch.eye(8, dtype=F64).expand(2, 8, 8) + 0.05 * torch.rand(2, 8, 8, generator=g, dtype=F64)
    w = W if dense else W.diagonal(dim1=1, dim2=2).contiguous()
    cfg = _Config(dense, REPROJECTION, IDENTITY, 1e-4, 50, None)
    return PnPNode(cfg), (x, X, w, R, t, torch.ones(2, dtype=torch.bool))


CASES = {"weighted mean": None, "sinkhorn": sinkhorn_case, "pnp dense": lambda: pnp_case(True),
         "pnp paired": lambda: pnp_case(False)}  # fmt: skip


def case(name):
    if name == "weighted mean":
        g = torch.Generator().manual_seed(2)
        return WeightedMean(), (
            torch.randn(3, 5, 2, generator=g, dtype=F64),
            torch.rand(3, 5, generator=g, dtype=F64),
        )
    return CASES[name]()


def differentiable(name, x):
    """Indices of the inputs to differentiate (PnP: 2D points, 3D points, weights)."""
    return [0, 1, 2] if name.startswith("pnp") else list(range(len(x)))


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_finite_differences(name):
    node, x = case(name)
    idx = differentiable(name, x)

    def f(*free):
        full = list(x)
        for i, v in zip(idx, free, strict=True):
            full[i] = v
        out = declarative(node, *full)
        n_y = 3 if name.startswith("pnp") else 1
        return out[:n_y]

    free = [x[i].detach().clone().requires_grad_() for i in idx]
    assert gradcheck(f, free, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_the_generic_backward_equals_the_closed_form():
    node, (a, w) = case("weighted mean")
    a, w = a.requires_grad_(), w.requires_grad_()
    (y,) = declarative(node, a, w)
    V = torch.randn_like(y)
    ga, gw = torch.autograd.grad((y * V).sum(), (a, w))
    closed = (w[..., None] * a).sum(1) / (w.sum(1, keepdim=True) + 0.5)  # autograd through the formula
    ea, ew = torch.autograd.grad((closed * V).sum(), (a, w))
    torch.testing.assert_close(ga, ea)
    torch.testing.assert_close(gw, ew)


@pytest.mark.parametrize("name", list(CASES))
def test_the_solver_output_is_stationary(name):
    node, x = case(name)
    y, *_ = declarative(node, *x)
    if name == "sinkhorn":
        # under the marginal constraints: the objective's gradient is f_i + g_j, so it vanishes once
        # its row and column means are removed
        P = y.detach().requires_grad_()
        (g,) = torch.autograd.grad(node.objective(*x, y=P).sum(), P)
        centred = g - g.mean(-1, keepdim=True) - g.mean(-2, keepdim=True) + g.mean((-2, -1), keepdim=True)
        assert centred.abs().max() < 1e-8 * g.abs().max()
    elif name.startswith("pnp"):
        R, t = declarative(node, *x)[:2]
        d = torch.zeros(2, 6, dtype=F64, requires_grad=True)
        (g,) = torch.autograd.grad(node.objective(*x, y=local_pose(R.detach(), t.detach(), d)).sum(), d)
        assert g.abs().max() < 1e-9
    else:
        yd = y.detach().requires_grad_()
        (g,) = torch.autograd.grad(node.objective(*x, y=yd).sum(), yd)
        assert g.abs().max() < 1e-12


@pytest.mark.parametrize("name", list(CASES))
def test_no_grad_and_inference_mode_give_the_same_answer(name):
    node, x = case(name)
    reference = declarative(node, *[v.detach().clone().requires_grad_(v.is_floating_point()) for v in x])
    with torch.no_grad():
        quiet = declarative(node, *x)
    with torch.inference_mode():
        inference = declarative(node, *x)
    for a, b, c in zip(reference, quiet, inference, strict=True):
        torch.testing.assert_close(a.detach(), b)
        torch.testing.assert_close(a.detach(), c)
