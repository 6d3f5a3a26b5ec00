"""Learning benchmark: train a recipe for a fixed wall-clock budget on BPnPNet's synthetic protocol
(uniformly random rotations), then evaluate a fixed test set and plot the learning curve.

    python scripts/bench_learning.py --recipe configs/recipes/uniform_30min.yaml --minutes 30
    python scripts/bench_learning.py --minutes 30 --outlier-rate 0.25 --name outliers25
    python scripts/bench_learning.py --minutes 10 --name no_view -- --model.net.view_search false

The protocol: random compositions of primitives, ``--points`` points on each (all projected),
camera rotation uniform on SO(3), depth about 4-8 object radii... (``distance_range`` 1.4-2.8 of
the fitting distance), pixel noise 1.05 px (0.002 in normalised coordinates at f = 525), training
problems generated on the fly by the synthetic source; the test problems come from its separate
test stream. Arguments after ``--`` are LightningCLI overrides applied after the recipe and data.

Prints recall within 1, 5 and 10 degrees, the median rotation error, the inlier mass of the plan,
the top-k inlier ratio (precision of the plan's top pairs, k = number of true matches, so a perfect
plan scores 100 %) and the learning curve (validation, against wall-clock minutes); writes
``summary.json``, ``curve.json`` and ``curve.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from torch.utils.data import DataLoader

from bpnp.cli.train import CONFIG_DIR, cli_main
from bpnp.data.sample import Batch, collate
from bpnp.data.synthetic import UNIFORM_PROTOCOL
from bpnp.evaluation.baselines import RansacConfig, per_problem, ransac_pnp
from bpnp.evaluation.evaluate import evaluate_method
from bpnp.evaluation.network_method import NetworkMethod, load_module
from bpnp.metrics.errors import precision_at_true_count
from bpnp.metrics.output import MethodOutput
from bpnp.models import exact_top_pairs
from bpnp.models.pretrained import pretrained_name
from bpnp.training.losses import inlier_mass

RECIPE = CONFIG_DIR / "recipes" / "uniform_30min.yaml"


def protocol_data(points: int, outlier_rate: float, train_samples: int, val: int, test: int) -> dict:
    """The data section of the benchmark's protocol."""
    rate = outlier_rate if outlier_rate > 0 else None
    return {
        "data": {
            "source": "synthetic",
            "options": {"num_points": points, **UNIFORM_PROTOCOL},
            "outlier_rate_2d": rate,
            "outlier_rate_3d": rate,
            "train_samples": train_samples,
            "val_samples": val,
            "test_samples": test,
            "batch_size": 16,
            "num_workers": 1,
        }
    }


class WallClockCurve(pl.Callback):
    """Validation metrics against wall-clock minutes since the start of training."""

    KEYS = ("val/inlier_mass", "val/rotation_error_deg/q50", "val/recall/10deg_10pct")

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.points: list[dict] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        point = {"minutes": (time.monotonic() - self.start) / 60.0, "step": trainer.global_step}
        point.update({k: float(m[k]) for k in self.KEYS if k in m})
        self.points.append(point)
        values = ", ".join(f"{k}={v:.4g}" for k, v in point.items() if k.startswith("val/"))
        print(f"  [{point['minutes']:5.1f} min, step {point['step']}] {values}", flush=True)


