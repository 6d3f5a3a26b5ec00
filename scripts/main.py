"""The main job: train on the built-in synthetic data, evaluate the trained network against the
same network untrained and against the oracle and random baselines, print the accuracy table.

    python scripts/main.py                                   # configs/synthetic.yaml
    python scripts/main.py --config configs/X.yaml [--trainer.max_epochs 2 ...]   # any config + overrides
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from bpnp.cli.evaluate import evaluate_main
from bpnp.cli.train import DEFAULT_CONFIG, cli_main
from bpnp.training import BlindPnPModule


def save_untrained(model: BlindPnPModule, path: Path, seed: int) -> None:
    """A checkpoint of the same network at its initial weights (same seed as the training run)."""
    pl.seed_everything(seed, verbose=False)
    # LightningCLI adds bookkeeping entries (e.g. "_instantiator") to the hyper-parameters.
    params = inspect.signature(BlindPnPModule.__init__).parameters
    fresh = BlindPnPModule(**{k: v for k, v in model.hparams.items() if k in params})
    torch.save(
        {"state_dict": fresh.state_dict(), "hyper_parameters": dict(fresh.hparams),
         "pytorch-lightning_version": pl.__version__},
        path,
    )  # fmt: skip


def data_overrides(overrides: list[str]) -> list[str]:
    """The ``--data.*`` arguments among LightningCLI overrides (``--data.k v`` or ``--data.k=v``), so
    the evaluation runs on the data that was trained on."""
    out, i = [], 0
    while i < len(overrides):
        arg = overrides[i]
        if arg.startswith("--data.") and "=" in arg:
            out.append(arg)
        elif arg.startswith("--data.") and i + 1 < len(overrides):
            out += [arg, overrides[i + 1]]
            i += 1
        i += 1
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--out", type=Path, default=Path("outputs/synthetic"))
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first N test problems")
    args, overrides = p.parse_known_args()

    start = time.monotonic()
    cli = cli_main(["fit", "--config", args.config, *overrides])
    trained_s = time.monotonic() - start
    ckpt = cli.trainer.checkpoint_callback
    best = Path(ckpt.best_model_path or ckpt.last_model_path)
    args.out.mkdir(parents=True, exist_ok=True)
    trained, untrained = args.out / "trained.ckpt", args.out / "untrained.ckpt"
    shutil.copyfile(best, trained)
    save_untrained(cli.model, untrained, cli.config["fit"]["seed_everything"])
    print(f"\ntrained for {trained_s / 60:.1f} min; evaluating {best.name} on the test split\n")

    eval_args = ["--data", args.config, *data_overrides(overrides), "--data.num_workers", "0",
                 "--ckpt", f"[{trained},{untrained}]",
                 "--baseline", "[oracle,random]", "--out", str(args.out / "eval")]  # fmt: skip
    if args.eval_limit:
        eval_args += ["--limit", str(args.eval_limit)]
    evaluate_main(eval_args)
    print(f"\nreports in {args.out / 'eval'} (table.md, summary.json, problems.csv, recall.png); "
          f"total {(time.monotonic() - start) / 60:.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
