"""The real-scene pipeline through its one command: synthetic pretraining, fine-tuning on the shared
COLMAP scenes from the pretrained checkpoint, and the test table (tiny budgets)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from training_utils import ROOT, SCENES


@pytest.mark.skipif(not (SCENES / "llff_room").is_dir(), reason=f"{SCENES} not available")
def test_pretrain_finetune_and_test_in_one_command(tmp_path):
    env = {
        **os.environ,
        "OUT": str(tmp_path / "real"),
        "ROOT": str(SCENES),
        "OUTLIER_RATES": "natural,0.5",
        "EVAL_ARGS": "--limit 6 --progress false",
    }
    tiny = ["--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
            "--trainer.limit_val_batches", "1", "--data.num_workers", "0",
            "--data.m_max", "64", "--data.n_max", "64", "--model.net.blocks", "1"]  # fmt: skip
    run = subprocess.run(
        ["bash", "scripts/train_real.sh", *tiny],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    pre_ckpt = torch.load(tmp_path / "real/pretrain/checkpoints/last.ckpt", weights_only=False)
    fine_ckpt = torch.load(tmp_path / "real/finetune/checkpoints/last.ckpt", weights_only=False)
    assert pre_ckpt["global_step"] == 3 and fine_ckpt["global_step"] == 3
    # the fine-tuning run started from the pretrained weights (3 Adam steps of lr 1e-3 move each by at
    # most about 3e-3, a fresh initialisation by far more), then trained on real scenes
    pre_w, fine_w = pre_ckpt["state_dict"], fine_ckpt["state_dict"]
    moved = {k: (fine_w[k] - pre_w[k]).abs().max().item() for k in pre_w if pre_w[k].is_floating_point()}
    assert max(moved.values()) < 0.01 and max(moved.values()) > 0
    summary = json.loads((tmp_path / "real/eval/summary.json").read_text())
    methods = {(r["method"], r["outlier_rate"]) for r in summary["rows"]}
    for name in ("bpnp", "bpnp (no PnP layer)", "retrieved pose", "oracle", "random"):
        assert (name, None) in methods and (name, 0.5) in methods
