"""The training command line: every shipped config parses, the download-free ones train one step
(fast_dev_run), and bad keys or values fail with a message naming them."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from jsonargparse import Namespace
from training_utils import CONFIGS, ROOT, SHARED_DATA, STATUE, TINY, write_config

from bpnp.cli.configs import composed_section
from bpnp.cli.train import cli_main, root_outputs
from bpnp.data import BlindPnPDataModule

TUM = SHARED_DATA / "rgbd" / "tum_sample"

DATA_CONFIGS = ["synthetic", "synthetic_full", "modelnet40", "megadepth", "nyu", "bpnpnet_archive"]
SOURCES = {"synthetic": "synthetic", "synthetic_full": "synthetic", "modelnet40": "modelnet40",
           "megadepth": "colmap", "nyu": "rgbd", "bpnpnet_archive": "bpnpnet_archive"}  # fmt: skip

pytestmark = pytest.mark.usefixtures("isolated")


def printed_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_config_prints_a_complete_config(name, capsys):
    cfg = printed_config(capsys, "--config", str(CONFIGS / f"{name}.yaml"))
    assert cfg["data"]["source"] == SOURCES[name]
    assert set(cfg) >= {"trainer", "model", "data", "seed_everything"}
    callbacks = [c["class_path"] for c in cfg["trainer"]["callbacks"]]
    assert "bpnp.training.callbacks.ValidationImages" in callbacks
    assert any(c.endswith("ModelCheckpoint") for c in callbacks)
    logger = cfg["trainer"]["logger"]
    logger = logger[0] if isinstance(logger, list) else logger
    assert logger["class_path"].endswith("WandbLogger")
    # every config writes under its own folder, so runs of different configs never mix; loggers and
    # checkpoints are relative to it
    assert cfg["trainer"]["default_root_dir"] == f"outputs/{name}"
    assert logger["init_args"]["save_dir"] == "."


def test_full_protocol_config_has_bpnpnet_settings(capsys):
    cfg = printed_config(capsys, "--config", str(CONFIGS / "synthetic_full.yaml"))
    net = cfg["model"]["net"]
    assert (net["gamma"], net["sinkhorn_iters"], net["blocks"], net["knn"]) == (10.0, 100, 12, 0)
    assert cfg["data"]["options"] == {"num_points": 1000, "max_rotation_deg": 180.0}


def test_presets_and_overrides_apply_on_top(capsys):
    cfg = printed_config(
        capsys,
        "--config", str(CONFIGS / "megadepth.yaml"), "--config", str(CONFIGS / "trainer" / "cpu.yaml"),
        "--data.root", "elsewhere", "--model.net.blocks", "2",
    )  # fmt: skip
    assert cfg["trainer"]["accelerator"] == "cpu" and cfg["data"]["root"] == "elsewhere"
    assert cfg["model"]["net"]["blocks"] == 2 and cfg["model"]["net"]["dustbin"] is True


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--model.net.nonexistent", "1"], "nonexistent"),
        (["--model.net.blocks", "many"], "blocks"),
        (["--trainer.max_stepz", "3"], "max_stepz"),
        (["--data.batch_size", "-"], "batch_size"),
    ],
)
def test_invalid_key_or_type_fails_naming_it(args, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--model.lr_schedule", "bogus"], "lr_schedule"),
        (["--data.source", "nowhere"], "data source 'nowhere'"),
        (["--data.m_max", "2"], "m_max=2"),
    ],
)
def test_invalid_value_fails_naming_it(args, named, tmp_path):
    cfg = write_config(tmp_path / "trainer.yaml", tmp_path, fast_dev_run=True)
    with pytest.raises(ValueError, match=named):
        cli_main(["fit", "--config", str(cfg), *TINY, *args])


def fast_dev_run(tmp_path, config: str, *overrides: str):
    """One training and one validation batch of ``config`` through the real entry point."""
    preset = write_config(tmp_path / "trainer.yaml", tmp_path, fast_dev_run=True)
    cli = cli_main(["fit", "--config", str(CONFIGS / config), "--config", str(preset), *overrides])
    trainer = cli.trainer
    assert trainer.state.finished and trainer.global_step == 1
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/loss_corr", "val/loss_corr", "val/rotation_error_deg/q50"} <= set(metrics)
    assert all(v.isfinite() for k, v in metrics.items() if "loss" in k)
    return cli


def test_fast_dev_run_synthetic(tmp_path):
    fast_dev_run(tmp_path, "synthetic.yaml", *TINY)


def test_fast_dev_run_synthetic_full_protocol(tmp_path):
    # BPnPNet's network as configured (12 blocks, 100 Sinkhorn iterations); point caps for speed
    cli = fast_dev_run(
        tmp_path, "synthetic_full.yaml",
        "--data.m_max", "48", "--data.n_max", "48", "--data.batch_size", "2", "--data.num_workers", "0",
        "--model.net.ransac.iterations", "50",
    )  # fmt: skip
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert batch.points2d.shape[1] == 48 and batch.points3d.shape[1] == 48
    assert cli.model.net.config.blocks == 12 and cli.model.net.config.sinkhorn_iters == 100


@pytest.mark.skipif(not STATUE.is_dir(), reason=f"COLMAP sample {STATUE} absent")
def test_fast_dev_run_colmap_scene(tmp_path):
    cli = fast_dev_run(
        tmp_path, "megadepth.yaml",
        "--data.root", str(STATUE), "--data.m_max", "128", "--data.n_max", "128",
        "--data.options.split_by", "image",  # one model: its images are split
        "--data.batch_size", "2", "--data.num_workers", "0",
        "--model.net.blocks", "1", "--model.net.ransac.iterations", "50",
    )  # fmt: skip
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert batch.points2d.shape[1] <= 128 and batch.points3d.shape[1] <= 128
    assert cli.model.net.sinkhorn.dustbin is not None


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["modelnet40", "bpnpnet_archive", "nyu"])
def test_data_section_of_download_configs_builds_its_source(name, tmp_path):
    """The ``options`` of a source are free-form in the config, so build each source once on a small
    stand-in of its layout (generated meshes and archive; the TUM RGB-D frame for NYU) with the
    config's own options: a misspelt option fails here rather than after a download."""
    data = composed_section(CONFIGS / f"{name}.yaml", "data")
    bench = load_script("bench_data")
    if name == "modelnet40":
        data["root"] = str(bench.make_modelnet(tmp_path / "modelnet", meshes=4))
    elif name == "bpnpnet_archive":
        data["root"] = str(bench.make_archive(tmp_path / "archive", samples=4))
    else:
        if not TUM.is_dir():
            pytest.skip(f"RGB-D sample {TUM} absent")
        # the .mat file carries NYU's intrinsics; the folder stand-in needs TUM's (freiburg default)
        data["root"], data["options"]["intrinsics"] = str(TUM), [525.0, 525.0, 319.5, 239.5]
        data["options"]["split_by"] = "frame"  # one sequence: a scene split needs several
    dm = BlindPnPDataModule(**{**data, "num_workers": 0, "m_max": 64, "n_max": 64})
    sample = dm.dataset("train")[0]
    assert 4 <= len(sample.points2d) <= 64 and 4 <= len(sample.points3d) <= 64
    assert sample.num_inliers >= 4