def plan_metrics(batch: Batch, plan: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-problem inlier mass of the plan and precision of its top-k pairs (k = true matches)."""
    m, n = batch.points2d.shape[1], batch.points3d.shape[1]
    P = plan[:, :m, :n]
    k = int((batch.match >= 0).sum(1).max())
    rows, cols, scores = exact_top_pairs(P, max(k, 1))
    precision = precision_at_true_count(torch.stack([rows, cols], -1), batch.match, scores)
    return inlier_mass(P, batch.match).double().numpy(), precision.numpy()


def opencv_on_top_pairs(batch: Batch, out: MethodOutput, cfg: RansacConfig) -> MethodOutput:
    """The network's top pairs posed by OpenCV's PnP-RANSAC and Levenberg-Marquardt on its inliers
    instead of the declarative PnP layer (the "no declarative layer" row)."""
    pairs = iter(out.pairs.cpu().numpy())

    def solve(uv: np.ndarray, X: np.ndarray, K: np.ndarray, match: np.ndarray):
        p = next(pairs)
        p = p[p[:, 0] >= 0]
        return ransac_pnp(X[p[:, 1]], uv[p[:, 0]], K, cfg), p

    return per_problem(batch, solve)


def evaluate(module: pl.LightningModule, dataset, batch_size: int = 16) -> dict:
    """Test figures of the network, of its RANSAC pose alone and of OpenCV on its top pairs, all
    from one forward pass per batch."""
    network = NetworkMethod(module.cpu().eval())
    batches = list(DataLoader(dataset, batch_size=batch_size, collate_fn=collate))
    outputs, masses, precisions = [], [], []

    def run_network(batch: Batch) -> MethodOutput:
        out = network(batch)
        outputs.append(out)
        mass, prec = plan_metrics(batch, out.plan)
        masses.append(mass)
        precisions.append(prec)
        return out

    cfg = RansacConfig(threshold_px=2.0, iterations=1000, refine=True)
    replay = iter(outputs)

    def run_opencv(batch: Batch) -> MethodOutput:
        return opencv_on_top_pairs(batch, next(replay), cfg)

    run_network.name = network.name
    run_opencv.name = f"{network.name} top pairs + OpenCV RANSAC ({cfg.threshold_px:g} px) + LM"
    rows = evaluate_method(run_network, batches)
    network_ms = rows[0].summary["ms_per_problem"]
    rows += evaluate_method(run_opencv, batches)
    result = {}
    for row in rows:
        rot = row.columns["rotation_error_deg"]
        rot = np.where(np.isfinite(rot), rot, 180.0)
        own_ms = row.summary["ms_per_problem"]  # the OpenCV row reuses the network's forward pass
        result[row.method] = {
            "recall_1deg": float((rot < 1).mean()),
            "recall_5deg": float((rot < 5).mean()),
            "recall_10deg": float((rot < 10).mean()),
            "median_rotation_error_deg": float(np.median(rot)),
            "ms_per_problem": own_ms + (network_ms if row.method == run_opencv.name else 0.0),
            "inlier_mass": float(np.concatenate(masses).mean()),
            "topk_inlier_ratio": float(np.nanmean(np.concatenate(precisions))),
        }
    return result


def markdown_row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def plot_curve(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    x = [p["minutes"] for p in points]
    for key, label, axis in (
        ("val/inlier_mass", "inlier mass of P", ax[0]),
        ("val/recall/10deg_10pct", "recall at (10 deg, 10 %)", ax[1]),
    ):
        axis.plot(x, [100 * p.get(key, np.nan) for p in points], marker="o")
        axis.set_xlabel("wall-clock minutes")
        axis.set_ylabel(f"{label} (%)")
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(RECIPE), help="config file (model, optimiser, trainer)")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock training budget")
    p.add_argument("--points", type=int, default=256, help="points per set before outliers")
    p.add_argument("--outlier-rate", type=float, default=0.0, help="2D and 3D outlier rate (dustbin on)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--test-problems", type=int, default=400)
    p.add_argument("--val-problems", type=int, default=64)
    p.add_argument("--name", default=None, help="row name (default: the recipe's file name)")
    p.add_argument("--out", type=Path, default=None, help="default outputs/learning/NAME")
    p.add_argument("--eval-only", type=str, default=None, metavar="CKPT",
                   help="skip training: evaluate this checkpoint of an earlier run")  # fmt: skip
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error(f"--minutes must be positive, got {args.minutes}")
    if not 0.0 <= args.outlier_rate < 1.0:
        p.error(f"--outlier-rate must lie in [0, 1), got {args.outlier_rate}")
    if not Path(args.recipe).is_file():
        p.error(f"--recipe {args.recipe}: no such file")
    torch.set_num_threads(args.threads)
    name = args.name or Path(args.recipe).stem
    out = args.out or Path("outputs/learning") / name
    out.mkdir(parents=True, exist_ok=True)
    data_file = out / "data.yaml"
    # Enough distinct training problems that none repeats within the budget.
    data = protocol_data(args.points, args.outlier_rate, 200_000, args.val_problems, args.test_problems)
    data_file.write_text(yaml.safe_dump(data))
    extra = ["--model.net.dustbin", "true"] if args.outlier_rate > 0 else []
    seconds = int(round(args.minutes * 60))
    cli_args = ["--config", args.recipe, "--config", str(data_file), *extra,
                "--trainer.max_time", f"00:00:{seconds // 60:02d}:{seconds % 60:02d}",
                "--trainer.default_root_dir", str(out),
                "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
                *overrides]  # fmt: skip
    cli = cli_main(cli_args, run=False)
    curve = WallClockCurve()
    cli.trainer.callbacks.append(curve)
    start = time.monotonic()
    if args.eval_only is None:
        cli.trainer.fit(cli.model, cli.datamodule)
        trained_min, steps = (time.monotonic() - start) / 60.0, cli.trainer.global_step
    elif pretrained_name(args.eval_only) is not None:
        cli.model = load_module(args.eval_only)  # a network shipped with the package, its own config
        steps, trained_min = None, float("nan")
    else:
        ckpt = torch.load(args.eval_only, map_location="cpu", weights_only=False)
        cli.model.load_state_dict(ckpt["state_dict"])
        steps = ckpt["global_step"]
        previous = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
        trained_min = previous.get("trained_minutes", float("nan"))
        curve.points = json.loads((out / "curve.json").read_text()) if (out / "curve.json").is_file() else []
    cli.datamodule.setup("test")
    print(f"trained {trained_min:.1f} min, {steps} steps; testing {args.test_problems} problems")
    result = evaluate(cli.model, cli.datamodule.dataset("test"))
    summary = {"name": name, "recipe": args.recipe, "minutes": args.minutes,
               "trained_minutes": trained_min, "steps": steps, "points": args.points,
               "outlier_rate": args.outlier_rate, "overrides": overrides, "results": result}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "curve.json").write_text(json.dumps(curve.points, indent=2))
    if curve.points:
        plot_curve(
            curve.points, out / "curve.png", f"{name}: {args.points} points, outliers {args.outlier_rate:g}"
        )
    print("\nlearning curve (validation):")
    print(markdown_row(["minutes", "step", "inlier mass (%)", "median rot. err. (deg)", "R@10deg,10% (%)"]))
    print(markdown_row(["---"] * 5))
    for pt in curve.points:
        mass, med = 100 * pt.get("val/inlier_mass", np.nan), pt.get("val/rotation_error_deg/q50", np.nan)
        rec = 100 * pt.get("val/recall/10deg_10pct", np.nan)
        print(markdown_row([f"{pt['minutes']:.1f}", pt["step"], f"{mass:.1f}", f"{med:.1f}", f"{rec:.1f}"]))
    print(f"\ntest ({args.test_problems} problems):")
    head = ["method", "R@1deg", "R@5deg", "R@10deg", "median rot. err. (deg)", "inlier mass",
            "top-k inlier ratio", "ms/problem"]  # fmt: skip
    print(markdown_row(head))
    print(markdown_row(["---"] * len(head)))
    for method, r in result.items():
        pct = [f"{100 * r[k]:.1f}" for k in ("recall_1deg", "recall_5deg", "recall_10deg")]
        rest = [f"{r['median_rotation_error_deg']:.2f}", f"{100 * r['inlier_mass']:.1f}",
                f"{100 * r['topk_inlier_ratio']:.1f}", f"{r['ms_per_problem']:.0f}"]  # fmt: skip
        print(markdown_row([method, *pct, *rest]))
    print(f"\nwritten: {out}/summary.json, curve.json, curve.png")


if __name__ == "__main__":
    main()
