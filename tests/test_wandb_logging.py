"""Weights & Biases logging: an offline run records the whole config, every loss and metric and the
validation pictures on disk; with ``WANDB_MODE=disabled`` nothing is written."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from training_utils import TINY, write_config

from bpnp.cli.train import cli_main
from bpnp.training.callbacks import ValidationImages

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402 (after the skip)

BLOCK = 32768  # the run file is a LevelDB-style log of 32 KiB blocks


@pytest.fixture(autouse=True)
def _isolated(isolated, tmp_path, monkeypatch):
    # wandb's own caches and settings stay in the test folder as well
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    # 3D pictures through matplotlib: a second Open3D offscreen renderer in the test process (the
    # viz tests hold one) makes Filament abort the interpreter at exit.
    monkeypatch.setenv("BPNP_RENDER_BACKEND", "matplotlib")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    # A run another test left open (e.g. a disabled one) would be reused by WandbLogger.
    wandb.finish()
    wandb.teardown()
    yield
    # wandb reads WANDB_MODE once per process: reset it so the next test's mode applies
    wandb.finish()
    wandb.teardown()


def run_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The records of an offline run's ``run-<id>.wandb`` file (what ``wandb sync`` uploads): a
    7-byte file header, then chunks with a 7-byte header (checksum, length, type: 1 whole record,
    2 / 3 / 4 first / middle / last piece), never straddling a block boundary."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        kind = data[pos + 6] if left >= 7 else 0
        if kind == 0:  # block padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> tuple[dict, set[str], set[str]]:
    """The run's config (key -> value), history keys and summary keys."""
    config, history, summary = {}, set(), set()
    for record in run_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({item_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            history |= {item_key(i) for i in record.history.item}
        elif kind == "summary":
            summary |= {item_key(i) for i in record.summary.update}
    return config, history, summary


def fit_with_wandb(tmp_path: Path, save_dir: Path) -> None:
    logger = {"class_path": "pytorch_lightning.loggers.WandbLogger",
              "init_args": {"project": "bpnp-test", "name": "tiny", "save_dir": str(save_dir)}}  # fmt: skip
    pictures = {"class_path": "bpnp.training.callbacks.ValidationImages", "init_args": {"num_problems": 2}}
    cfg = write_config(tmp_path / "wandb.yaml", tmp_path, [pictures], logger,
                       max_epochs=1, num_sanity_val_steps=0, log_every_n_steps=1)  # fmt: skip
    cli_main(["fit", "--config", str(cfg), *TINY])
    wandb.finish()  # flush and close the run, as the end of the process would


def test_offline_run_holds_config_metrics_and_pictures(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    save_dir = tmp_path / "logs"
    fit_with_wandb(tmp_path, save_dir)

    runs = sorted((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {save_dir / 'wandb'}"
    run_file = next(runs[0].glob("run-*.wandb"))
    # wandb's service may still be writing (config updates are flushed late): wait for the exit record.
    deadline = time.monotonic() + 120
    while not any(r.WhichOneof("record_type") == "exit" for r in run_records(run_file)):
        assert time.monotonic() < deadline, f"{run_file} has no exit record"
        time.sleep(0.5)
    config, history, summary = read_run(run_file)

    # the whole command-line config, trainer included, and the hyper-parameters
    full = config["config"]
    assert full["trainer"]["max_epochs"] == 1 and full["model"]["net"]["blocks"] == 1
    assert full["data"]["options"] == {"num_points": 32, "max_rotation_deg": 45}
    assert config["lr"] == 1e-3 and config["source"] == "synthetic" and config["net"]["blocks"] == 1

    metrics = {"train/loss", "train/loss_corr", "train/inlier_mass", "val/loss_corr", "val/inlier_mass",
               "val/rotation_error_deg/q50", "val/recall/5deg_5pct", "val/topk_inlier_ratio"}  # fmt: skip
    assert metrics <= history and metrics <= summary
    # the validation pictures of the callback, one image per problem and kind
    assert {"val_viz/matches_2d/_type", "val_viz/plan/_type", "val_viz/scene_3d/_type"} <= history
    media = runs[0] / "files" / "media" / "images" / "val_viz"
    for kind in ("matches_2d", "plan", "scene_3d"):
        assert len(list(media.glob(f"{kind}_*.png"))) == 2, kind


def test_disabled_mode_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    save_dir = tmp_path / "logs"
    fit_with_wandb(tmp_path, save_dir)
    assert not (save_dir / "wandb").exists()
    assert not (tmp_path / "wandb").exists()
    # only Lightning's own copy of the config is there
    assert sorted(p.name for p in save_dir.iterdir()) == ["config.yaml"]


def test_pictures_only_with_a_wandb_logger_and_on_schedule(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    quiet = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False}
    csv_only = pl.Trainer(logger=CSVLogger(tmp_path), **quiet)
    with_wandb = pl.Trainer(logger=[CSVLogger(tmp_path), WandbLogger(save_dir=str(tmp_path))], **quiet)
    assert not ValidationImages().due(csv_only)
    assert ValidationImages().due(with_wandb)  # epoch 0 is the first of every epoch
    assert not ValidationImages(every_n_epochs=2).due(with_wandb)  # first due after epoch 1
    with pytest.raises(ValueError, match="every_n_epochs"):
        ValidationImages(every_n_epochs=0)
