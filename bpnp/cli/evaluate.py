"""Command lines of ``scripts/evaluate.py`` and ``scripts/visualise.py``: the data module's arguments
(a data config file plus ``--data.KEY`` overrides, as in training configs), the methods to run
(``--baseline`` names and / or ``--ckpt`` checkpoints), and the evaluation options."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from torch.utils.data import DataLoader, Dataset, Subset

from bpnp.cli.configs import composed_section
from bpnp.data import BlindPnPDataModule, collate
from bpnp.data.outliers import with_outlier_rate
from bpnp.evaluation.baselines import BASELINES, RandomBaseline, RansacConfig
from bpnp.evaluation.evaluate import EvalRow, evaluate_sweep
from bpnp.evaluation.report import SCALES, write_reports
from bpnp.metrics.output import Method

log = logging.getLogger(__name__)


def load_method_from_checkpoint(
    path: str | Path,
    device: str = "cpu",
    ransac: RansacConfig | None = None,
    name: str | None = None,
    pose: dict | None = None,
) -> list[Method]:
    """The methods a trained checkpoint contributes to the table: the network (``name``, default
    ``bpnp``) and the features + Hungarian baseline on its features (through
    :class:`~bpnp.evaluation.baselines.HungarianMatcher`). The network's "no PnP layer" row comes
    from its ``R_init`` output automatically.

    ``path`` may also be ``pretrained:NAME``, a network shipped with the package.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
    """
    from bpnp.models.pretrained import pretrained_name

    if pretrained_name(str(path)) is None and not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    # Imported here: loading a checkpoint needs the training package, the baselines do not.
    from bpnp.evaluation.network_method import checkpoint_methods

    return checkpoint_methods(path, device, ransac, name, pose)


def _training_config_data(argv: list[str]) -> list[str]:
    """Let ``--data FILE`` name a whole training config: its ``data:`` section (or that section's
    ``init_args``), with the file's composition applied, replaces the file."""
    out = list(argv)
    for k, arg in enumerate(out[:-1]):
        if arg != "--data" or not Path(out[k + 1]).is_file():
            continue
        section = composed_section(out[k + 1], "data")
        if section is not None:
            out[k + 1] = yaml.safe_dump(section.get("init_args", section), default_flow_style=True).strip()
    return out


def base_parser(description: str) -> ArgumentParser:
    """Options shared by both scripts: data, split, methods, RANSAC, device."""
    p = ArgumentParser(description=description, default_env=False)
    p.add_argument("--config", action=ActionConfigFile, help="a config file of this command's own options")
    p.add_class_arguments(BlindPnPDataModule, "data", instantiate=False)
    p.add_argument("--split", type=str, default="test", help="train, val or test")
    p.add_argument(
        "--baseline",
        type=list[str] | str,
        default=[],
        help=f"baseline methods ({', '.join(BASELINES)}): --baseline oracle or --baseline [oracle,random]",
    )
    p.add_argument(
        "--ckpt", type=list[str] | str, default=[], help="trained checkpoints to evaluate: PATH or [PATH,...]"
    )
    p.add_class_arguments(RansacConfig, "ransac", instantiate=False)
    p.add_argument(
        "--random_budget_ms",
        type=float | None,
        default=None,
        help="time per problem of the random baseline (default: the first other method's)",
    )
    p.add_argument(
        "--pose",
        type=dict | None,
        default=None,
        help="pose-stage settings of the checkpoints' networks, e.g. '{reference_init: true}'",
    )
    p.add_argument("--limit", type=int | None, default=None, help="evaluate only the first N problems")
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--out", type=str, default="runs/eval", help="output folder")
    return p


def parse(parser: ArgumentParser, argv: Sequence[str] | None) -> Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parser.parse_args(_training_config_data(argv))
    # One name may be given without brackets.
    cfg.baseline = [cfg.baseline] if isinstance(cfg.baseline, str) else list(cfg.baseline)
    cfg.ckpt = [cfg.ckpt] if isinstance(cfg.ckpt, str) else list(cfg.ckpt)
    if not cfg.baseline and not cfg.ckpt:
        parser.error("give --baseline NAME and / or --ckpt PATH")
    unknown = [b for b in cfg.baseline if b not in BASELINES]
    if unknown:
        parser.error(f"unknown baseline(s) {unknown}: expected {list(BASELINES)}")
    return cfg


