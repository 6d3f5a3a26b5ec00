"""Training losses (docs/design.md section 5): correspondence terms on the plan, pose terms on the PnP
layer's output, and the schedule that switches the pose terms on without undoing the matching."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bpnp.geometry import rotation_angle


def match_matrix(match: Tensor, n: int) -> Tensor:
    """Ground-truth 0/1 matrix ``C`` (B, m, n) from the per-2D-point partner index ``match`` (B, m)."""
    C = torch.zeros(*match.shape, n + 1, dtype=torch.bool, device=match.device)
    C.scatter_(2, torch.where(match >= 0, match, n)[..., None], True)
    return C[..., :n]


def inlier_mass(P: Tensor, match: Tensor) -> Tensor:
    """Share of each plan's mass on true matches (B,) (chance: about 1/n).

    Args:
        P: (B, m, n) plan; match: (B, m) int64, -1 for none.
    """
    on = P.gather(2, match.clamp_min(0)[..., None]).squeeze(-1) * (match >= 0)
    return on.sum(1) / P.sum((1, 2)).clamp_min(1e-12)


def correspondence_loss(P: Tensor, match: Tensor) -> Tensor:
    """BPnPNet's ``mean_b sum_ij (1 - 2 C_ij) P_ij``: mass on wrong pairs minus mass on true ones.

    Args:
        P: (B, m, n) plan (total mass 1 per sample); match: (B, m) int64, -1 for none.
    Returns:
        scalar in [-1, 1]; -1 when all mass sits on true matches.
    """
    C = match_matrix(match, P.shape[2]).to(P.dtype)
    return ((1.0 - 2.0 * C) * P).sum((1, 2)).mean()


def dustbin_nll(P_full: Tensor, match: Tensor, mask2d: Tensor, mask3d: Tensor) -> Tensor:
    """Negative log-likelihood of the true assignment under a plan with dustbin (SuperGlue / GoMatch):
    true pairs, unmatched 2D points in the dustbin column, unmatched 3D points in the dustbin row.

    ``P_full`` is rescaled by ``m + n`` so that a confident assignment has likelihood near 1.

    Args:
        P_full: (B, m + 1, n + 1); match: (B, m); mask2d: (B, m); mask3d: (B, n) bool.
    Returns:
        scalar, the mean over all terms of the batch.
    """
    B, m1, n1 = P_full.shape
    m, n = m1 - 1, n1 - 1
    size = (mask2d.sum(1) + mask3d.sum(1)).to(P_full.dtype)
    logp = (P_full * size[:, None, None]).clamp_min(1e-12).log()
    has = (match >= 0) & mask2d
    col = torch.where(has, match, n)  # unmatched 2D points -> dustbin column
    rows_term = logp[:, :m].gather(2, col[..., None]).squeeze(-1) * mask2d
    matched3d = torch.zeros(B, n + 1, dtype=torch.bool, device=match.device)
    matched3d.scatter_(1, torch.where(has, match, n), True)
    unmatched3d = mask3d & ~matched3d[:, :n]
    cols_term = logp[:, m, :n] * unmatched3d
    count = (mask2d.sum() + unmatched3d.sum()).clamp_min(1)
    return -(rows_term.sum() + cols_term.sum()) / count


def rotation_loss(R: Tensor, R_gt: Tensor) -> Tensor:
    """``min(angle(R, R_gt), pi/2)`` per sample (B,), radians."""
    return rotation_angle(R, R_gt).clamp(max=math.pi / 2)


def translation_loss(t: Tensor, t_gt: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """``min(||t - t_gt|| / scale, 1)`` per sample (B,); ``scale`` makes it unit-free (e.g. scene size)."""
    d = (t - t_gt).pow(2).sum(-1).clamp_min(1e-18).sqrt()
    return (d / scale).clamp(max=1.0)


def pose_weight(epoch: int, start_epoch: int | None, ramp_epochs: int, weight: float) -> float:
    """Weight of the pose terms: 0 before ``start_epoch`` (None: never), then a linear ramp over
    ``ramp_epochs`` to ``weight`` — switching it on at full weight at once lets the pose gradient
    swamp the correspondence gradient and undo the matching."""
    if start_epoch is None or epoch < start_epoch:
        return 0.0
    return weight * min(1.0, (epoch - start_epoch + 1) / max(ramp_epochs, 1))
