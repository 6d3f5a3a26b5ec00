"""A trained network as an evaluated :class:`~bpnp.metrics.output.Method`, and the features +
Hungarian baseline on its features."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bpnp.data.sample import Batch
from bpnp.evaluation.baselines import HungarianMatcher, RansacConfig
from bpnp.metrics.output import Method, MethodOutput

if TYPE_CHECKING:  # evaluation stays importable without pulling in Lightning
    from bpnp.training.module import BlindPnPModule


class NetworkMethod:
    """The full network (encoders, Sinkhorn, RANSAC, PnP layer) in eval mode, without gradients.

    Its output carries the RANSAC initial pose and the time taken to reach it, so the evaluation adds
    a "no PnP layer" row timed on its own."""

    def __init__(self, module: BlindPnPModule, name: str = "bpnp") -> None:
        self.module = module.eval()
        self.name = name

    def __call__(self, batch: Batch) -> MethodOutput:
        b, net = batch, self.module.net
        with torch.no_grad():
            # Two stages, timed apart: everything up to the RANSAC pose, then the PnP layer from it.
            _sync(b.points2d.device)
            start = time.perf_counter()
            out = self.module(batch, with_pose=True, refine=False)
            _sync(b.points2d.device)
            init_seconds = time.perf_counter() - start
            if net.config.use_pnp:
                net.refine_pose(out, b.points3d, b.mask2d, b.mask3d)
            result = self.module.method_output(out)
        result.init_seconds = init_seconds
        return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def feature_cost(module: BlindPnPModule, batch: Batch) -> Tensor:
    """The network's cost matrix (B, M, N), ``||f_i - g_j||`` of its unit features, made from the
    batch the way the forward pass makes it (pixels -> normalised coordinates -> bearings)."""
    with torch.no_grad():
        b = batch
        return module.net.match_cost(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d, ref=b.ref_view)[0]


def hungarian_on_features(module: BlindPnPModule, ransac: RansacConfig | None = None) -> HungarianMatcher:
    """The "features + Hungarian" baseline: the network's features matched one-to-one, then RANSAC."""
    module.eval()
    return HungarianMatcher(lambda batch: feature_cost(module, batch), ransac=ransac)


def load_module(path: str | Path, device: str = "cpu", pose: dict | None = None) -> BlindPnPModule:
    """A trained :class:`BlindPnPModule` from a Lightning checkpoint, or ``pretrained:NAME`` for a
    network shipped with the package, on ``device``, in eval mode; ``pose`` overrides pose-stage
    settings (see :meth:`~bpnp.models.BlindPnPNet.set_pose_stage`)."""
    module = _load_module(path, device)
    if pose:
        module.net.set_pose_stage(**pose)
    return module


def _load_module(path: str | Path, device: str) -> BlindPnPModule:
    from bpnp.models import NetConfig
    from bpnp.models.pretrained import pretrained_name, pretrained_state
    from bpnp.nodes import RansacOptions, SolverOptions
    from bpnp.training.module import BlindPnPModule

    name = pretrained_name(str(path))
    if name is not None:
        state = pretrained_state(name)
        module = BlindPnPModule(net=NetConfig.from_dict(state["config"]))
        module.net.load_state_dict(state["state_dict"])
        return module.to(device).eval()

    # Checkpoints written outside LightningCLI keep NetConfig as an object in their hyper-parameters:
    # allow it and its nested options, so loading stays restricted to plain data otherwise.
    with torch.serialization.safe_globals([NetConfig, SolverOptions, RansacOptions]):
        module = BlindPnPModule.load_from_checkpoint(str(path), map_location=torch.device(device))
    return module.to(device).eval()


def checkpoint_methods(
    path: str | Path,
    device: str = "cpu",
    ransac: RansacConfig | None = None,
    name: str | None = None,
    pose: dict | None = None,
) -> list[Method]:
    """The network of checkpoint ``path`` (named ``name``, default ``bpnp``) and the features +
    Hungarian baseline on its features; ``pose``: pose-stage overrides."""
    module = load_module(path, device, pose)
    return [NetworkMethod(module, name or "bpnp"), hungarian_on_features(module, ransac)]
