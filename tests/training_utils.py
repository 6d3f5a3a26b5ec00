"""Shared settings of the training tests: tiny problems and networks through the real command line."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED_DATA = ROOT.parent / "shared" / "data"
STATUE = SHARED_DATA / "colmap" / "statue_of_liberty"

# 32 points, one residual block, 4-problem batches: a training step in well under a second.
TINY = [
    "--data.options", "{num_points: 32, max_rotation_deg: 45}",
    "--data.train_samples", "16",
    "--data.val_samples", "4",
    "--data.test_samples", "4",
    "--data.batch_size", "4",
    "--data.num_workers", "0",
    "--model.net.blocks", "1",
    "--model.net.ransac_iterations", "50",
]  # fmt: skip


@contextmanager
def isolated(tmp_path: Path, monkeypatch) -> Iterator[None]:
    """Run a training test in a scratch folder (nothing lands in the repository even if a default
    path slips through), with wandb off unless the test says otherwise (conftest.py keeps one
    intra-op thread for the whole session)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["bpnp"])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    yield


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


def subprocess_env() -> dict[str, str]:
    """Environment of a training subprocess: the repository importable, no wandb, few threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def train_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), *args]


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def adam_steps(checkpoint: dict[str, Any]) -> set[int]:
    """The distinct per-parameter step counts stored in the checkpoint's Adam state."""
    state = checkpoint["optimizer_states"][0]["state"]
    return {int(s["step"]) for s in state.values()}
