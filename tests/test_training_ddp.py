"""Two-process DistributedDataParallel on CPU (gloo): the run completes, logs the same metric keys as
a single-process run, and aggregates validation metrics over both processes."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
from training_utils import TINY, csv_logger, isolated, subprocess_env, train_command, write_config

from bpnp.training.cli import cli_main

# Each of the two processes gets half of the 16 training and 4 validation problems.
SETTINGS = {"max_epochs": 1, "num_sanity_val_steps": 0, "log_every_n_steps": 1}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    with isolated(tmp_path, monkeypatch):
        yield


def read_metrics(save_dir: Path) -> tuple[set[str], list[dict[str, str]]]:
    """Column names (metric keys) and rows of the CSV logger's metrics file."""
    files = sorted(save_dir.rglob("metrics.csv"))
    assert len(files) == 1, f"expected one metrics.csv under {save_dir}, found {files}"
    with files[0].open() as f:
        rows = list(csv.DictReader(f))
    return set(rows[0]) if rows else set(), rows


def last_value(rows: list[dict[str, str]], key: str) -> float:
    return float([r[key] for r in rows if r.get(key)][-1])


def test_two_process_ddp_on_cpu_logs_the_same_keys_as_one_process(tmp_path):
    ddp_cfg = write_config(tmp_path / "ddp.yaml", tmp_path / "ddp", logger=csv_logger(tmp_path / "ddp_logs"),
                           **SETTINGS)  # fmt: skip
    ddp_args = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    result = subprocess.run(
        train_command("fit", "--config", str(ddp_cfg), *TINY, *ddp_args),
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "GLOBAL_RANK: 1" in result.stdout + result.stderr  # the second process really joined

    single_cfg = write_config(tmp_path / "single.yaml", tmp_path / "single",
                              logger=csv_logger(tmp_path / "single_logs"), **SETTINGS)  # fmt: skip
    cli_main(["fit", "--config", str(single_cfg), *TINY])

    ddp_keys, ddp_rows = read_metrics(tmp_path / "ddp_logs")
    single_keys, single_rows = read_metrics(tmp_path / "single_logs")
    assert {"train/loss", "train/loss_corr", "val/loss_corr", "val/rotation_error_deg/q50"} <= single_keys
    assert ddp_keys == single_keys
    # the pose metrics gather both processes' problems: all 4 validation problems counted
    assert last_value(ddp_rows, "val/num_problems") == last_value(single_rows, "val/num_problems") == 4
