"""Cache a data source to sharded .npz files (one folder per split) for BlindPnPDataModule(cache_dir=...).

Examples:
    python scripts/prepare_data.py --source synthetic --out data/cache/synthetic --train-samples 20000
    python scripts/prepare_data.py --source modelnet40 --root data/ModelNet40 --out data/cache/modelnet40
    python scripts/prepare_data.py --source colmap --root data/megadepth --out data/cache/megadepth \\
        --m-max 1024 --n-max 2048 --option num_covisible=5
    python scripts/prepare_data.py --source rgbd --root data/nyu_depth_v2_labeled.mat --out data/cache/nyu
    python scripts/prepare_data.py --source bpnpnet_archive --root data/bpnpnet --out data/cache/bpnpnet \\
        --option dataset=modelnet40 --splits train val test

Prints a summary per split: samples written and rejected (with the reason).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bpnp.data import SOURCES, BlindPnPDataModule
from bpnp.data.cache import write_cache


def parse_option(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as JSON (numbers, lists, true/false, null), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--option {text!r}: expected key=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=SOURCES, default="synthetic")
    ap.add_argument("--root", help="the source's folder or file (not for synthetic)")
    ap.add_argument("--out", required=True, help="cache folder; one subfolder per split")
    ap.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    ap.add_argument("--option", type=parse_option, action="append", default=[], help="key=value")
    ap.add_argument("--m-max", type=int)
    ap.add_argument("--n-max", type=int)
    ap.add_argument("--outlier-rate-2d", type=float)
    ap.add_argument("--outlier-rate-3d", type=float)
    ap.add_argument("--train-samples", type=int, default=10000, help="synthetic only")
    ap.add_argument("--val-samples", type=int, default=500, help="synthetic only")
    ap.add_argument("--test-samples", type=int, default=1000, help="synthetic only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    dm = BlindPnPDataModule(
        source=args.source,
        root=args.root,
        options=dict(args.option),
        m_max=args.m_max,
        n_max=args.n_max,
        outlier_rate_2d=args.outlier_rate_2d,
        outlier_rate_3d=args.outlier_rate_3d,
        train_samples=args.train_samples,
        val_samples=args.val_samples,
        test_samples=args.test_samples,
        seed=args.seed,
    )
    console = Console()
    table = Table(title=f"{args.source} -> {args.out}")
    for col in ("split", "written", "rejected", "reasons"):
        table.add_column(col)
    config = {k: v for k, v in vars(args).items() if k not in ("quiet", "workers")}
    for split in args.splits:
        try:
            dataset = dm.dataset(split)
        except (FileNotFoundError, ValueError) as e:
            console.print(f"[red]error:[/red] {e}")
            return 1
        s = write_cache(
            dataset,
            Path(args.out) / split,
            shard_size=args.shard_size,
            num_workers=args.workers,
            meta={"config": config, "split": split},
            progress=not args.quiet,
        )
        reasons = ", ".join(f"{r}: {c}" for r, c in s["rejected"].items() if c) or "-"
        table.add_row(split, str(s["written"]), str(sum(s["rejected"].values())), reasons)
    console.print(table)
    (Path(args.out) / "config.json").write_text(json.dumps(config, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
