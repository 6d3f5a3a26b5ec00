"""Host reads (device syncs) per call of the two layers, forward and backward.

Counted with :func:`bpnp.nodes.host_reads.count_host_reads` on any device; on CUDA also with
``torch.cuda.set_sync_debug_mode("warn")`` (the synchronising calls it reports). The layers read
the device a fixed number of times per call plus at most once every 10 iterations; the rows with
10 and 100 iterations show that growth.

    python scripts/count_syncs.py                 # CPU
    python scripts/count_syncs.py --device cuda
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch

from bpnp.geometry import axis_angle_to_matrix
from bpnp.nodes import SolverOptions, sinkhorn, weighted_pnp
from bpnp.nodes.host_reads import count_host_reads


def cuda_syncs(fn: Callable[[], None], device: torch.device) -> int | None:
    """Synchronising calls that CUDA's sync debug mode reports while ``fn`` runs (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def reads(fn: Callable[[], None]) -> int:
    with count_host_reads() as counter:
        fn()
    return counter.n


def sinkhorn_cases(B: int, n: int, device: torch.device):
    g = torch.Generator(device=device).manual_seed(0)
    M = torch.rand(B, n, n, generator=g, device=device)
    for tol, iters in ((0.0, 10), (0.0, 100), (1e-6, 100)):

        def forward(tol=tol, iters=iters):
            sinkhorn(M, gamma=10.0, max_iter=iters, tol=tol)

        yield f"sinkhorn forward, tol={tol:g}, {iters} iterations", forward
    Mg = M.clone().requires_grad_()
    for backward_kind, direct in (("direct", n), ("conjugate gradients", 0)):
        P = sinkhorn(Mg, gamma=10.0, max_iter=100, tol=0.0)
        V = torch.randn(P.shape, generator=g, device=device)

        def backward(P=P, V=V, direct=direct):
            from bpnp.nodes.sinkhorn.backward import sinkhorn_vjp

            sinkhorn_vjp(P.detach(), V, 10.0, direct_max=direct)

        yield f"sinkhorn backward ({backward_kind})", backward


def pnp_cases(B: int, k: int, device: torch.device):
    g = torch.Generator(device=device).manual_seed(1)
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, device=device))
    t = torch.tensor([0.0, 0.0, 6.0], device=device) + 0.1 * torch.randn(B, 3, generator=g, device=device)
    X = torch.rand(B, k, 3, generator=g, device=device) * 2 - 1
    Xc = X @ R.mT + t[:, None]
    x = Xc[..., :2] / Xc[..., 2:] + 0.002 * torch.randn(B, k, 2, generator=g, device=device)
    w = torch.rand(B, k, generator=g, device=device).requires_grad_()
    R0 = axis_angle_to_matrix(0.05 * torch.randn(B, 3, generator=g, device=device)) @ R
    for iters in (10, 100):

        def forward(iters=iters):
            with torch.no_grad():
                weighted_pnp(x, X, w, pose_init=(R0, t), solver=SolverOptions(max_iter=iters, tol=0.0))

        yield f"weighted_pnp forward from a pose, {iters} iterations", forward
    res = weighted_pnp(x, X, w, pose_init=(R0, t), solver=SolverOptions(max_iter=30))

    def backward():
        (res.R.sum() + res.t.sum()).backward(retain_graph=True)

    yield "weighted_pnp backward", backward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--points", type=int, default=500, help="m = n of the Sinkhorn problems")
    p.add_argument("--pairs", type=int, default=200, help="pairs of the PnP problems")
    args = p.parse_args()
    device = torch.device(args.device)
    n, k = args.points, args.pairs
    print(f"device {device}, B = {args.batch}, Sinkhorn {n} x {n}, PnP {k} pairs")
    print("| call | host reads | CUDA syncs (sync debug mode) |")
    print("|---|---|---|")
    cases = [*sinkhorn_cases(args.batch, args.points, device), *pnp_cases(args.batch, args.pairs, device)]
    for name, fn in cases:
        fn()  # warm-up: first calls may read the device for one-off checks
        n = reads(fn)
        syncs = cuda_syncs(fn, device)
        print(f"| {name} | {n} | {'-' if syncs is None else syncs} |")


if __name__ == "__main__":
    main()
