"""From a method's output on a batch to per-problem metric columns, and from columns to the
summary reported in tables and summary.json; plus the same summary as a torchmetrics ``Metric``
for DDP-safe validation inside a LightningModule."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from bpnp.data.sample import Batch
from bpnp.metrics.errors import (
    METRIC_THRESHOLDS,
    QUARTILES,
    RELATIVE_THRESHOLDS,
    REPROJECTION_AUC_PX,
    error_auc,
    failed,
    match_precision_recall,
    nanmean,
    pose_errors,
    pose_recall,
    precision_at_true_count,
    quantiles,
    reprojection_errors,
    scene_extent,
)
from bpnp.metrics.output import MethodOutput

# Per-problem error columns summarised by quartiles, in report order.
ERROR_COLUMNS: tuple[str, ...] = (
    "rotation_error_deg",
    "translation_error",
    "center_error",
    "relative_center_error",
    "reprojection_error_px",
)
# Every per-problem column that problem_metrics returns.
COLUMNS: tuple[str, ...] = (
    *ERROR_COLUMNS,
    "scene_extent",
    "topk_inlier_ratio",
    "match_recall",
    "failed",
    "num_2d",
    "num_3d",
    "num_inliers",
    "pixel_units",
)


def problem_metrics(batch: Batch, out: MethodOutput) -> dict[str, Tensor]:
    """Every per-problem metric of a batch, as float64 CPU tensors of shape (B,).

    ``relative_center_error`` is the camera-centre error divided by :func:`scene_extent`;
    ``topk_inlier_ratio`` is the precision of the method's best K pairs with K the number of true
    matches (:func:`~bpnp.metrics.errors.precision_at_true_count`: ceiling 1 for every method),
    ``match_recall`` the recall of all its pairs (``nan`` when the method gives no pairs).
    """
    batch = batch.to("cpu")
    out = replace(out, plan=None).detach_cpu()  # the (B, m + 1, n + 1) plan is not needed here
    dt = torch.float64
    R, t, R_gt, t_gt = out.R.to(dt), out.t.to(dt), batch.R.to(dt), batch.t.to(dt)
    P3, K = batch.points3d.to(dt), batch.K.to(dt)
    rot, trans, center = pose_errors(R, t, R_gt, t_gt, out.valid)
    extent = scene_extent(P3, batch.match, batch.mask3d)
    if out.pairs is not None:
        _, recall = match_precision_recall(out.pairs.long(), batch.match)
        precision = precision_at_true_count(out.pairs.long(), batch.match, out.scores)
    else:
        precision = recall = torch.full_like(rot, math.nan)
    return {
        "rotation_error_deg": rot,
        "translation_error": trans,
        "center_error": center,
        "relative_center_error": center / extent,
        "reprojection_error_px": reprojection_errors(P3, batch.match, K, R, t, R_gt, t_gt, out.valid),
        "scene_extent": extent,
        "topk_inlier_ratio": precision.to(dt),
        "match_recall": recall.to(dt),
        "failed": failed(R, t, out.valid).to(dt),
        "num_2d": batch.mask2d.sum(1).to(dt),
        "num_3d": batch.mask3d.sum(1).to(dt),
        "num_inliers": (batch.match >= 0).sum(1).to(dt),
        # K = I: the image points are normalised coordinates, so pixel thresholds do not apply
        "pixel_units": (~torch.isclose(K, torch.eye(3, dtype=dt)).all((-1, -2))).to(dt),
    }


def summarize(columns: Mapping[str, np.ndarray | Tensor], metric_units: bool = False) -> dict:
    """Aggregate per-problem columns (as returned by :func:`problem_metrics`, concatenated).

    Returns the nested dictionary stored per row in summary.json (keys documented in
    docs/evaluation.md): ``num_problems``, ``failures``, quartiles ``q25 / q50 / q75`` of each error
    column, ``recall`` at every relative threshold (and at the metric ones when ``metric_units``: the
    source's scene units are metres), ``reprojection_auc`` at 1 / 5 / 10 px over the problems in pixel
    units (``nan`` when none is), and the mean ``topk_inlier_ratio`` and ``match_recall``.
    """
    col = {k: np.asarray(torch.as_tensor(v).double().cpu().numpy()).reshape(-1) for k, v in columns.items()}
    n = int(col["rotation_error_deg"].size)
    summary: dict = {"num_problems": n, "failures": int(np.nansum(col["failed"]))}
    for name in ERROR_COLUMNS:
        summary[name] = {
            f"q{round(100 * q)}": v for q, v in zip(QUARTILES, quantiles(col[name]), strict=True)
        }
    recall = {}
    for th in METRIC_THRESHOLDS if metric_units else ():
        recall[th.key] = pose_recall(
            col["rotation_error_deg"], col["center_error"], th.rotation_deg, th.translation
        )
    for th in RELATIVE_THRESHOLDS:
        recall[th.key] = pose_recall(
            col["rotation_error_deg"], col["relative_center_error"], th.rotation_deg, th.translation
        )
    summary["recall"] = recall
    pixels = col["pixel_units"] > 0 if "pixel_units" in col else np.ones(n, dtype=bool)
    summary["reprojection_auc"] = {
        f"{px:g}px": error_auc(col["reprojection_error_px"][pixels], px) if pixels.any() else math.nan
        for px in REPROJECTION_AUC_PX
    }
    summary["topk_inlier_ratio"] = nanmean(col["topk_inlier_ratio"])
    summary["match_recall"] = nanmean(col["match_recall"])
    return summary


def flatten(d: Mapping, prefix: str = "", sep: str = "/") -> dict[str, float]:
    """Nested summary -> flat ``{"recall/5deg_5pct": 0.9, ...}`` (for wandb, CSV and Lightning logs)."""
    flat: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            flat.update(flatten(v, key, sep))
        else:
            flat[key] = v
    return flat


class PoseMetrics(Metric):
    """The evaluation summary as a torchmetrics ``Metric``: per-problem columns are gathered across
    processes (``cat``), so quartiles and recalls are exact under DDP, not averages of per-rank values.

    Usage in a LightningModule: ``self.val_metrics.update(batch, output)`` in ``validation_step`` and
    ``self.log_dict(self.val_metrics.compute())`` (then ``reset()``) at epoch end. ``compute`` returns
    the flattened summary, keys like ``rotation_error_deg/q50`` and ``recall/5deg_5pct``, as
    scalar tensors; ``nan`` where undefined (e.g. no matches given).
    """

    full_state_update = False

    def __init__(self, metric_units: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.metric_units = metric_units
        for name in COLUMNS:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, batch: Batch, output: MethodOutput) -> None:
        for name, value in problem_metrics(batch, output).items():
            getattr(self, name).append(value.to(self.device))

    def compute(self) -> dict[str, Tensor]:
        columns = {}
        for name in COLUMNS:
            state = getattr(self, name)
            columns[name] = dim_zero_cat(state) if len(state) else torch.zeros(0, dtype=torch.float64)
        flat = flatten(summarize(columns, self.metric_units))
        return {k: torch.tensor(float(v), dtype=torch.float64) for k, v in flat.items()}
