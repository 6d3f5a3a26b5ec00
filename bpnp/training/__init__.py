"""Training: losses, the LightningModule and the command line."""

from bpnp.training.losses import (
    correspondence_loss,
    dustbin_nll,
    pose_weight,
    rotation_loss,
    translation_loss,
)
from bpnp.training.module import BlindPnPModule

__all__ = [
    "BlindPnPModule",
    "correspondence_loss",
    "dustbin_nll",
    "pose_weight",
    "rotation_loss",
    "translation_loss",
]
