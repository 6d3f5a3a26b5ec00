import importlib.util

import numpy as np
import ot
import pytest
import torch
from training_utils import ROOT

from bpnp.nodes import Sinkhorn, sinkhorn
from bpnp.nodes.sinkhorn.backward import sinkhorn_vjp

DT = torch.float64


def random_problem(B, m, n, seed=0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    M = torch.rand(B, m, n, generator=g, dtype=dtype) * 2
    r = torch.rand(B, m, generator=g, dtype=dtype) + 0.2
    c = torch.rand(B, n, generator=g, dtype=dtype) + 0.2
    return M, r / r.sum(-1, keepdim=True), c / c.sum(-1, keepdim=True)


def exact(**kw):
    return dict(max_iter=20000, tol=1e-13, **kw)


@pytest.mark.parametrize("gamma", [1.0, 10.0, 30.0])
@pytest.mark.parametrize("shape", [(5, 9), (12, 4)])
def test_forward_matches_pot_log_domain(gamma, shape):
    M, r, c = random_problem(3, *shape, seed=int(gamma))
    P = sinkhorn(M, r, c, gamma=gamma, **exact())
    for b in range(3):
        ref = ot.sinkhorn(
            r[b].numpy(),
            c[b].numpy(),
            M[b].numpy(),
            1.0 / gamma,
            method="sinkhorn_log",
            numItermax=20000,
            stopThr=1e-14,
        )
        np.testing.assert_allclose(P[b].numpy(), ref, atol=1e-8, rtol=0)
    torch.testing.assert_close(P.sum(-1), r, atol=1e-12, rtol=0)
    torch.testing.assert_close(P.sum(-2), c, atol=1e-12, rtol=0)


def test_marginals_are_normalised_and_uniform_by_default():
    M, r, c = random_problem(2, 6, 8)
    P = sinkhorn(M, 3 * r, 5 * c, **exact())
    torch.testing.assert_close(P, sinkhorn(M, r, c, **exact()))
    P = sinkhorn(M, **exact())
    torch.testing.assert_close(P.sum(-1), torch.full((2, 6), 1 / 6, dtype=DT))
    torch.testing.assert_close(P.sum(-2), torch.full((2, 8), 1 / 8, dtype=DT))


def test_tol_zero_runs_exactly_max_iter():
    from bpnp.nodes.sinkhorn.solver import solve_scaling

    M, r, c = random_problem(2, 5, 6)
    _, info = solve_scaling(10 * M, r, c, max_iter=37, tol=0.0)
    assert info.iterations.tolist() == [37, 37]
    _, info = solve_scaling(10 * M, r, c, max_iter=1000, tol=1e-9)
    assert (info.iterations < 1000).all() and (info.error <= 1e-9).all()


def test_per_sample_convergence():
    from bpnp.nodes.sinkhorn.solver import solve_scaling

    M, r, c = random_problem(2, 20, 20)
    M[1] *= 20  # much sharper plan: converges more slowly
    _, info = solve_scaling(M, r, c, max_iter=5000, tol=1e-10)
    assert info.iterations[0] < info.iterations[1]


def padded_problem(seed=0):
    """Three samples padded differently: rows only, columns only, both (the last with a gap)."""
    M, r, c = random_problem(3, 5, 6, seed=seed)
    row_mask = torch.ones(3, 5, dtype=torch.bool)
    col_mask = torch.ones(3, 6, dtype=torch.bool)
    row_mask[0, 3:] = False
    col_mask[1, 4:] = False
    row_mask[2, 3:] = False
    col_mask[2, :2] = False
    return M, r, c, row_mask, col_mask


def test_padding_equals_cropped_problem():
    M, r, c, rm, cm = padded_problem()
    M = M.clone()
    M[~(rm[:, :, None] & cm[:, None, :])] = float("nan")  # padded entries are ignored
    P = sinkhorn(M, r, c, row_mask=rm, col_mask=cm, **exact())
    assert torch.isfinite(P).all()
    for b in range(3):
        rows, cols = rm[b].nonzero().squeeze(1), cm[b].nonzero().squeeze(1)
        sub = sinkhorn(M[b][rows][:, cols][None], r[b, rows][None], c[b, cols][None], **exact())[0]
        torch.testing.assert_close(P[b][rows][:, cols], sub)
        assert P[b].sum() == pytest.approx(1.0)
        assert (P[b][~rm[b]] == 0).all() and (P[b][:, ~cm[b]] == 0).all()


@pytest.mark.parametrize("gamma", [1.0, 10.0])
@pytest.mark.parametrize("shape", [(5, 5), (4, 7), (7, 4)])
def test_gradcheck_implicit(gamma, shape):
    M, r, c = random_problem(2, *shape, seed=3)
    inputs = (M.requires_grad_(), r.requires_grad_(), c.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda M, r, c: sinkhorn(M, r, c, gamma=gamma, **exact()), inputs, atol=1e-6
    )


@pytest.mark.parametrize("gamma", [1.0, 10.0])
def test_gradcheck_implicit_with_masks(gamma):
    M, r, c, rm, cm = padded_problem(seed=4)
    inputs = (M.requires_grad_(), r.requires_grad_(), c.requires_grad_())

    def f(M, r, c):
        return sinkhorn(M, r, c, gamma=gamma, row_mask=rm, col_mask=cm, **exact())

    assert torch.autograd.gradcheck(f, inputs, atol=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 10.0])
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_dustbin(gamma, masked):
    M, _, _, rm, cm = padded_problem(seed=5)
    if not masked:
        rm, cm = None, None
    z = torch.tensor(0.7, dtype=DT, requires_grad=True)

    def f(M, z):
        return sinkhorn(M, gamma=gamma, dustbin=z, row_mask=rm, col_mask=cm, **exact())

    assert torch.autograd.gradcheck(f, (M.requires_grad_(), z), atol=1e-6)
    P = f(M, z)
    assert P.shape == (3, 6, 7)
    # SuperGlue marginals: each real row 1/(m+n), the dustbin row n/(m+n), m and n counting real points
    m, n = (3, 4) if masked else (5, 6)
    torch.testing.assert_close(P[2, :m].sum(-1), torch.full((m,), 1 / (m + n), dtype=DT))
    torch.testing.assert_close(P[2, -1].sum(), torch.tensor(n / (m + n), dtype=DT))


