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
    if problem.objective == "reprojection":
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
