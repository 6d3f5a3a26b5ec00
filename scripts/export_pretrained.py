"""Write a training checkpoint's network as a shipped one: its NetConfig (a dict) and state dict,
without the optimiser, to ``bpnp/models/weights/NAME.pt`` (then list it in ``PRETRAINED``).

    python scripts/export_pretrained.py outputs/real/finetune/checkpoints/last.ckpt colmap \
        --pose '{"rematch_passes": 1}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from bpnp.evaluation.network_method import load_module

WEIGHTS = Path(__file__).resolve().parents[1] / "bpnp" / "models" / "weights"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", help="a training checkpoint")
    p.add_argument("name", help="the shipped name (pretrained:NAME)")
    p.add_argument(
        "--pose", type=json.loads, default=None, help="pose-stage settings, e.g. '{\"rematch_passes\": 1}'"
    )
    args = p.parse_args()
    net = load_module(args.ckpt, pose=args.pose).net
    out = WEIGHTS / f"{args.name}.pt"
    torch.save({"config": dataclasses.asdict(net.config), "state_dict": net.state_dict()}, out)
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
