"""Networks shipped with the package: ``load_pretrained("synthetic")``, ``load_pretrained("colmap")``.

Each file in ``bpnp/models/weights/`` holds a network's :class:`NetConfig` (as a dict) and its state
dict, stripped of the optimiser (1.5 MB instead of 4.4). README's table gives each one's test figures
and the command that trains it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

from bpnp.models.network import BlindPnPNet, NetConfig

# name -> (file, what it was trained on)
PRETRAINED: dict[str, tuple[str, str]] = {
    "synthetic": (
        "synthetic.pt",
        "synthetic, uniform rotations, 256 points, 25 % 2D + 25 % 3D outliers "
        "(configs/recipes/uniform_30min.yaml, 30 CPU minutes)",
    ),
    "colmap": (
        "colmap.pt",
        "the 14 training scenes of configs/colmap_scenes.yaml (real COLMAP models), GoMatch's retrieval "
        "protocol with the top-1 database image as reference view, 50 % outliers, bearing input with the "
        "bearing prior; one re-matching pass (about 10 CPU minutes)",
    ),
}
PREFIX = "pretrained:"


def pretrained_state(name: str) -> dict[str, Any]:
    """The stored ``{"config": dict, "state_dict": ...}`` of a shipped network.

    Raises:
        ValueError: for a name that is not shipped (the shipped ones are listed).
    """
    if name not in PRETRAINED:
        raise ValueError(f"no pretrained network {name!r}: shipped ones are {sorted(PRETRAINED)}")
    with resources.files("bpnp.models").joinpath("weights", PRETRAINED[name][0]).open("rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def load_pretrained(name: str, device: str | torch.device = "cpu") -> BlindPnPNet:
    """A shipped network, in eval mode on ``device`` (``name``: a key of :data:`PRETRAINED`)."""
    state = pretrained_state(name)
    net = BlindPnPNet(NetConfig.from_dict(state["config"]))
    net.load_state_dict(state["state_dict"])
    return net.to(device).eval()


def pretrained_name(ref: str) -> str | None:
    """``"pretrained:synthetic"`` -> ``"synthetic"``; None for anything else (a path)."""
    return ref[len(PREFIX) :] if str(ref).startswith(PREFIX) else None


def network_weights(ref: str) -> dict[str, torch.Tensor]:
    """The network state dict of ``pretrained:NAME`` or of a training checkpoint file (its ``net.``
    entries), to start a training run from (fine-tuning).

    Raises:
        FileNotFoundError: naming a checkpoint path that does not exist.
        ValueError: for an unknown shipped name, or a file without network weights.
    """
    name = pretrained_name(ref)
    if name is not None:
        return pretrained_state(name)["state_dict"]
    if not Path(ref).is_file():
        raise FileNotFoundError(
            f"init_from: checkpoint {ref} not found (expected a .ckpt file or pretrained:NAME)"
        )
    state = torch.load(ref, map_location="cpu", weights_only=False)
    weights = {k[len("net.") :]: v for k, v in state.get("state_dict", {}).items() if k.startswith("net.")}
    if not weights:
        raise ValueError(f"init_from: {ref} holds no network weights (no 'net.*' entries in its state_dict)")
    return weights
