"""Pose and matching metrics: pure per-problem functions and aggregates over a list of problems.

Per-problem functions take batched tensors and return one value per problem, (B,). A failed
problem (no pose, or a non-finite one) gets ``inf`` errors, so it counts as a miss in every recall
and sorts last in every quantile.

Translation thresholds come in two families:

- metric scenes (units are metres): recall at (5 cm, 5 deg), (25 cm, 2 deg), (50 cm, 5 deg),
  (1 m, 10 deg) on the camera-centre error, GoMatch's set;
- scale-free scenes: recall at (1 deg, 1 %), (5 deg, 5 %), (10 deg, 10 %) with the camera-centre
  error divided by the problem's scene extent (:func:`scene_extent`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bpnp.geometry import center_error, rotation_error_deg, transform_points, translation_error
from bpnp.geometry.camera import project


@dataclass(frozen=True)
class PoseThreshold:
    """A (rotation, translation) recall threshold; ``relative`` translations are fractions of the
    scene extent, otherwise scene units (metres for metric scenes)."""

    rotation_deg: float
    translation: float
    relative: bool

    @property
    def key(self) -> str:
        """Name used in summary.json and the table, e.g. ``5cm_5deg`` or ``5deg_5pct``."""
        rot = f"{self.rotation_deg:g}deg"
        if self.relative:
            return f"{rot}_{100 * self.translation:g}pct"
        trans = f"{self.translation:g}m" if self.translation >= 1 else f"{100 * self.translation:g}cm"
        return f"{trans}_{rot}"


METRIC_THRESHOLDS: tuple[PoseThreshold, ...] = (
    PoseThreshold(5.0, 0.05, False),
    PoseThreshold(2.0, 0.25, False),
    PoseThreshold(5.0, 0.5, False),
    PoseThreshold(10.0, 1.0, False),
)
RELATIVE_THRESHOLDS: tuple[PoseThreshold, ...] = (
    PoseThreshold(1.0, 0.01, True),
    PoseThreshold(5.0, 0.05, True),
    PoseThreshold(10.0, 0.10, True),
)
REPROJECTION_AUC_PX: tuple[float, ...] = (1.0, 5.0, 10.0)
QUARTILES: tuple[float, ...] = (0.25, 0.5, 0.75)


# ---------------------------------------------------------------------------------------------
# Per-problem metrics, batched
# ---------------------------------------------------------------------------------------------


def failed(R: Tensor, t: Tensor, valid: Tensor) -> Tensor:
    """Problems without a usable pose: flagged invalid or holding non-finite numbers.

    Args:
        R: (B, 3, 3); t: (B, 3); valid: (B,) bool.
    Returns:
        (B,) bool.
    """
    finite = torch.isfinite(R).flatten(1).all(1) & torch.isfinite(t).all(1)
    return ~(valid.bool() & finite)


def pose_errors(
    R: Tensor, t: Tensor, R_gt: Tensor, t_gt: Tensor, valid: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Rotation error (deg), translation error ``||t - t_gt||`` and camera-centre error.

    Args:
        R, R_gt: (B, 3, 3); t, t_gt: (B, 3); valid: (B,) bool.
    Returns:
        Three (B,) tensors, ``inf`` for failed problems.
    """
    bad = failed(R, t, valid)
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    R = torch.where(bad[:, None, None], eye, R)
    t = torch.where(bad[:, None], torch.zeros_like(t), t)
    inf = torch.full_like(t[:, 0], math.inf)
    return (
        torch.where(bad, inf, rotation_error_deg(R, R_gt)),
        torch.where(bad, inf, translation_error(t, t_gt)),
        torch.where(bad, inf, center_error(R, t, R_gt, t_gt)),
    )


