"""``bpnp example --out DIR``: write one test problem of the synthetic source as the files
``bpnp predict`` reads (``points2d.txt`` in pixels, ``points3d.ply``, ``K.txt``), with its true pose
and matches in ``truth.json``, to try the tools before bringing one's own data."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open3d as o3d
from jsonargparse import ArgumentParser

from bpnp.data.synthetic import UNIFORM_PROTOCOL, ObjectProtocol, SyntheticDataset
from bpnp.data.transforms import PointControl


def write_example(
    out: Path, index: int = 0, points: int = 256, outlier_rate: float = 0.25
) -> dict[str, Path]:
    """Write problem ``index`` of the synthetic test stream (uniform rotations) under ``out``."""
    control = PointControl(outlier_rate_2d=outlier_rate, outlier_rate_3d=outlier_rate)
    sample = SyntheticDataset(
        split="test",
        seed=0,
        num_samples=index + 1,
        control=control,
        protocol=ObjectProtocol(num_points=points, **UNIFORM_PROTOCOL),
    )[index]
    out.mkdir(parents=True, exist_ok=True)
    paths = {"points2d": out / "points2d.txt", "points3d": out / "points3d.ply", "K": out / "K.txt"}
    np.savetxt(paths["points2d"], sample.points2d.double().numpy(), header="u v (pixels)")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(sample.points3d.double().numpy()))
    o3d.io.write_point_cloud(str(paths["points3d"]), cloud)
    np.savetxt(paths["K"], sample.K.double().numpy())
    truth = {"R": sample.R.tolist(), "t": sample.t.tolist(), "match": sample.match.tolist()}
    paths["truth"] = out / "truth.json"
    paths["truth"].write_text(json.dumps(truth))
    return paths


def example_main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    p = ArgumentParser(prog="bpnp example", description=__doc__.split("\n\n")[0], default_env=False)
    p.add_argument("--out", type=str, default="example", help="folder to write the problem into")
    p.add_argument("--index", type=int, default=0, help="which test problem")
    p.add_argument("--points", type=int, default=256, help="points on the object")
    p.add_argument("--outlier_rate", type=float, default=0.25, help="2D and 3D outlier rate")
    cfg = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    paths = write_example(Path(cfg.out), cfg.index, cfg.points, cfg.outlier_rate)
    for path in paths.values():
        print(path)
    return paths