def test_main_job_evaluates_on_the_data_it_trained_on():
    main = load_script("main")
    overrides = ["--trainer.max_epochs", "1", "--data.options", "{num_points: 64}", "--data.seed=3",
                 "--model.lr", "0.01", "--data.outlier_rate_2d", "0.5"]  # fmt: skip
    assert main.data_overrides(overrides) == [
        "--data.options",
        "{num_points: 64}",
        "--data.seed=3",
        "--data.outlier_rate_2d",
        "0.5",
    ]


def test_default_root_dir_moves_every_output(tmp_path):
    # the shipped config's loggers and checkpoints are relative to trainer.default_root_dir
    root = tmp_path / "elsewhere"
    cli_main(["fit", *TINY, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "2",
              "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
              "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert any((root / "csv").rglob("hparams.yaml")) and (root / "config.yaml").is_file()
    assert not (tmp_path / "outputs").exists()  # the working folder is untouched


def test_experiments_compose_their_parts_by_concern(capsys):
    """configs/colmap_scenes.yaml is a compose list (trainer, logging, model, data) plus overrides."""
    cfg = printed_config(capsys, "--config", str(CONFIGS / "colmap_scenes.yaml"))
    net = cfg["model"]["net"]
    # model/recipe.yaml, with the experiment's own settings on top
    assert (net["knn"], net["blocks"], net["sinkhorn_iters"], net["ransac"]["iterations"]) == (10, 4, 50, 200)
    assert net["ransac"]["threshold"] == 0.004 and net["input3d"] == "bearings"
    assert net["view_search"] is False
    # logging/csv.yaml replaces the default loggers and callbacks whole
    assert [x["class_path"] for x in cfg["trainer"]["logger"]] == ["pytorch_lightning.loggers.CSVLogger"]
    assert [x["init_args"]["filename"] for x in cfg["trainer"]["callbacks"]] == ["best-{step:06d}"]
    assert cfg["trainer"]["gradient_clip_val"] == 1.0  # trainer/default.yaml
    assert cfg["data"]["options"]["scenes"]["test"] == ["buzz_toy_shelf", "computer_mouse", "kumamon_plush"]
    full = printed_config(capsys, "--config", str(CONFIGS / "synthetic_full.yaml"))
    checkpoint, _, images = full["trainer"]["callbacks"]  # logging/rotation_median.yaml
    assert checkpoint["init_args"]["monitor"] == "val/rotation_error_deg/q50"
    assert images["init_args"]["every_n_epochs"] == 5


def test_compose_lists_files_relative_to_the_config_and_names_a_bad_entry(tmp_path, capsys):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.yaml").write_text("model:\n  lr: 0.5\n  net:\n    blocks: 3\n")
    (tmp_path / "parts" / "b.yaml").write_text("compose: [a.yaml]\nmodel:\n  net:\n    knn: 4\n")
    (tmp_path / "exp.yaml").write_text("compose: [parts/b.yaml]\nmodel:\n  lr: 0.25\n")
    cfg = printed_config(capsys, "--config", str(tmp_path / "exp.yaml"))
    assert (cfg["model"]["lr"], cfg["model"]["net"]["blocks"], cfg["model"]["net"]["knn"]) == (0.25, 3, 4)
    (tmp_path / "bad.yaml").write_text("compose: [parts/missing.yaml]\n")
    with pytest.raises(FileNotFoundError, match=r"bad\.yaml: composed config parts/missing\.yaml not found"):
        cli_main(["fit", "--config", str(tmp_path / "bad.yaml"), "--print_config"])
    (tmp_path / "loop.yaml").write_text("compose: [loop.yaml]\n")
    with pytest.raises(ValueError, match="composes itself"):
        cli_main(["fit", "--config", str(tmp_path / "loop.yaml"), "--print_config"])
    (tmp_path / "odd.yaml").write_text("compose: parts/a.yaml\n")
    with pytest.raises(ValueError, match="'compose' must be a list of config files"):
        cli_main(["fit", "--config", str(tmp_path / "odd.yaml"), "--print_config"])


def test_an_unnamed_wandb_run_is_named_after_the_output_folder():
    wandb = Namespace(class_path="pytorch_lightning.loggers.WandbLogger", init_args=Namespace(name=None))
    trainer = Namespace(default_root_dir="outputs/my_run", logger=[wandb], callbacks=[])
    root_outputs(trainer)
    assert trainer.logger[0].init_args.name == "my_run"
    trainer.logger[0].init_args.name = "chosen"
    root_outputs(trainer)
    assert trainer.logger[0].init_args.name == "chosen"
