"""Two-process DistributedDataParallel on CPU (gloo): the run completes, logs the same metric keys as
a single-process run, and aggregates validation metrics over both processes."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from training_utils import TINY, csv_logger, train_command, write_config

from bpnp.cli.train import cli_main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated")]  # subprocesses or long property runs

# Each of the two processes gets half of the 16 training and 4 validation problems.
SETTINGS = {"max_epochs": 1, "num_sanity_val_steps": 0, "log_every_n_steps": 1}


def read_metrics(save_dir: Path) -> tuple[set[str], list[dict[str, str]]]:
    """Column names (metric keys) and rows of the CSV logger's metrics file."""
    files = sorted(save_dir.rglob("metrics.csv"))
    assert len(files) == 1, f"expected one metrics.csv under {save_dir}, found {files}"
    with files[0].open() as f:
        rows = list(csv.DictReader(f))
    return set(rows[0]) if rows else set(), rows


def last_value(rows: list[dict[str, str]], key: str) -> float:
    return float([r[key] for r in rows if r.get(key)][-1])


def test_two_process_ddp_on_cpu_logs_the_same_keys_as_one_process(tmp_path, subprocess_env):
    ddp_cfg = write_config(tmp_path / "ddp.yaml", tmp_path / "ddp", logger=csv_logger(tmp_path / "ddp_logs"),
                           **SETTINGS)  # fmt: skip
    ddp_args = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    result = subprocess.run(
        train_command("fit", "--config", str(ddp_cfg), *TINY, *ddp_args),
        env=subprocess_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "GLOBAL_RANK: 1" in result.stdout + result.stderr  # the second process really joined

    single_cfg = write_config(tmp_path / "single.yaml", tmp_path / "single",
                              logger=csv_logger(tmp_path / "single_logs"), **SETTINGS)  # fmt: skip
    cli_main(["fit", "--config", str(single_cfg), *TINY])

    ddp_keys, ddp_rows = read_metrics(tmp_path / "ddp_logs")
    single_keys, single_rows = read_metrics(tmp_path / "single_logs")
    assert {"train/loss", "train/loss_corr", "val/loss_corr", "val/rotation_error_deg/q50"} <= single_keys
    # the layers' convergence is logged, not discarded
    solver_keys = {"train/sinkhorn_converged", "val/sinkhorn_converged", "val/pnp_valid", "val/pnp_converged"}
    assert solver_keys <= single_keys
    assert ddp_keys == single_keys
    # the pose metrics gather both processes' problems: all 4 validation problems counted
    assert last_value(ddp_rows, "val/num_problems") == last_value(single_rows, "val/num_problems") == 4


@pytest.fixture
def run_check(tmp_path, subprocess_env):
    """``run_check(name, *args)``: the metrics ``ddp_check.py`` writes for one check."""

    def run(*args: str) -> dict[str, float]:
        out = tmp_path / f"{args[0]}_{'_'.join(args[1:])}.json"
        result = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("ddp_check.py")), args[0], str(out), *args[1:]],
            env=subprocess_env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        return json.loads(out.read_text())

    return run


def test_a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(run_check):
    # Returning None on one rank alone would leave the other waiting in DDP's all-reduce.
    result = run_check("nan")
    assert result["global_step"] == 3 and result["skipped_steps"] == 1
    assert result["ranks_agree"]  # the replicas stay identical
    assert result["skipped_step_moved"] == 0.0  # no optimizer update (nor Adam momentum) at the skip
    assert result["other_steps_moved"] > 0


def test_validation_counts_each_problem_once_across_ranks(run_check):
    # 5 problems on 2 ranks: a padding sampler would count one twice.
    two = run_check("val", "2", "5")
    one = run_check("val", "1", "5")
    assert two["val/num_problems"] == one["val/num_problems"] == 5
    assert set(two) == set(one)
    for key, value in one.items():
        assert math.isclose(two[key], value, rel_tol=1e-6, abs_tol=1e-9) or (
            math.isnan(value) and math.isnan(two[key])
        ), key
