"""Sinkhorn on extreme and degenerate input: a correct plan, or a ValueError that names the argument."""

import numpy as np
import ot
import pytest
import torch

from bpnp.nodes import sinkhorn


def gen(seed):
    return torch.Generator().manual_seed(seed)


def emd(M: torch.Tensor) -> np.ndarray:
    """Exact (unregularised) transport plan of one cost matrix with uniform marginals: the limit of the
    entropic plan when gamma times the cost gaps is huge."""
    m, n = M.shape
    return ot.emd(np.full(m, 1 / m), np.full(n, 1 / n), M.double().numpy())


def test_a_batch_mate_with_a_huge_span_leaves_a_normal_plan_unchanged():
    M0 = torch.rand(1, 36, 15, generator=gen(0))
    huge = torch.rand(1, 36, 15, generator=gen(1)) * 1e10
    alone = sinkhorn(M0, gamma=1.0)
    batched = sinkhorn(torch.cat([M0, huge]), gamma=1.0, max_iter=1000)
    assert (batched[0] - alone[0]).abs().sum() <= 1e-6
    reference = sinkhorn(M0.double(), gamma=1.0, tol=1e-12, max_iter=5000)
    assert (batched[0].double() - reference[0]).abs().sum() <= 1e-6
    # the huge sample is the exact transport plan
    assert np.abs(batched[1].double().numpy() - emd(huge[0])).sum() <= 1e-5


@pytest.mark.parametrize(
    ("dtype", "scale"), [(torch.float32, 1e4), (torch.float32, 1e10), (torch.float64, 1e10)]
)
def test_huge_finite_costs_give_the_exact_transport_plan(dtype, scale):
    # 1e37 * gamma overflows float32: solved in float64 and returned in float32
    M = torch.rand(1, 20, 30, generator=gen(2), dtype=torch.float64).to(dtype) * scale
    P = sinkhorn(M, gamma=10.0)
    assert P.dtype == dtype
    torch.testing.assert_close(P.sum(), torch.ones((), dtype=dtype))
    assert np.abs(P[0].double().numpy() - emd(M[0])).sum() <= 1e-5


@pytest.mark.parametrize(
    ("dtype", "scale"), [(torch.float64, 1e18), (torch.float32, 1e16), (torch.float32, 1e37)]
)
def test_a_span_beyond_float64_is_a_named_error(dtype, scale):
    # 1e37 * gamma also overflows float32
    M = torch.rand(2, 20, 30, generator=gen(3), dtype=dtype)
    M[1] *= scale
    with pytest.raises(ValueError, match=r"sample 1 .*gamma \* cost span"):
        sinkhorn(M, gamma=10.0)


def test_an_unaffordable_dustbin_is_a_named_error_or_sends_the_dustbin_to_its_corner():
    # With m = n and a dustbin dearer than any pair, the real block is the plain plan at half the mass.
    M = torch.rand(1, 3, 3, generator=gen(4))
    for z in (1e3, 1e6, 1e10):
        P = sinkhorn(M, dustbin=z, tol=1e-9, max_iter=1000)
        torch.testing.assert_close(P[0, :3, :3], 0.5 * sinkhorn(M, tol=1e-9)[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(P[0, 3, 3], torch.tensor(0.5), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="dustbin included"):
        sinkhorn(M, dustbin=1e30)


def test_a_constant_huge_cost_is_uniform_and_leaves_batch_mates_alone():
    M = torch.rand(1, 3, 3, generator=gen(5))
    P = sinkhorn(torch.cat([M, torch.full((1, 3, 3), 1e20)]))
    torch.testing.assert_close(P[0], sinkhorn(M)[0])
    torch.testing.assert_close(P[1], torch.full((3, 3), 1 / 9))


@pytest.mark.parametrize("gamma", [float("nan"), float("inf"), 0.0, -1.0])
def test_gamma_must_be_finite_and_positive(gamma):
    with pytest.raises(ValueError, match="gamma"):
        sinkhorn(torch.rand(1, 3, 3), gamma=gamma)


@pytest.mark.parametrize("name", ["row_mask", "col_mask"])
def test_a_mask_of_the_wrong_shape_is_named(name):
    with pytest.raises(
        ValueError, match=rf"'{name}' must have shape \(2, 3\)|'{name}' must have shape \(2, 4\)"
    ):
        sinkhorn(torch.rand(2, 3, 4), **{name: torch.ones(2, 5, dtype=torch.bool)})


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0)])
@pytest.mark.parametrize("backward", ["implicit", "unroll"])
def test_empty_problems_transport_nothing(shape, backward):
    M = torch.rand(shape, requires_grad=True)
    P = sinkhorn(M, backward=backward)
    assert P.shape == shape and (P == 0).all()
    P.sum().backward()
    assert (M.grad == 0).all()


def test_unrolled_plan_is_exact_under_a_large_float32_offset():
    # rand + 1e7 in float32 is a grid of integers: the plan is the one of that grid minus its offset.
    M = (torch.rand(1, 20, 30, generator=gen(6)) + 1e7).requires_grad_()
    P = sinkhorn(M, backward="unroll", max_iter=300)
    reference = sinkhorn((M.detach() - 1e7).double(), tol=1e-12, max_iter=5000)
    assert (P.detach().double() - reference).abs().sum() <= 1e-5
    (g,) = torch.autograd.grad((P * P).sum(), M)
    assert torch.isfinite(g).all()


def test_unrolled_gradient_is_finite_with_an_empty_sample_and_a_learnable_dustbin():
    z = torch.tensor(1.0, requires_grad=True)
    M = torch.rand(2, 4, 5, generator=gen(7)).requires_grad_()
    rows = torch.ones(2, 4, dtype=torch.bool)
    rows[1] = False
    P = sinkhorn(M, backward="unroll", row_mask=rows, dustbin=z)
    (P[:, :, -1].sum() + (P * P).sum()).backward()
    assert torch.isfinite(M.grad).all() and (M.grad[1] == 0).all()
    assert torch.isfinite(z.grad) and z.grad != 0
    # the same gradient as the implicit backward on the non-empty sample
    z2 = torch.tensor(1.0, requires_grad=True)
    M2 = M.detach()[:1].clone().requires_grad_()
    P2 = sinkhorn(M2, dustbin=z2, tol=1e-10, max_iter=2000)
    (P2[:, :, -1].sum() + (P2 * P2).sum()).backward()
    torch.testing.assert_close(M.grad[:1], M2.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backward", ["implicit", "unroll"])
def test_non_convergence_is_reported(backward):
    M = torch.rand(2, 30, 30, generator=gen(8))
    P, info = sinkhorn(M, gamma=1e3, backward=backward, return_info=True)
    row_error = (P.sum(-1) - 1 / 30).abs().sum(-1)
    torch.testing.assert_close(info.error, row_error, atol=1e-6, rtol=1e-3)
    assert not info.converged.any() and (info.iterations == 100).all()
    P, info = sinkhorn(M[:1], gamma=10.0, backward=backward, return_info=True)
    assert info.converged.all() and info.error.item() <= 1e-6 and info.iterations.item() < 100
