"""A two-process (gloo) run for ``test_training_ddp.py``, launched as a script so that Lightning can
start the second process the same way.

    python tests/ddp_check.py nan OUT.json     # rank 1 alone sees a non-finite loss at step 1
    python tests/ddp_check.py val OUT.json [N]  # validate N problems on the given number of devices

Rank 0 writes what the test checks to ``OUT.json``.
"""

from __future__ import annotations

import json
import sys

import pytorch_lightning as pl
import torch

from bpnp.data import BlindPnPDataModule
from bpnp.models import NetConfig
from bpnp.training.module import BlindPnPModule


class NaNOnRankOne(BlindPnPModule):
    """The real module, whose loss on rank 1 at global step 1 is NaN."""

    def losses(self, batch, out, w_pose):
        terms = super().losses(batch, out, w_pose)
        if self.global_rank == 1 and self.global_step == 1 and self.training:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


class Snapshots(pl.Callback):
    """Parameters after every optimizer step (this rank's copy)."""

    def __init__(self) -> None:
        self.after: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.after.append(torch.cat([p.detach().flatten() for p in pl_module.parameters()]).clone())


def datamodule(val_samples: int) -> BlindPnPDataModule:
    return BlindPnPDataModule(
        options={"num_points": 32, "max_rotation_deg": 45}, train_samples=16, val_samples=val_samples,
        test_samples=4, batch_size=4, eval_batch_size=2, num_workers=0,
    )  # fmt: skip


def main(mode: str, out: str, devices: int = 2, val_samples: int = 5) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0, workers=True)
    net = NetConfig(blocks=1, ransac={"iterations": 50})
    trainer_args = dict(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    if mode == "nan":
        # the pose loss is on from the first step, so the pose stage runs in training too
        model = NaNOnRankOne(net=net, pose_loss_start_epoch=0, pose_loss_ramp_epochs=0, pose_loss_unit="step")
        snaps = Snapshots()
        trainer = pl.Trainer(max_steps=3, limit_val_batches=0, callbacks=[snaps], **trainer_args)
        trainer.fit(model, datamodule=datamodule(4))
        gathered = trainer.strategy.all_gather(torch.stack(snaps.after))  # (ranks, steps, P)
        if trainer.global_rank == 0:
            result = {
                "global_step": trainer.global_step,
                "skipped_steps": model.skipped_steps,
                "ranks_agree": bool((gathered[0] == gathered[1]).all()),
                "skipped_step_moved": float((gathered[0, 1] - gathered[0, 0]).abs().max()),
                "other_steps_moved": float((gathered[0, 2] - gathered[0, 1]).abs().max()),
            }
            json.dump(result, open(out, "w"))
    else:
        model = BlindPnPModule(net=net)
        trainer = pl.Trainer(**trainer_args)
        metrics = trainer.validate(model, datamodule=datamodule(val_samples), verbose=False)[0]
        if trainer.global_rank == 0:
            json.dump({k: float(v) for k, v in metrics.items()}, open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
    # Join gloo's threads before the interpreter exits: left to shutdown they can abort the process
    # ("terminate called without an active exception") after the work is done.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