def build_methods(cfg: Namespace) -> list[Method]:
    """Checkpoints first, so that the random baseline can copy their time budget."""
    ransac = RansacConfig(**cfg.ransac.as_dict())
    methods: list[Method] = []
    for path in cfg.ckpt:
        # Several checkpoints in one table: rows named after their files.
        name = "bpnp" if len(cfg.ckpt) == 1 else f"bpnp[{Path(path).stem}]"
        found = load_method_from_checkpoint(path, cfg.device, ransac, name, cfg.get("pose"))
        if len(cfg.ckpt) > 1:
            for method in found[1:]:
                method.name = f"{method.name}[{Path(path).stem}]"
        methods += found
    for name in cfg.baseline:
        if name == "random":
            # Cheaper attempts than the oracle's, so that several fit the budget.
            budget_ransac = dataclasses.replace(ransac, iterations=min(ransac.iterations, 50))
            methods.append(RandomBaseline(cfg.random_budget_ms, ransac=budget_ransac, seed=cfg.seed))
        else:
            methods.append(BASELINES[name](ransac=ransac))
    return methods


def build_dataset(cfg: Namespace) -> tuple[BlindPnPDataModule, Dataset]:
    """The data module and the dataset of ``cfg.split``, cut to ``cfg.limit`` problems."""
    dm = BlindPnPDataModule(**cfg.data.as_dict())
    ds = dm.dataset(cfg.split)
    if cfg.limit is not None:
        ds = Subset(ds, range(min(cfg.limit, len(ds))))
    return dm, ds


def loader_factory(dm: BlindPnPDataModule, dataset: Dataset):
    """``rate -> DataLoader`` over the same problems at that outlier rate (None: the data's own)."""

    def make(rate: float | None) -> DataLoader:
        return DataLoader(
            with_outlier_rate(dataset, rate),
            batch_size=dm.eval_batch_size,
            num_workers=dm.num_workers,
            collate_fn=collate,
            pin_memory=dm.pin_memory and torch.cuda.is_available(),
        )

    return make


def parse_rates(text: str | None) -> list[float | None]:
    """``"0,0.25,0.5"`` -> [0.0, 0.25, 0.5]; ``"natural"`` (or ``none``) in the list, None or empty ->
    None there (the data's own outliers)."""
    if not text:
        return [None]
    tokens = [x for x in str(text).strip("[]() ").replace(" ", "").split(",") if x]
    try:
        rates = [None if x.lower() in ("natural", "none", "null") else float(x) for x in tokens]
    except ValueError as e:
        raise ValueError(f"outlier rates {text!r}: expected numbers in [0, 1) or 'natural'") from e
    bad = [r for r in rates if r is not None and not 0.0 <= r < 1.0]
    if bad:
        raise ValueError(f"outlier rates {bad}: each must lie in [0, 1)")
    return rates


def settings(cfg: Namespace) -> dict[str, Any]:
    """The options recorded in summary.json."""
    d = cfg.as_dict()
    d.pop("config", None)
    d["data"] = {k: v for k, v in d["data"].items() if not k.startswith("__")}
    return d


def evaluation_parser() -> ArgumentParser:
    p = base_parser("Pose-accuracy evaluation of baselines and trained checkpoints.")
    p.add_argument(
        "--outlier_rates",
        "--outlier-rates",
        type=str | None,
        default=None,
        help="comma-separated outlier rates, e.g. 0,0.25,0.5,0.75, one row each (default: the data's own)",
    )
    p.add_argument("--scale", type=str, default="relative", help="table thresholds: relative or metric")
    p.add_argument("--progress", type=bool, default=True, help="show progress bars")
    return p


def evaluate_main(argv: Sequence[str] | None = None) -> list[EvalRow]:
    """``scripts/evaluate.py``: evaluate, print the table, write the reports into ``--out``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = evaluation_parser()
    cfg = parse(parser, argv)
    if cfg.scale not in SCALES:
        parser.error(f"--scale {cfg.scale!r}: expected one of {SCALES}")
    try:
        rates = parse_rates(cfg.outlier_rates)
    except ValueError as e:
        parser.error(str(e))
    methods = build_methods(cfg)
    dm, dataset = build_dataset(cfg)
    log.info("%d %s problems, methods: %s", len(dataset), cfg.split, ", ".join(m.name for m in methods))
    if cfg.scale == "metric" and not dm.metric_units:
        parser.error(
            f"--scale metric: the scene units of source {dm.source!r} are not known to be metres (RGB-D "
            "is; pass --data.metric_units true for a metric COLMAP model), so metric recalls would mislead"
        )
    rows = evaluate_sweep(
        methods, loader_factory(dm, dataset), rates, cfg.device, cfg.progress, metric_units=dm.metric_units
    )
    paths = write_reports(rows, cfg.out, cfg.scale, settings(cfg))
    print(paths["table"].read_text())
    for kind, path in paths.items():
        log.info("%s: %s", kind, path)
    return rows
