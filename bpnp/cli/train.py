"""``bpnp fit|validate|test|predict --config ...``: LightningCLI over the module and the data module.

``configs/synthetic.yaml`` is the embedded default, so ``bpnp fit`` alone trains on built-in synthetic
data; further ``--config`` files (experiments, ``configs/trainer/*.yaml`` presets) and
``--section.key value`` overrides apply on top. A config file may compose others by concern
(:mod:`bpnp.cli.configs`). Relative ``save_dir`` of loggers and ``dirpath`` of checkpoint callbacks
are relative to ``trainer.default_root_dir``, and a Weights & Biases run without a name is named
after that folder, so ``--trainer.default_root_dir DIR`` moves and names every output.
Experiments are logged to Weights & Biases, offline unless an API key is configured (``wandb login``)
or ``WANDB_MODE`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import difflib
import netrc
import os
import sys
import warnings
from importlib import resources
from pathlib import Path

from pytorch_lightning.cli import LightningCLI

from bpnp.cli.configs import config_args, expand_configs
from bpnp.data import BlindPnPDataModule
from bpnp.models import NetConfig
from bpnp.training.callbacks import LoggedSaveConfig
from bpnp.training.module import BlindPnPModule

# Shipped inside the package (``configs/`` at the repository root links here), so an installed
# ``bpnp fit`` finds its default config from any folder.
CONFIG_DIR = Path(str(resources.files("bpnp") / "configs"))
DEFAULT_CONFIG = CONFIG_DIR / "synthetic.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def wandb_logged_in() -> bool:
    """Whether wandb has credentials (an API key in the environment or in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def default_wandb_mode() -> None:
    """Offline logging unless the user logged in or chose a mode (``WANDB_MODE``)."""
    if "WANDB_MODE" not in os.environ and not wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"


class BlindPnPCLI(LightningCLI):
    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except SystemExit as e:
            if e.code not in (0, None):
                suggest_keys(parser, list(sys.argv[1:] if args is None else args))
            raise

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        root_outputs(cfg.trainer)


def suggest_keys(parser, args: list[str]) -> None:
    """After a parse error, name the closest valid option of every ``--key`` that is not one."""
    sub = parser
    actions = getattr(parser, "_subcommands_action", None)
    if actions is not None and args and args[0] in actions.choices:
        sub = actions.choices[args[0]]
    try:
        valid = {f"--{k}" for k in sub.get_defaults().keys()}
    except Exception:  # the defaults themselves may fail to build; then there is nothing to suggest
        return
    valid |= {f"--model.net.{f.name}" for f in dataclasses.fields(NetConfig)}  # a nested dataclass
    for arg in args:
        key = arg.split("=", 1)[0]
        if not key.startswith("--") or key in valid or any(v.startswith(key + ".") for v in valid):
            continue
        close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.8)
        if close:
            print(f"bpnp: unknown option {key}: did you mean {close[0]}?", file=sys.stderr)


def root_outputs(trainer) -> None:
    """Put relative logger ``save_dir`` and checkpoint ``dirpath`` under ``trainer.default_root_dir``,
    and name an unnamed Weights & Biases run after that folder."""
    root = Path(trainer.get("default_root_dir") or ".")
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        args = logger.get("init_args") if hasattr(logger, "get") else None
        if args is not None and args.get("save_dir") is not None and not Path(args.save_dir).is_absolute():
            args.save_dir = str(root / args.save_dir)
        wandb = str(logger.get("class_path", "")).endswith("WandbLogger") if hasattr(logger, "get") else False
        if wandb and args is not None and args.get("name") is None:
            args.name = root.resolve().name
    for callback in trainer.get("callbacks") or []:
        args = callback.get("init_args") if hasattr(callback, "get") else None
        if (
            str(callback.get("class_path", "")).endswith("ModelCheckpoint")
            and args is not None
            and args.get("dirpath") is not None
            and not Path(args.dirpath).is_absolute()
        ):
            args.dirpath = str(root / args.dirpath)


def with_default_config(args: list[str], run: bool) -> list[str]:
    """``args`` with the default experiment's configs first (after the subcommand) and every config
    file's composition expanded."""
    args = expand_configs(args)
    at = 1 if run and args and args[0] in SUBCOMMANDS else 0
    if (run and at == 0) or not DEFAULT_CONFIG.is_file():  # no subcommand: help or an error follows
        return args
    return [*args[:at], *config_args(DEFAULT_CONFIG), *args[at:]]


def cli_main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the command line; ``args`` as ``sys.argv[1:]``."""
    default_wandb_mode()
    args = with_default_config(list(sys.argv[1:] if args is None else args), run)
    with warnings.catch_warnings():
        # The expanded arguments stand for the command line, which LightningCLI would warn about.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return BlindPnPCLI(
            BlindPnPModule,
            BlindPnPDataModule,
            args=args,
            run=run,
            seed_everything_default=0,
            save_config_callback=LoggedSaveConfig,
            save_config_kwargs={"overwrite": True},
        )