def scene_extent(points3d: Tensor, match: Tensor, mask3d: Tensor | None = None) -> Tensor:
    """Robust size of each problem's scene: the diagonal of the box spanned by the 5th and 95th
    percentiles (per axis) of the 3D points that have a 2D partner.

    Using only matched points makes the value independent of injected 3D outliers, so the same
    problem keeps the same thresholds at every outlier rate; the percentiles ignore stray points.
    Falls back to all (masked) 3D points when a problem has no match.

    Args:
        points3d: (B, N, 3); match: (B, M) int, -1 for none; mask3d: (B, N) bool or None.
    Returns:
        (B,).
    """
    B, N, _ = points3d.shape
    if mask3d is None:
        mask3d = torch.ones(B, N, dtype=torch.bool, device=points3d.device)
    out = []
    for b in range(B):
        idx = match[b][match[b] >= 0]
        pts = points3d[b, idx] if idx.numel() > 0 else points3d[b, mask3d[b]]
        if pts.shape[0] == 0:
            out.append(points3d.new_tensor(math.nan))
            continue
        q = torch.quantile(pts.double(), points3d.new_tensor([0.05, 0.95], dtype=torch.float64), dim=0)
        out.append((q[1] - q[0]).norm().to(points3d.dtype))
    return torch.stack(out)


def reprojection_errors(
    points3d: Tensor,
    match: Tensor,
    K: Tensor,
    R: Tensor,
    t: Tensor,
    R_gt: Tensor,
    t_gt: Tensor,
    valid: Tensor,
) -> Tensor:
    """Mean pixel distance between the projections of the ground-truth matched 3D points under the
    estimated pose and under the true pose.

    A point behind the estimated camera makes the problem's error ``inf``; a failed problem is
    ``inf``; a problem without matched points is ``nan``.

    Args:
        points3d: (B, N, 3); match: (B, M); K, R, R_gt: (B, 3, 3); t, t_gt: (B, 3); valid: (B,).
    Returns:
        (B,) pixels.
    """
    bad = failed(R, t, valid)
    out = []
    for b in range(points3d.shape[0]):
        idx = match[b][match[b] >= 0]
        if idx.numel() == 0:
            out.append(points3d.new_tensor(math.nan))
            continue
        if bad[b]:
            out.append(points3d.new_tensor(math.inf))
            continue
        X = points3d[b, idx]
        Xc = transform_points(R[b], t[b], X)
        if bool((Xc[:, 2] <= 0).any()):
            out.append(points3d.new_tensor(math.inf))
            continue
        uv = project(Xc, K[b])
        uv_gt = project(transform_points(R_gt[b], t_gt[b], X), K[b])
        out.append((uv - uv_gt).norm(dim=-1).mean())
    return torch.stack(out)


def match_precision_recall(pairs: Tensor, match: Tensor) -> tuple[Tensor, Tensor]:
    """Precision (the inlier ratio of the predicted pairs) and recall against the true matches.

    Args:
        pairs: (B, k, 2) int, rows ``(i, j)`` = 2D index, 3D index; ``-1`` rows are padding.
        match: (B, M) int, index of each 2D point's 3D partner or -1.
    Returns:
        precision, recall: (B,) each; ``nan`` where undefined (no pairs / no true matches).
    """
    i, j = pairs[..., 0], pairs[..., 1]
    real = (i >= 0) & (j >= 0)
    partner = match.gather(1, i.clamp_min(0))
    correct = real & (partner == j) & (j >= 0)
    n_pairs = real.sum(1)
    n_true = (match >= 0).sum(1)
    # A 2D point listed twice with its right partner counts once towards recall.
    hits = torch.zeros_like(match).scatter_add_(1, i.clamp_min(0), correct.long())
    n_correct, n_found = correct.sum(1).double(), (hits > 0).sum(1).double()
    nan = torch.full(n_pairs.shape, math.nan, dtype=torch.float64, device=pairs.device)
    precision = torch.where(n_pairs > 0, n_correct / n_pairs.clamp_min(1), nan)
    recall = torch.where(n_true > 0, n_found / n_true.clamp_min(1), nan)
    return precision, recall


