"""Pictures of a problem and of a method's answer: correspondences in the image, the 3D scene with
camera frustums, and the transport plan. All headless; every drawer returns an RGB uint8 array
(ready for ``wandb.Image``) and :func:`save_problem_images` writes PNGs."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from bpnp.data.sample import Batch
from bpnp.metrics.output import MethodOutput
from bpnp.viz.draw2d import draw_matches
from bpnp.viz.plan import plot_plan
from bpnp.viz.problem import ProblemView, problem_view
from bpnp.viz.render3d import render_scene

log = logging.getLogger(__name__)


def problem_images(
    batch: Batch, out: MethodOutput | None, b: int, render_3d: bool = True, render_backend: str | None = None
) -> dict[str, np.ndarray]:
    """Every picture of problem ``b``: ``matches_2d``, ``scene_3d`` (if ``render_3d``; see
    :func:`render_scene` for ``render_backend``) and ``plan`` (if the method returns one), as RGB
    uint8 arrays."""
    view = problem_view(batch, out, b)
    images = {"matches_2d": draw_matches(view)}
    if render_3d:
        images["scene_3d"], _ = render_scene(view, backend=render_backend)
    if view.plan is not None:
        images["plan"] = plot_plan(view)
    return images


def write_png(path: Path | str, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def save_problem_images(
    batch: Batch,
    out: MethodOutput | None,
    b: int,
    out_dir: Path | str,
    stem: str,
    render_3d: bool = True,
    render_backend: str | None = None,
) -> list[Path]:
    """Write ``{stem}_{kind}.png`` for every picture of problem ``b``; returns the paths."""
    images = problem_images(batch, out, b, render_3d, render_backend)
    return [write_png(Path(out_dir) / f"{stem}_{kind}.png", img) for kind, img in images.items()]


def wandb_images(
    batch: Batch, out: MethodOutput | None, indices: list[int], render_3d: bool = True, prefix: str = "viz"
) -> dict[str, list]:
    """Pictures of problems ``indices`` as ``wandb.Image`` lists keyed ``{prefix}/{kind}``, ready for
    ``wandb.log`` (or ``WandbLogger.experiment.log``) in a validation epoch."""
    import wandb

    logged: dict[str, list] = {}
    for b in indices:
        for kind, img in problem_images(batch, out, b, render_3d).items():
            caption = batch.id[b] if b < len(batch.id) and batch.id[b] else f"problem {b}"
            logged.setdefault(f"{prefix}/{kind}", []).append(wandb.Image(img, caption=caption))
    return logged


__all__ = [
    "ProblemView",
    "draw_matches",
    "plot_plan",
    "problem_images",
    "problem_view",
    "render_scene",
    "save_problem_images",
    "wandb_images",
    "write_png",
]
