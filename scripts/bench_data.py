"""Loader throughput (samples per second) of every source available without a download, with 0 and
2 worker processes.

Sources: synthetic (both visibility modes), a prepared cache of it, the COLMAP and TUM samples in
../shared/data when present, and a small ModelNet40-layout folder and BPnPNet-layout archive
generated in a temporary folder.

    python scripts/bench_data.py [--batch-size 16] [--seconds 4] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import open3d as o3d
from rich.console import Console
from rich.table import Table

from bpnp.data import BlindPnPDataModule, ObjectProtocol, SyntheticDataset
from bpnp.data.cache import write_cache
from bpnp.data.synthetic import random_composite

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_modelnet(root: Path, meshes: int = 8) -> Path:
    """A ModelNet40-layout folder of random composite meshes."""
    rng = np.random.default_rng(0)
    for k in range(meshes):
        tri = random_composite(rng)
        mesh = o3d.geometry.TriangleMesh(
            o3d.utility.Vector3dVector(tri.reshape(-1, 3)),
            o3d.utility.Vector3iVector(np.arange(3 * len(tri)).reshape(-1, 3)),
        )
        folder = root / f"class{k % 2}" / "train"
        folder.mkdir(parents=True, exist_ok=True)
        o3d.io.write_triangle_mesh(str(folder / f"m{k}.off"), mesh)
    return root


def make_archive(root: Path, samples: int = 256) -> Path:
    """A BPnPNet-layout archive (K = I) made from synthetic problems of 1000 points."""
    data: dict[str, list] = {
        k: [] for k in ("p2d", "p3d", "R_gt", "t_gt", "W_gt", "num_points_2d", "num_points_3d")
    }
    src = SyntheticDataset(num_samples=samples, seed=1)
    for i in range(samples):
        s = src[i]
        K = s.K.double().numpy()
        p2d = (s.points2d.double().numpy() - K[:2, 2]) / np.diag(K)[:2]
        w = np.full(len(s.points3d), len(p2d))
        m = s.match.numpy()
        w[m[m >= 0]] = np.flatnonzero(m >= 0)
        for key, value in zip(
            data,
            (p2d, s.points3d.numpy(), s.R.numpy(), s.t.numpy(), w, [len(p2d)], [len(s.points3d)]),
            strict=True,
        ):
            data[key].append(np.asarray(value))
    folder = root / "modelnet40_train" / "preprocessed"
    folder.mkdir(parents=True)
    for key, values in data.items():
        with (folder / f"{key}.pkl").open("wb") as f:
            pickle.dump(values, f)
    return root


def throughput(dm: BlindPnPDataModule, seconds: float) -> float:
    """Samples per second of the train loader after its first batch (worker start-up excluded),
    over as many epochs as ``seconds`` takes."""
    loader = dm.train_dataloader()
    count, start = 0, None
    while start is None or time.perf_counter() - start < seconds:
        for batch in loader:
            if start is None:
                start = time.perf_counter()
                continue
            count += len(batch)
            if time.perf_counter() - start > seconds:
                break
    return count / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bpnp_bench_"))
    syn = {"num_points": 1000}
    modelnet, archive = str(make_modelnet(tmp / "modelnet")), str(make_archive(tmp / "archive"))
    hard = {"outlier_rate_2d": 0.25, "outlier_rate_3d": 0.25}
    configs: list[tuple[str, dict]] = [
        ("synthetic n=1000", dict(source="synthetic", options=syn)),
        (
            "synthetic n=1000 hpr, 25% outliers",
            dict(source="synthetic", options={**syn, "visibility": "hpr"}, **hard),
        ),
        (
            "modelnet40 layout (generated)",
            dict(source="modelnet40", root=modelnet, options={"samples_per_mesh": 64}),
        ),
        ("bpnpnet archive (generated)", dict(source="bpnpnet_archive", root=archive)),
    ]
    cache = tmp / "cache"
    write_cache(
        SyntheticDataset(num_samples=512, protocol=ObjectProtocol(num_points=1000)),
        cache / "train",
        progress=False,
    )
    configs.append(("prepared cache of synthetic", dict(cache_dir=str(cache))))
    colmap = SHARED / "colmap" / "statue_of_liberty"
    if colmap.is_dir():
        cfg = dict(source="colmap", root=str(colmap), m_max=1024, n_max=1024, options={"split_by": "image"})
        configs.append(("colmap statue_of_liberty, m, n <= 1024", cfg))
    tum = SHARED / "rgbd" / "tum_sample"
    if tum.is_dir():
        opts = {"intrinsics": (535.4, 539.2, 320.1, 247.6), "samples_per_frame": 256, "split_by": "frame"}
        configs.append(("rgbd tum_sample n=1000", dict(source="rgbd", root=str(tum), options=opts)))

    table = Table(title=f"data loader throughput, batch size {args.batch_size}")
    table.add_column("source")
    for w in args.workers:
        table.add_column(f"{w} workers (samples/s)", justify="right")
    console = Console()
    for name, cfg in configs:
        row = [name]
        for w in args.workers:
            dm = BlindPnPDataModule(**cfg, batch_size=args.batch_size, num_workers=w, pin_memory=False)
            rate = throughput(dm, args.seconds)
            row.append(f"{rate:.0f}")
        table.add_row(*row)
        console.print(f"{name}: {', '.join(row[1:])}")
    console.print(table)


if __name__ == "__main__":
    main()