def precision_at_true_count(pairs: Tensor, match: Tensor, scores: Tensor | None = None) -> Tensor:
    """Precision of a method's best ``K`` pairs, ``K`` = the problem's number of true matches.

    One ``K`` for every method, so a perfect answer scores 1 whether it lists ``K`` pairs or
    ``1.5 m``; pairs of score exactly 0 (no weight in the plan) are dropped first, and a method that
    lists fewer than ``K`` pairs is charged for the missing ones. Scores may be of any sign (the
    Hungarian baseline scores by negative cost).

    Args:
        pairs: (B, k, 2) int, best first, ``-1`` rows as padding.
        match: (B, M) int, each 2D point's 3D partner or -1.
        scores: (B, k) or None (all pairs count).
    Returns:
        (B,) float64 in [0, 1]; ``nan`` where a problem has no true match.
    """
    real = (pairs[..., 0] >= 0) & (pairs[..., 1] >= 0)
    if scores is not None:
        real = real & (scores != 0)
    # the K best of the real pairs: rank among the real ones, in the given order
    rank = real.long().cumsum(1) - 1
    K = (match >= 0).sum(1)
    keep = real & (rank < K[:, None])
    kept = torch.where(keep[..., None], pairs, torch.full_like(pairs, -1))
    precision, _ = match_precision_recall(kept, match)
    n_kept = keep.sum(1)
    nan = torch.full(K.shape, math.nan, dtype=torch.float64, device=pairs.device)
    correct = torch.nan_to_num(precision) * n_kept
    return torch.where(K > 0, correct / K.clamp_min(1), nan)


# ---------------------------------------------------------------------------------------------
# Aggregates over problems
# ---------------------------------------------------------------------------------------------


def _as_array(values: Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def quantiles(values: Sequence[float] | np.ndarray | Tensor, qs: Sequence[float] = QUARTILES) -> list[float]:
    """Quantiles with linear interpolation, ``inf``-aware (interpolating towards ``inf`` gives
    ``inf`` rather than ``nan``); ``nan`` entries are ignored. Empty input gives ``nan``."""
    v = _as_array(values)
    v = np.sort(v[~np.isnan(v)])
    if v.size == 0:
        return [math.nan for _ in qs]
    out = []
    for q in qs:
        pos = q * (v.size - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        frac = pos - lo
        if frac == 0.0 or v[lo] == v[hi]:
            out.append(float(v[lo]))
        elif math.isinf(v[hi]):
            out.append(math.inf)
        else:
            out.append(float(v[lo] + (v[hi] - v[lo]) * frac))
    return out


def pose_recall(
    rotation_deg: Sequence[float] | np.ndarray | Tensor,
    translation: Sequence[float] | np.ndarray | Tensor,
    rotation_threshold: float,
    translation_threshold: float,
) -> float:
    """Fraction of problems with both errors at or below their thresholds (``nan`` errors miss)."""
    r, t = _as_array(rotation_deg), _as_array(translation)
    if r.size == 0:
        return math.nan
    with np.errstate(invalid="ignore"):
        return float(np.mean((r <= rotation_threshold) & (t <= translation_threshold)))


def recall_curve(errors: Sequence[float] | np.ndarray | Tensor, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of problems with error at or below each threshold; (T,) from (T,) thresholds."""
    e = _as_array(errors)
    if e.size == 0:
        return np.full(len(thresholds), math.nan)
    e = np.where(np.isnan(e), np.inf, e)
    return (e[None, :] <= np.asarray(thresholds, dtype=np.float64)[:, None]).mean(1)


def error_auc(errors: Sequence[float] | np.ndarray | Tensor, threshold: float) -> float:
    """Area under the cumulative error curve (recall versus threshold) from 0 to ``threshold``,
    divided by ``threshold``: 1 when every error is 0, 0 when none is below the threshold.

    The convention of SuperGlue's ``pose_auc`` (also LoFTR's and GoMatch's tables): the curve
    through ``(0, 0)`` and ``(e_(k), k / n)`` for the sorted errors, linear in between, held flat
    from the last error below the threshold. ``nan`` errors count as failures (``inf``).
    """
    e = _as_array(errors)
    if e.size == 0:
        return math.nan
    e = np.sort(np.where(np.isnan(e), np.inf, e))
    curve_e = np.concatenate([[0.0], e])
    curve_r = np.concatenate([[0.0], np.arange(1, e.size + 1) / e.size])
    last = int(np.searchsorted(curve_e, threshold))
    r = np.concatenate([curve_r[:last], [curve_r[last - 1]]])
    x = np.concatenate([curve_e[:last], [threshold]])
    return float(np.trapezoid(r, x) / threshold)


def nanmean(values: Sequence[float] | np.ndarray | Tensor) -> float:
    """Mean over finite-or-inf entries, ignoring ``nan``; ``nan`` when nothing is left."""
    v = _as_array(values)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan
