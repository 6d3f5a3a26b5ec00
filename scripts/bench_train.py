"""Training throughput on this machine and where a step's time goes.

Runs training steps of the network at batch 16 with 1000 points per set (BPnPNet's setting) on the
built-in synthetic data and prints samples per second and the share of step time spent in data
loading, encoders, Sinkhorn, RANSAC initialisation, the PnP layer, losses, backward and optimizer.

    python scripts/bench_train.py                       # correspondence loss only
    python scripts/bench_train.py --pose                # with the pose stage and pose losses
    python scripts/bench_train.py --points 64 --knn 10 --blocks 4   # the quick-start setting
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader

from bpnp.data import ObjectProtocol, SyntheticDataset, collate
from bpnp.models import BlindPnPNet, NetConfig
from bpnp.nodes import SolverOptions, weighted_pnp
from bpnp.training.losses import correspondence_loss, rotation_loss, translation_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--knn", type=int, default=0)
    p.add_argument("--sinkhorn-iters", type=int, default=100)
    p.add_argument("--pose", action="store_true", help="include RANSAC, the PnP layer and the pose losses")
    p.add_argument("--ransac", default="auto", choices=["auto", "opencv", "torch"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    cfg = NetConfig(
        knn=args.knn, blocks=args.blocks, sinkhorn_iters=args.sinkhorn_iters, ransac={"backend": args.ransac}
    )
    net = BlindPnPNet(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-3)
    data = SyntheticDataset(
        num_samples=args.batch * (args.steps + 2), protocol=ObjectProtocol(num_points=args.points)
    )
    loader = iter(DataLoader(data, batch_size=args.batch, collate_fn=collate, num_workers=args.workers))
    times: dict[str, float] = defaultdict(float)

    @contextmanager
    def timed(name: str):
        t0 = time.perf_counter()
        yield
        times[name] += time.perf_counter() - t0

    for step in range(args.steps + 1):
        if step == 1:  # the first step warms up allocators and workers
            times.clear()
            start = time.perf_counter()
        with timed("data loading"):
            b = next(loader)
        with timed("encoders"):
            M, x2d = net.match_cost(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d)
        with timed("sinkhorn"):
            P = net.sinkhorn(M, b.mask2d, b.mask3d)
        with timed("losses"):
            loss = correspondence_loss(P, b.match)
        if args.pose:
            with timed("ransac init"):
                # max_iter=0: the layer returns its RANSAC initial pose.
                init = weighted_pnp(
                    x2d,
                    b.points3d,
                    P.detach(),
                    solver=SolverOptions(max_iter=0),
                    ransac=net.ransac_options(args.points),
                )
                R0, t0 = init.R_init, init.t_init
            with timed("pnp layer"):
                res = weighted_pnp(
                    x2d, b.points3d, P, pose_init=(R0, t0), solver=SolverOptions(max_iter=cfg.pnp.max_iter)
                )
            with timed("losses"):
                loss = loss + (rotation_loss(res.R, b.R) + translation_loss(res.t, b.t)).mean()
        opt.zero_grad()
        with timed("backward"):
            loss.backward()
        with timed("optimizer"):
            opt.step()
    total = time.perf_counter() - start
    print(
        f"batch {args.batch}, {args.points} points per set, blocks {args.blocks}, knn {args.knn}, "
        f"pose stage {'on' if args.pose else 'off'}, {torch.get_num_threads()} threads"
    )
    print(
        f"{args.steps} steps in {total:.1f} s: {total / args.steps:.3f} s per step, "
        f"{args.steps * args.batch / total:.1f} samples/s\n"
    )
    print("| stage | s per step | share |\n| --- | --- | --- |")
    for name, t in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {t / args.steps:.3f} | {100 * t / total:.0f} % |")


if __name__ == "__main__":
    main()
