"""Host round trips of the layers' iterations, counted on the CPU (:mod:`bpnp.nodes.host_reads`):
they must not grow with the iterations faster than one per 10 (``scripts/count_syncs.py`` prints the
counts, and on CUDA also those of ``torch.cuda.set_sync_debug_mode``)."""

import pytest
import torch

from bpnp.geometry import axis_angle_to_matrix
from bpnp.nodes import sinkhorn
from bpnp.nodes.host_reads import count_host_reads
from bpnp.nodes.pnp.objectives import REPROJECTION, PairedProblem
from bpnp.nodes.pnp.solver import levenberg_marquardt
from bpnp.nodes.sinkhorn.backward import sinkhorn_vjp

F64 = torch.float64


@pytest.fixture
def reads():
    with count_host_reads() as counter:
        yield counter


def test_the_counter_sees_each_kind_of_read(reads):
    x = torch.ones(3)
    bool(x.any()), int(x[0]), float(x[0]), x[0].item(), x.tolist(), x.nonzero(), torch.nonzero(x), x.numpy()
    assert reads.n == 8


def test_the_counter_restores_torch():
    before = torch.Tensor.item
    with count_host_reads() as counter:
        torch.ones(1).item()
    torch.ones(1).item()
    assert counter.n == 1 and torch.Tensor.item is before


def _sinkhorn_reads(reads, max_iter: int, tol: float) -> int:
    M = torch.rand(2, 60, 70, generator=torch.Generator().manual_seed(0), dtype=F64)
    before = reads.n
    sinkhorn(M, gamma=150.0, max_iter=max_iter, tol=tol)
    return reads.n - before


@pytest.mark.parametrize("tol", [0.0, 1e-300])
def test_sinkhorn_forward_reads_the_device_at_most_once_every_10_iterations(reads, tol):
    # 1e-300 is not reached in 200 iterations at gamma 150 (scaled span under ANNEAL_SPAN: one stage).
    few, many = _sinkhorn_reads(reads, 20, tol), _sinkhorn_reads(reads, 200, tol)
    assert many - few <= (200 - 20) // 10
    assert few > 0  # the counter is in the path


def test_sinkhorn_backward_conjugate_gradients_read_at_most_once_every_10_iterations(reads):
    g = torch.Generator().manual_seed(1)
    P = torch.rand(2, 50, 60, generator=g, dtype=F64)
    P = P / P.sum((1, 2), keepdim=True)
    V = torch.randn(2, 50, 60, generator=g, dtype=F64)

    def count(iters: int) -> int:
        before = reads.n
        # direct_max 0 forces the iterative path; a negative tolerance is never met (0 is: CG can reach
        # an exact zero residual), so all iterations run
        sinkhorn_vjp(P, V, 10.0, direct_max=0, cg_tol=-1.0, cg_max_iter=iters)
        return reads.n - before

    few, many = count(20), count(200)
    assert many - few <= (200 - 20) // 10


def test_pose_solver_reads_the_device_once_every_check_every_iterations(reads):
    g = torch.Generator().manual_seed(2)
    B, k = 3, 40
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=F64))
    t = torch.tensor([0.0, 0.0, 5.0], dtype=F64) + 0.1 * torch.randn(B, 3, generator=g, dtype=F64)
    X = torch.rand(B, k, 3, generator=g, dtype=F64) * 2 - 1
    Xc = X @ R.mT + t[:, None]
    x = Xc[..., :2] / Xc[..., 2:] + 0.02 * torch.randn(B, k, 2, generator=g, dtype=F64)
    problem = PairedProblem(REPROJECTION, X, x, torch.ones(B, k, dtype=F64), torch.zeros(B, dtype=F64))
    R0 = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=F64) * 0.3) @ R
    active = torch.ones(B, dtype=torch.bool)

    def count(iters: int, check_every: int) -> tuple[int, torch.Tensor]:
        before = reads.n
        # tol 0: no step is small enough, so every sample runs to its budget
        sol = levenberg_marquardt(problem, R0, t, active, iters, tol=0.0, check_every=check_every)
        return reads.n - before, sol.R

    few, R_few = count(10, 10)
    many, R_many = count(100, 10)
    assert many - few <= 100 // 10  # one read per block of 10 iterations begun
    every, R_every = count(100, 1)
    assert every - few >= 90  # one per iteration when asked: the counter sees the solver's reads
    torch.testing.assert_close(R_many, R_every, atol=0, rtol=0)  # the interval changes no result
