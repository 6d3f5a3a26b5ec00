"""Accuracy and speed of the coarse view search alone (no network) on the learning benchmark's
protocol: share of test problems whose searched rotation is within 10, 20 and 30 degrees of the
camera's, and milliseconds per problem, for a few refinement sizes and outlier rates.

    python scripts/bench_view_search.py                      # 160 problems, 256 points
    python scripts/bench_view_search.py --problems 400 --fine-points 96 256
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from bpnp.data import ObjectProtocol, PointControl, SyntheticDataset, collate
from bpnp.data.synthetic import UNIFORM_PROTOCOL
from bpnp.geometry import normalized_to_bearings, pixels_to_normalized, rotation_angle
from bpnp.geometry.view_search import view_search


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=int, default=160)
    p.add_argument("--points", type=int, default=256)
    p.add_argument("--outlier-rates", type=float, nargs="+", default=[0.0, 0.25])
    p.add_argument("--fine-points", type=int, nargs="+", default=[96, 192, 256])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("| outliers | fine points | within 10° | within 20° | within 30° | median (°) | ms / problem |")
    print("|---|---|---|---|---|---|---|")
    for rate in args.outlier_rates:
        r = rate if rate > 0 else None
        control = PointControl(outlier_rate_2d=r, outlier_rate_3d=r)
        ds = SyntheticDataset(
            args.problems,
            "test",
            control=control,
            protocol=ObjectProtocol(num_points=args.points, **UNIFORM_PROTOCOL),
        )
        batches = [collate([ds[i] for i in range(s, min(s + 16, len(ds)))]) for s in range(0, len(ds), 16)]
        for fine in args.fine_points:
            gen = torch.Generator().manual_seed(0)
            errors, start = [], time.perf_counter()
            for b in batches:
                bearings = normalized_to_bearings(pixels_to_normalized(b.points2d, b.K))
                R_view, R_c = view_search(
                    bearings, b.points3d, b.mask2d, b.mask3d, fine_points=fine, generator=gen
                )
                errors.append(torch.rad2deg(rotation_angle(R_c.transpose(1, 2) @ R_view, b.R)))
            ms = 1000 * (time.perf_counter() - start) / len(ds)
            e = torch.cat(errors).numpy()
            within = [f"{100 * np.mean(e < th):.0f} %" for th in (10, 20, 30)]
            print(f"| {rate:g} | {fine} | {' | '.join(within)} | {np.median(e):.1f} | {ms:.0f} |", flush=True)
    chance = (math.radians(10) - math.sin(math.radians(10))) / math.pi  # Haar measure of a 10° ball
    print(f"\n(a uniformly random rotation is within 10° of the truth with probability {chance:.1e})")


if __name__ == "__main__":
    main()
