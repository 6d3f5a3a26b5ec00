"""Checkpoints and resuming: ``--ckpt_path last`` continues the global step, the optimizer and the
learning-rate schedule, and reproduces an uninterrupted run; a run killed with SIGKILL resumes from
its last checkpoint."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import pytorch_lightning as pl
import torch
from training_utils import TINY, checkpoint_callback, train_command, write_config

from bpnp.cli.train import cli_main

# 16 training problems in batches of 4: an epoch is 4 steps.
STEPS_PER_EPOCH = 4

pytestmark = pytest.mark.usefixtures("isolated")


def load_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def adam_steps(checkpoint: dict) -> set[int]:
    """The distinct per-parameter step counts stored in the checkpoint's Adam state."""
    state = checkpoint["optimizer_states"][0]["state"]
    return {int(s["step"]) for s in state.values()}


class StopAt(pl.Callback):
    """Stop training after ``step`` optimizer steps, as a run cut short would (the schedule still
    spans the configured ``max_steps``). Records where the run started and how many steps it ran."""

    def __init__(self, step: int | None = None) -> None:
        self.step, self.start, self.batches = step, None, 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = trainer.global_step

    def on_train_batch_end(self, trainer, *args) -> None:
        self.batches += 1
        if self.step is not None and trainer.global_step >= self.step:
            trainer.should_stop = True


def tiny_cli(tmp_path, name: str, max_steps: int, *extra: str, run: bool = True):
    """The tiny network trained to ``max_steps`` with a checkpoint every 2 steps under ``tmp/name``
    (``run=False``: built only, for :func:`fit_with`)."""
    run_dir = tmp_path / name
    cfg = write_config(
        tmp_path / f"{name}.yaml", run_dir, [checkpoint_callback(run_dir / "ckpt", every_n_train_steps=2)],
        num_sanity_val_steps=0, limit_val_batches=1, max_steps=max_steps,
    )  # fmt: skip
    # the pose loss is on from the first step: resuming must also reproduce the pose stage
    pose = ["--model.pose_loss_start_epoch", "0", "--model.pose_loss_ramp_epochs", "0"]
    args = ["--config", str(cfg), *TINY, "--model.lr_schedule", "cosine", *pose, *extra]
    return cli_main(["fit", *args] if run else args, run=run)


def fit_with(cli, callback: pl.Callback, ckpt_path: str | None = None) -> pl.Trainer:
    cli.trainer.callbacks.append(callback)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli.trainer


def test_resume_from_last_continues_and_matches_an_uninterrupted_run(tmp_path):
    total = 2 * STEPS_PER_EPOCH
    straight = tiny_cli(tmp_path, "straight", total).trainer
    assert straight.global_step == total

    part = fit_with(tiny_cli(tmp_path, "resumed", total, run=False), StopAt(STEPS_PER_EPOCH))
    assert part.global_step == STEPS_PER_EPOCH
    ckpt = tmp_path / "resumed" / "ckpt" / "last.ckpt"
    saved = load_checkpoint(ckpt)
    assert saved["global_step"] == STEPS_PER_EPOCH and adam_steps(saved) == {STEPS_PER_EPOCH}

    resumed = tiny_cli(tmp_path, "resumed", total, "--ckpt_path", "last").trainer
    assert resumed.global_step == total
    final = load_checkpoint(ckpt)
    assert final["global_step"] == total
    assert adam_steps(final) == {total}  # Adam's moments continued rather than restarting at 0
    assert final["lr_schedulers"][0]["last_epoch"] == total
    assert final["lr_schedulers"][0]["T_max"] == total
    # same weights as the run that never stopped: same data order, optimizer and schedule
    reference = load_checkpoint(tmp_path / "straight" / "ckpt" / "last.ckpt")
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=0, atol=0, msg=f"{key} differs")


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path, subprocess_env):
    run_dir = tmp_path / "killed"
    last = run_dir / "ckpt" / "last.ckpt"
    cfg = write_config(
        tmp_path / "killed.yaml", run_dir, [checkpoint_callback(run_dir / "ckpt", every_n_train_steps=2)],
        num_sanity_val_steps=0, limit_val_batches=1, max_steps=100_000, max_epochs=100_000,
    )  # fmt: skip
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(train_command("fit", "--config", str(cfg), *TINY), env=subprocess_env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"training exited before a checkpoint:\n{log.read_text()[-3000:]}"
        assert last.is_file(), "no checkpoint within 180 s"
        proc.send_signal(signal.SIGKILL)  # no chance to clean up or save anything more
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = load_checkpoint(last)  # written to a temporary file, then moved: whole despite the kill
    step = saved["global_step"]
    assert step >= 2 and adam_steps(saved) == {step}

    cli = cli_main(["--config", str(cfg), *TINY, "--trainer.max_steps", str(step + 2)], run=False)
    recorder = StopAt()
    trainer = fit_with(cli, recorder, ckpt_path="last")
    assert recorder.start == step and recorder.batches == 2 and trainer.global_step == step + 2
    assert adam_steps(load_checkpoint(last)) == {step + 2}


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_the_middle_of_an_epoch_with_loader_workers(tmp_path, workers):
    # Killed after step 6 of 8 (epoch 1, batch 2 of 4) and resumed: the same weights as a run that
    # never stopped, with or without loader workers (whose iterator Lightning makes before it sets
    # the sampler's epoch).
    total, stop = 2 * STEPS_PER_EPOCH, STEPS_PER_EPOCH + 2
    w = ["--data.num_workers", str(workers)]
    straight = tiny_cli(tmp_path, "straight", total, *w).trainer
    assert straight.global_step == total
    part = fit_with(tiny_cli(tmp_path, "resumed", total, *w, run=False), StopAt(stop))
    assert part.global_step == stop
    resumed = tiny_cli(tmp_path, "resumed", total, *w, "--ckpt_path", "last").trainer
    assert resumed.global_step == total
    final = load_checkpoint(tmp_path / "resumed" / "ckpt" / "last.ckpt")
    reference = load_checkpoint(tmp_path / "straight" / "ckpt" / "last.ckpt")
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=0, atol=1e-6, msg=f"{key} differs")
