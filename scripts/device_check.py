"""Every check that needs a GPU, in one run that fits 10 minutes of device time (driven by
``scripts/device_check.sh``). Writes ``OUT/device_check.json`` and ``OUT/device_check.md``.

Steps: the device-parametrised tests (layers, network, a bf16-mixed training run) and the
CUDA-only tests; the host-sync counts; the layer benchmarks (Sinkhorn and PnP, forward and
backward, peak memory) at B = 64 for 1000² and 2000²; the network's inference latency per problem
at 1000 points and one training step at B = 16 with the pose stage; a 5-minute training run on the
uniform-rotation synthetic protocol at 1000 points.

    python scripts/device_check.py --device cuda --out device_check
    python scripts/device_check.py --device cpu --dry-run --out /tmp/check   # toy sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bpnp.data import ObjectProtocol, SyntheticDataset, collate  # noqa: E402
from bpnp.geometry import axis_angle_to_matrix  # noqa: E402
from bpnp.models import BlindPnPNet, NetConfig  # noqa: E402
from bpnp.nodes import sinkhorn, weighted_pnp  # noqa: E402
from bpnp.training.losses import correspondence_loss, rotation_loss, translation_loss  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_gib(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def layer_calls(device: torch.device, B: int, n: int) -> dict[str, Callable[[], object]]:
    """Sinkhorn (100 iterations, gamma 10) and the dense PnP layer from a given pose, float32."""
    g = torch.Generator(device=device).manual_seed(0)
    M = torch.rand(B, n, n, generator=g, device=device)
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, device=device))
    t = torch.tensor([0.0, 0.0, 6.0], device=device).expand(B, 3)
    X = torch.rand(B, n, 3, generator=g, device=device) * 2 - 1
    Xc = X @ R.mT + t[:, None]
    x = Xc[..., :2] / Xc[..., 2:]
    W = torch.eye(n, device=device).expand(B, n, n) / n + 1e-6

    def sk_fwd():
        with torch.no_grad():
            return sinkhorn(M, gamma=10.0, max_iter=100, tol=0.0)

    def sk_fwd_bwd():
        Mg = M.clone().requires_grad_()
        (sinkhorn(Mg, gamma=10.0, max_iter=100, tol=0.0) ** 2).sum().backward()

    def pnp_fwd():
        with torch.no_grad():
            return weighted_pnp(x, X, W, pose_init=(R, t))

    def pnp_fwd_bwd():
        Wg = W.clone().requires_grad_()
        res = weighted_pnp(x, X, Wg, pose_init=(R, t))
        (res.R.sum() + res.t.sum()).backward()

    return {
        "sinkhorn forward": sk_fwd,
        "sinkhorn forward + backward": sk_fwd_bwd,
        "pnp forward": pnp_fwd,
        "pnp forward + backward": pnp_fwd_bwd,
    }


def layer_rows(device: torch.device, B: int, sizes: list[int], repeats: int) -> list[dict]:
    rows = []
    for n in sizes:
        for name, fn in layer_calls(device, B, n).items():
            seconds, peak = median_seconds(fn, device, repeats), peak_gib(fn, device)
            rows.append(dict(call=name, B=B, n=n, seconds=seconds, peak_gib=peak))
    return rows


def latency_rows(device: torch.device, points: int, batch: int, repeats: int) -> list[dict]:
    """Inference per problem of BPnPNet's network (12 blocks, 100 Sinkhorn iterations, RANSAC and
    the PnP layer), and one training step (forward with the pose stage, a loss, backward)."""
    torch.manual_seed(0)
    net = BlindPnPNet(NetConfig(ransac={"iterations": 1000})).to(device)
    data = SyntheticDataset(num_samples=batch, seed=0, protocol=ObjectProtocol(num_points=points))
    b = collate([data[i] for i in range(batch)]).to(device)

    def infer():
        with torch.inference_mode():
            return net(b.points2d, b.points3d, b.K)

    opt = torch.optim.Adam(net.parameters(), 1e-4)

    def train_step():
        # The losses of training (scripts/bench_train.py): correspondences, then rotation and translation.
        out = net(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d)
        loss = (
            correspondence_loss(out.P, b.match)
            + (rotation_loss(out.R, b.R) + translation_loss(out.t, b.t)).mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()

    net.eval()
    infer_s = median_seconds(infer, device, repeats)
    net.train()
    step_s = median_seconds(train_step, device, repeats)
    return [
        dict(call=f"inference per problem, {points} points (batch {batch})", seconds=infer_s / batch),
        dict(call=f"training step with the pose stage, B = {batch}, {points} points", seconds=step_s),
    ]


def run_command(name: str, cmd: list[str], timeout: float, out: Path) -> dict:
    """A subprocess step: its exit status, time and output tail (the whole log under ``out``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = 124, f"{e.stdout or ''}{e.stderr or ''}\n[timed out after {timeout:.0f} s]"
        text = text if isinstance(text, str) else text.decode(errors="replace")
    (out / f"{name}.log").write_text(text)
    return dict(step=name, rc=rc, seconds=time.perf_counter() - start, tail=text.strip().splitlines()[-3:])


def last_metrics(root: Path) -> dict:
    """The last logged value of each metric of a training run's CSV log."""
    import csv

    files = sorted(root.glob("**/metrics.csv"))
    if not files:
        return {}
    found: dict[str, str] = {}
    for row in csv.DictReader(files[-1].open()):
        found.update({k: v for k, v in row.items() if v not in ("", None)})
    keys = ("step", "val/rotation_error_deg/q50", "val/recall/5deg", "val/recall/10deg", "train/loss")
    return {k: found[k] for k in keys if k in found}


# Sizes of each step: the real check, and the dry run that tests the script itself anywhere.
SIZES = {
    False: dict(layers_B=64, layers_n=[1000, 2000], points=1000, batch=16, repeats=3,
                tests=["tests/test_devices.py", "tests/test_pnp.py::test_cuda_matches_cpu"],
                syncs=["--batch", "16", "--points", "1000"]),
    True: dict(layers_B=2, layers_n=[40], points=40, batch=2, repeats=1,
               tests=["tests/test_devices.py", "-k", "network"],
               syncs=["--batch", "2", "--points", "40", "--pairs", "20"]),
}  # fmt: skip
# A toy training run for the dry run (the real one is bounded by --train-minutes).
DRY_TRAINING = [
    "--trainer.max_steps", "2", "--data.options", "{num_points: 32}", "--data.batch_size", "2",
    "--data.train_samples", "4", "--data.val_samples", "2", "--data.num_workers", "0",
    "--model.net.blocks", "1",
]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path("device_check"))
    p.add_argument("--dry-run", action="store_true", help="toy sizes: every step in seconds, on any device")
    p.add_argument("--train-minutes", type=int, default=5)
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"device_check: --device cuda, but torch {torch.__version__} sees no CUDA device")
    args.out.mkdir(parents=True, exist_ok=True)
    size = SIZES[args.dry_run]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict = dict(torch=torch.__version__, device=name, dry_run=args.dry_run)
    py = sys.executable
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *size["tests"]]
    steps = [run_command("tests", pytest, 240, args.out)]
    syncs = [py, "scripts/count_syncs.py", "--device", args.device, *size["syncs"]]
    steps.append(run_command("syncs", syncs, 120, args.out))
    report["layers"] = layer_rows(device, size["layers_B"], size["layers_n"], size["repeats"])
    report["latency"] = latency_rows(device, size["points"], size["batch"], size["repeats"])
    train_dir = args.out / "train"
    budget = DRY_TRAINING if args.dry_run else ["--trainer.max_time", f"00:00:{args.train_minutes:02d}:00"]
    train = [
        py, "scripts/train.py", "fit", "--config", "configs/synthetic_full.yaml", *budget,
        "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu",
        "--trainer.default_root_dir", str(train_dir),
    ]  # fmt: skip
    steps.append(run_command("train", train, 60 * args.train_minutes + 120, args.out))
    report["train"] = last_metrics(train_dir)
    report["steps"] = steps
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2))
    (args.out / "device_check.md").write_text(markdown(report))
    print(markdown(report))
    if any(s["rc"] != 0 for s in steps):
        sys.exit(1)


def markdown(report: dict) -> str:
    title = f"Device check: {report['device']}, torch {report['torch']}"
    lines = [title + (" (dry run)" if report["dry_run"] else ""), ""]
    lines += ["| step | status | seconds |", "|---|---|---|"]
    for s in report["steps"]:
        status = "ok" if s["rc"] == 0 else f"exit {s['rc']}"
        lines.append(f"| {s['step']} | {status} | {s['seconds']:.0f} |")
    lines += ["", "| layer call | B | n | median s | peak GiB |", "|---|---|---|---|---|"]
    for r in report["layers"]:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        lines.append(f"| {r['call']} | {r['B']} | {r['n']} | {r['seconds']:.4f} | {peak} |")
    lines += ["", "| network | ms |", "|---|---|"]
    lines += [f"| {r['call']} | {1000 * r['seconds']:.1f} |" for r in report["latency"]]
    if report.get("train"):
        values = ", ".join(f"{k} {v}" for k, v in report["train"].items())
        lines += ["", f"Training run, last logged values: {values}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
