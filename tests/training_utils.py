"""Values and builders the tests share: paths, the tiny-run overrides and trainer configs.

They stay plain module-level names rather than fixtures: the paths decide ``skipif`` marks and
module constants at collection time, where no fixture exists, and the builders are pure functions
(arguments in, a dict or a file out) that test modules also call from their own helpers. What needs
a test's state (its folder, the environment) is a fixture in ``conftest.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED_DATA = ROOT.parent / "shared" / "data"
STATUE = SHARED_DATA / "colmap" / "statue_of_liberty"
SCENES = SHARED_DATA / "colmap_scenes"

# 32 points, one residual block, 4-problem batches: a training step in well under a second.
TINY = [
    "--data.options", "{num_points: 32, max_rotation_deg: 45}",
    "--data.train_samples", "16",
    "--data.val_samples", "4",
    "--data.test_samples", "4",
    "--data.batch_size", "4",
    "--data.num_workers", "0",
    "--model.net.blocks", "1",
    "--model.net.ransac.iterations", "50",
]  # fmt: skip


def checkpoint_callback(dirpath: Path, every_n_train_steps: int | None = None) -> dict[str, Any]:
    """A ModelCheckpoint keeping only ``last.ckpt`` (plus one file per ``every_n_train_steps``)."""
    args: dict[str, Any] = {"dirpath": str(dirpath), "save_last": True, "save_top_k": -1}
    if every_n_train_steps is not None:
        args["every_n_train_steps"] = every_n_train_steps
    return {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": args}


def write_config(
    path: Path,
    root_dir: Path,
    callbacks: list[dict[str, Any]] | None = None,
    logger: dict[str, Any] | bool = False,
    **trainer: Any,
) -> Path:
    """A trainer config that keeps every output under ``root_dir`` (the default config writes under
    ``outputs/``): its logger, callbacks and root folder replace the defaults."""
    section = {
        "default_root_dir": str(root_dir),
        "logger": logger,
        "callbacks": callbacks or [],
        "enable_checkpointing": any("ModelCheckpoint" in c["class_path"] for c in callbacks or []),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        **trainer,
    }
    path.write_text(yaml.safe_dump({"trainer": section}))
    return path


def csv_logger(save_dir: Path) -> dict[str, Any]:
    return {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(save_dir)}}


def train_command(*args: str) -> list[str]:
    """``python scripts/train.py ARGS``: the training script as a subprocess runs it."""
    return [sys.executable, str(ROOT / "scripts" / "train.py"), *args]
