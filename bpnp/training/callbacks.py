"""Training callbacks: the whole run config and pictures of what the network matches, logged to the
experiment logger (Weights & Biases by default)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger
from torch.utils.data import DataLoader

from bpnp.data.sample import Batch


def find_wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    """The trainer's first :class:`WandbLogger`, or None."""
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def first_problems(trainer: pl.Trainer, count: int) -> Batch | None:
    """The first ``count`` problems of the (first) validation set, collated as its loader does."""
    loaders = trainer.val_dataloaders
    loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
    if not isinstance(loader, DataLoader) or count <= 0:
        return None
    dataset = loader.dataset
    samples = [dataset[i] for i in range(min(count, len(dataset)))]
    return loader.collate_fn(samples) if samples else None


class LoggedSaveConfig(SaveConfigCallback):
    """Write ``config.yaml`` into the log folder as Lightning does, and also record the whole parsed
    config (trainer, model, data: what reproduces the run) in every logger under ``config``; the
    loggers otherwise see only the module's and data module's hyper-parameters."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.loggers:
            return
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class ValidationImages(pl.Callback):
    """Log correspondence pictures (2D matches, 3D scene, transport plan) of a fixed set of
    validation problems, the first ``num_problems`` of the val set, every ``every_n_epochs``.

    Only active with a :class:`WandbLogger` and on the global-zero process; a no-op otherwise. The
    same problems every time, so the pictures show how one problem's matches evolve.

    Args:
        every_n_epochs: log after the validation of every N-th epoch.
        num_problems: how many validation problems to draw.
        render_3d: include the 3D scene picture (Open3D off-screen, the slowest picture).
        prefix: key prefix of the logged images.
    """

    def __init__(
        self, every_n_epochs: int = 1, num_problems: int = 4, render_3d: bool = True, prefix: str = "val_viz"
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs}: must be at least 1")
        self.every_n_epochs = every_n_epochs
        self.num_problems = num_problems
        self.render_3d = render_3d
        self.prefix = prefix
        self._batch: Batch | None = None
        self._last_epoch = -1

    def due(self, trainer: pl.Trainer) -> bool:
        """Whether this validation should log pictures."""
        return (
            not trainer.sanity_checking
            and trainer.is_global_zero
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
            and trainer.current_epoch != self._last_epoch  # once per epoch with several val checks
            and find_wandb_logger(trainer) is not None
        )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.due(trainer):
            return
        if self._batch is None:
            self._batch = first_problems(trainer, self.num_problems)
        if self._batch is None:
            return
        self._last_epoch = trainer.current_epoch
        images = self.pictures(pl_module, self._batch)
        find_wandb_logger(trainer).log_metrics(images, step=trainer.global_step)

    def pictures(self, pl_module: pl.LightningModule, batch: Batch) -> dict[str, list]:
        """``wandb.Image`` lists keyed ``{prefix}/{kind}`` of the module's answer on ``batch``."""
        from bpnp.viz import wandb_images

        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                out = pl_module(batch.to(pl_module.device), with_pose=True)
                answer = pl_module.method_output(out).detach_cpu()
        finally:
            pl_module.train(was_training)
        return wandb_images(batch, answer, list(range(len(batch))), self.render_3d, self.prefix)
