"""``scripts/visualise.py``: pictures of chosen problems and of each method's answer to them."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from bpnp.cli.evaluate import base_parser, build_dataset, build_methods, parse
from bpnp.data import collate
from bpnp.data.outliers import with_outlier_rate
from bpnp.viz import save_problem_images
from bpnp.viz.render3d import BACKENDS

log = logging.getLogger(__name__)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_")


def visualise_main(argv: Sequence[str] | None = None) -> list[Path]:
    """Write ``OUT/<method>/<index>_{matches_2d,scene_3d,plan}.png``; returns the paths."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = base_parser("Pictures of blind-PnP problems and of each method's correspondences and pose.")
    parser.add_argument("--indices", type=list[int], default=[0, 1, 2, 3], help="problems of the split")
    parser.add_argument(
        "--outlier_rate", type=float | None, default=None, help="inject outliers at this rate"
    )
    parser.add_argument("--render_3d", type=bool, default=True, help="also render the 3D scene")
    parser.add_argument("--render_backend", type=str | None, default=None, help=f"one of {BACKENDS}")
    cfg = parse(parser, argv)
    if cfg.render_backend is not None and cfg.render_backend not in BACKENDS:
        parser.error(f"--render_backend {cfg.render_backend!r}: expected one of {BACKENDS}")
    methods = build_methods(cfg)
    _, dataset = build_dataset(cfg)
    dataset = with_outlier_rate(dataset, cfg.outlier_rate)
    bad = [i for i in cfg.indices if not 0 <= i < len(dataset)]
    if bad:
        parser.error(f"--indices {bad} out of range: the {cfg.split} split has {len(dataset)} problems")
    paths: list[Path] = []
    for index in cfg.indices:
        batch = collate([dataset[index]])
        for method in methods:
            out = method(batch)
            folder = Path(cfg.out) / _slug(method.name)
            paths += save_problem_images(
                batch, out, 0, folder, f"{index:05d}", cfg.render_3d, cfg.render_backend
            )
    for p in paths:
        log.info("wrote %s", p)
    return paths
