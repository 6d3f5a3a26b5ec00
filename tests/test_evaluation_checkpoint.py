"""Evaluating a trained checkpoint: a tiny network trained for a few steps through the training command
line, then ``scripts/evaluate.py --ckpt PATH`` writes the table, JSON, CSV and plot with the
network's rows, its "no PnP layer" row and the features + Hungarian baseline."""

from __future__ import annotations

import csv
import json

import cv2
import pytest
import pytorch_lightning as pl
import torch
from training_utils import TINY, checkpoint_callback, write_config

from bpnp.cli.evaluate import evaluate_main, load_method_from_checkpoint
from bpnp.cli.train import cli_main
from bpnp.data import ObjectProtocol, SyntheticDataset, collate
from bpnp.models import NetConfig
from bpnp.training import BlindPnPModule

DATA = ["--data.test_samples", "4", "--data.options", "{num_points: 32, max_rotation_deg: 45}",
        "--data.num_workers", "0"]  # fmt: skip
METHODS = ["bpnp", "bpnp (no PnP layer)", "features+hungarian", "oracle"]

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def checkpoint(tmp_path):
    cfg = write_config(tmp_path / "train.yaml", tmp_path / "run", [checkpoint_callback(tmp_path / "ckpt")],
                       num_sanity_val_steps=0, max_steps=3)  # fmt: skip
    cli_main(["fit", "--config", str(cfg), *TINY])
    path = tmp_path / "ckpt" / "last.ckpt"
    assert path.is_file()
    return path


def test_evaluate_a_trained_checkpoint_end_to_end(checkpoint, tmp_path):
    out = tmp_path / "eval"
    rows = evaluate_main([*DATA, "--ckpt", str(checkpoint), "--baseline", "oracle", "--out", str(out),
                          "--progress", "false"])  # fmt: skip
    assert [r.method for r in rows] == METHODS

    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| Method |") and len(table) == 2 + len(METHODS)
    assert [line.split("|")[1].strip() for line in table[2:]] == METHODS

    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["rows"]] == METHODS
    assert summary["settings"]["ckpt"] == [str(checkpoint)]
    for row in summary["rows"]:
        assert row["num_problems"] == 4 and row["ms_per_problem"] > 0
        assert {"rotation_error_deg", "recall", "reprojection_auc", "topk_inlier_ratio"} <= set(row)
    # the network reports its top-k pairs, so matching precision is measured
    assert 0.0 <= summary["rows"][0]["topk_inlier_ratio"] <= 1.0

    with (out / "problems.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 4 * len(METHODS) and {line["method"] for line in lines} == set(METHODS)

    img = cv2.imread(str(out / "recall.png"))
    assert img is not None and img.std() > 5


def test_checkpoint_methods_are_deterministic_and_in_eval_mode(checkpoint):
    network, hungarian = load_method_from_checkpoint(checkpoint, "cpu")
    assert (network.name, hungarian.name) == ("bpnp", "features+hungarian")
    assert not network.module.training
    ds = SyntheticDataset(
        num_samples=2, split="test", protocol=ObjectProtocol(num_points=32, max_rotation_deg=45)
    )
    batch = collate([ds[i] for i in range(2)])
    first, second = network(batch), network(batch)
    torch.testing.assert_close(first.R, second.R)
    assert first.R_init is not None and first.pairs.shape[:2] == (2, network.module.net.topk(32))
    # timed in two stages (RANSAC pose, then the PnP layer from it), the answer of one forward pass
    one_pass = network.module.method_output(network.module(batch, with_pose=True))
    torch.testing.assert_close(first.R, one_pass.R)
    torch.testing.assert_close(first.t, one_pass.t)
    torch.testing.assert_close(first.R_init, one_pass.R_init)
    assert first.init_seconds is not None and first.init_seconds > 0
    # the Hungarian baseline matches one-to-one on the network's own feature distances
    matched = hungarian(batch)
    pairs = matched.pairs[0][matched.pairs[0, :, 0] >= 0]
    assert len(pairs) == 32 and len(set(pairs[:, 0].tolist())) == len(set(pairs[:, 1].tolist())) == 32


def test_checkpoint_saved_outside_the_cli_loads(tmp_path):
    """A plain ``torch.save`` of a module's weights and hyper-parameters (NetConfig kept as an object),
    as scripts/main.py writes for the untrained network, loads without unrestricted unpickling."""
    module = BlindPnPModule(net=NetConfig(blocks=1, knn=4, feature_dim=16, channels=16))
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__}, path)  # fmt: skip
    network, _ = load_method_from_checkpoint(path, "cpu", name="bpnp[plain]")
    assert network.name == "bpnp[plain]" and network.module.net.config.feature_dim == 16
    for key, value in module.state_dict().items():
        torch.testing.assert_close(network.module.state_dict()[key], value)
