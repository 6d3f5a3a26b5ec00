"""Per-sample degeneracy tests of the PnP layer, and the once-only warning about them."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from bpnp.nodes.pnp.objectives import PairedProblem

logger = logging.getLogger("bpnp.nodes.pnp")
_warned: set[str] = set()

# Relative thresholds by dtype: a pair counts when its weight exceeds REL_WEIGHT * the sample's
# largest; points are collinear below COLLINEAR of the spread ratio; H is singular below SINGULAR.
_REL_WEIGHT = 1e-9
_COLLINEAR = {torch.float64: 1e-12, torch.float32: 1e-6}
_SINGULAR = {torch.float64: 1e-12, torch.float32: 1e-6}


def effective_pairs(weight: Tensor) -> Tensor:
    """Number of pairs with non-negligible weight.

    Args:
        weight: (B, N).
    Returns:
        (B,) long.
    """
    top = weight.amax(-1, keepdim=True)
    return ((weight > _REL_WEIGHT * top) & (weight > 0)).sum(-1)


# Two fixed generic directions: distinct points that share a projection on both are a null set.
_DIRECTIONS = ((0.5377, 0.8622, -0.3077), (-0.4336, 0.3426, 0.8339))


def distinct_points(points: Tensor, weight: Tensor) -> Tensor:
    """A lower bound of the number of distinct weighted points (duplicates count once).

    Points are projected on two generic directions; along each, sorted projections that differ by
    more than a relative tolerance of the spread start a new point. Exact unless distinct points share
    a projection on both directions.

    Args:
        points: (B, N, 3).
        weight: (B, N) non-negative.
    Returns:
        (B,) long.
    """
    use = (weight > _REL_WEIGHT * weight.amax(-1, keepdim=True)) & (weight > 0)
    tol = _COLLINEAR.get(points.dtype, 1e-6) ** 0.5
    best = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    for d in _DIRECTIONS:
        proj = points @ torch.tensor(d, dtype=points.dtype, device=points.device)
        lo = torch.where(use, proj, torch.inf).amin(-1, keepdim=True)
        hi = torch.where(use, proj, -torch.inf).amax(-1, keepdim=True)
        spread = (hi - lo).clamp_min(torch.finfo(points.dtype).tiny)
        v, _ = torch.where(use, proj, torch.inf).sort(-1)
        gaps = (v[:, 1:] - v[:, :-1]) > tol * spread
        count = use.any(-1).long() + (gaps & torch.isfinite(v[:, 1:])).sum(-1)
        best = torch.maximum(best, count)
    return best


def collinear(points: Tensor, weight: Tensor) -> Tensor:
    """Are the weighted points (nearly) on a line? From the weighted covariance's eigenvalues.

    Args:
        points: (B, N, 3).
        weight: (B, N) non-negative.
    Returns:
        (B,) bool.
    """
    w = torch.where(weight > _REL_WEIGHT * weight.amax(-1, keepdim=True), weight, torch.zeros_like(weight))
    wsum = w.sum(-1).clamp_min(torch.finfo(w.dtype).tiny)
    c = (w[..., None] * points).sum(1) / wsum[:, None]
    d = points - c[:, None]
    cov = (d * w[..., None]).transpose(-1, -2) @ d / wsum[:, None, None]
    ev = torch.linalg.eigvalsh(cov)  # ascending
    tol = _COLLINEAR.get(points.dtype, 1e-6)
    return ev[:, 1] <= tol * ev[:, 2].clamp_min(torch.finfo(w.dtype).tiny)


def singular(H: Tensor) -> Tensor:
    """Is the Hessian non-finite, not positive definite, or ill-conditioned? (B, 6, 6) -> (B,) bool."""
    finite = torch.isfinite(H).all((-1, -2))
    ev = torch.linalg.eigvalsh(torch.where(finite[:, None, None], H, torch.zeros_like(H)))
    tol = _SINGULAR.get(H.dtype, 1e-6)
    return ~finite | (ev[:, 0] <= tol * ev[:, -1].abs().clamp_min(torch.finfo(H.dtype).tiny))


def behind_camera(problem: PairedProblem, depth: Tensor) -> Tensor:
    """Cheirality at the solution. Reprojection: any weighted point at non-positive depth. Angular
    (defined for any direction): more than half the weight behind the camera, a mirrored solution.

    Args:
        depth: (B, N) camera-frame depths at the solution.
    Returns:
        (B,) bool.
    """
    w = problem.weight
    back = depth <= 0
    if problem.objective.projective:
        return ((w > 0) & back).any(-1)
    return (w * back).sum(-1) > 0.5 * w.sum(-1)


def warn_once(reasons: dict[str, Tensor]) -> None:
    """Log each kind of degenerate sample once per process, however often it recurs.

    Args:
        reasons: name -> (B,) bool mask of the samples it made invalid.
    """
    names = list(reasons)
    if not names:
        return
    hits = torch.stack([reasons[k] for k in names], dim=0).any(-1).tolist()
    for name, hit in zip(names, hits, strict=True):
        if hit and name not in _warned:
            _warned.add(name)
            logger.warning(
                "weighted_pnp: sample(s) flagged invalid (%s); they get valid=False and zero gradient. "
                "This message is shown once.",
                name,
            )