@pytest.mark.parametrize("shape", [(6, 6), (5, 9), (9, 5)])
def test_implicit_equals_unrolled(shape):
    M, r, c = random_problem(2, *shape, seed=7)
    V = torch.randn(2, *shape, dtype=DT)
    grads = []
    for mode in ("implicit", "unroll"):
        x = [t.clone().requires_grad_() for t in (M, r, c)]
        P = sinkhorn(*x, gamma=10.0, backward=mode, max_iter=5000, tol=1e-15)
        grads.append(torch.autograd.grad((P * V).sum(), x))
    for gi, gu in zip(*grads, strict=True):
        # r and c gradients are defined up to the gauge constant removed by the normalisation.
        assert (gi - gu).norm() <= 1e-7 * gu.norm()


def test_conjugate_gradient_path_matches_direct():
    M, _, _ = random_problem(2, 40, 60, seed=8)
    P = sinkhorn(M, **exact())
    V = torch.randn_like(P)
    direct = sinkhorn_vjp(P, V, 10.0, direct_max=10_000)
    cg = sinkhorn_vjp(P, V, 10.0, direct_max=8, cg_tol=1e-13)
    for a, b in zip(direct, cg, strict=True):
        assert (a - b).norm() <= 1e-9 * a.norm()
    # transposed orientation
    cg_t = sinkhorn_vjp(
        P.transpose(1, 2).contiguous(), V.transpose(1, 2).contiguous(), 10.0, direct_max=8, cg_tol=1e-13
    )
    assert (cg_t[0].transpose(1, 2) - direct[0]).norm() <= 1e-9 * direct[0].norm()


@pytest.mark.parametrize("shape", [(30, 30), (24, 40), (40, 24)])
def test_backward_matches_the_benchmark_anchor_block_inverse(shape):
    """The benchmark's anchor fixes the gauge by dropping the first row constraint and factors the
    (m-1)^2 Schur complement; ours regularises the full one (or runs CG): the same gradient."""
    spec = importlib.util.spec_from_file_location("bench_sinkhorn", ROOT / "scripts" / "bench_sinkhorn.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    M, _, _ = random_problem(3, *shape, seed=11)
    P = sinkhorn(M, **exact())
    V = torch.randn_like(P)
    anchor = bench.anchor_block_backward(P, V, 10.0)
    for direct_max in (10_000, 8):
        ours = sinkhorn_vjp(P, V, 10.0, direct_max=direct_max, cg_tol=1e-13)[0]
        assert (ours - anchor).norm() <= 1e-8 * anchor.norm()


@pytest.mark.parametrize("shape", [(48, 48), (40, 56), (56, 40)])
def test_float32_gradient_on_a_sharp_plan_matches_float64(shape):
    # A trained network's plans put nearly all their mass on the true matches (and the dustbin); there
    # lambda + mu cancels V to a few digits and the Schur complement is ill-conditioned.
    m, n = shape
    g = torch.Generator().manual_seed(11)
    M = torch.rand(2, m, n, generator=g, dtype=DT) * 0.5 + 0.5
    k = min(m, n)
    rows = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(2)])
    cols = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(2)])
    b = torch.arange(2)[:, None]
    M[b, rows, cols] = torch.rand(2, k, generator=g, dtype=DT) * 0.1
    # Unmatched points go to a dustbin of cost 0.3 (lower than every wrong pair).
    P = sinkhorn(M, gamma=20.0, max_iter=5000, tol=1e-12, dustbin=0.3 if m != n else None)
    sharp = P[b, rows, cols].sum() + (P[:, -1, :].sum() + P[:, :, -1].sum() if m != n else 0)
    assert sharp >= 0.99 * P.sum()
    V = torch.randn(P.shape, generator=g, dtype=DT).float()
    P32 = P.float()
    ref = sinkhorn_vjp(P32.double(), V.double(), 20.0)
    got = sinkhorn_vjp(P32, V, 20.0)
    for a, b32 in zip(ref, got, strict=True):
        assert b32.dtype == torch.float32
        assert (b32.double() - a).norm() <= 1e-5 * a.norm()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_gamma_is_finite_and_meets_marginals(dtype):
    M, r, c = random_problem(3, 12, 10, seed=9, dtype=dtype)
    for gamma, scale in [(1000.0, 1.0), (1.0e4, 1.0), (10.0, 1000.0)]:
        Mq = (M * scale).requires_grad_()
        P = sinkhorn(Mq, r, c, gamma=gamma, max_iter=3000, tol=1e-4)
        assert torch.isfinite(P).all()
        torch.testing.assert_close(P.sum(-2), c, atol=1e-5, rtol=0)
        # columns are exact after every iteration; rows within 1e-3 in L1 (Sinkhorn slows at huge gamma)
        assert (P.sum(-1) - r).abs().sum(-1).max() <= 1e-3
        (g,) = torch.autograd.grad((P * torch.randn_like(P)).sum(), Mq)
        assert torch.isfinite(g).all()


def test_fully_padded_sample_does_not_disturb_others():
    M, r, c = random_problem(3, 8, 9, seed=10)
    rm = torch.ones(3, 8, dtype=torch.bool)
    rm[1] = False
    Mq = M.clone().requires_grad_()
    P = sinkhorn(Mq, r, c, gamma=1000.0, row_mask=rm, max_iter=300, tol=1e-9)
    assert (P[1] == 0).all() and torch.isfinite(P).all()
    alone = sinkhorn(M[[0, 2]], r[[0, 2]], c[[0, 2]], gamma=1000.0, max_iter=300, tol=1e-9)
    torch.testing.assert_close(P[[0, 2]], alone)
    (g,) = torch.autograd.grad(P.sum() + (P * P).sum(), Mq)
    assert torch.isfinite(g).all() and (g[1] == 0).all()


def test_module_learns_dustbin_and_float32_runs_in_no_grad_and_inference():
    layer = Sinkhorn(gamma=10.0, dustbin_init=1.0)
    M = torch.rand(2, 5, 6)
    P = layer(M)
    assert P.shape == (2, 6, 7) and P.dtype == torch.float32
    P[:, -1, :].sum().backward()
    assert layer.dustbin.grad is not None and torch.isfinite(layer.dustbin.grad)
    with torch.no_grad():
        assert torch.isfinite(layer(M)).all()
    with torch.inference_mode():
        assert torch.isfinite(layer(M)).all()


def test_bad_input_is_named():
    M = torch.rand(1, 3, 3)
    M[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="'M'"):
        sinkhorn(M)
    with pytest.raises(ValueError, match="'r'"):
        sinkhorn(torch.rand(1, 3, 3), r=-torch.ones(1, 3))
    with pytest.raises(ValueError, match="'r'"):
        sinkhorn(torch.rand(1, 3, 3), r=torch.ones(1, 4))
    with pytest.raises(ValueError, match="backward"):
        sinkhorn(torch.rand(1, 3, 3), backward="magic")
