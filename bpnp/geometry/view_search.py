"""Coarse viewpoint search: which rotation makes the 3D set's projection look like the 2D set.

Blind PnP under uniformly random rotations asks an encoder to recognise a point from any
viewpoint. A cheap global search removes most of that burden: project the 3D set under a grid of
rotations, compare each silhouette with the observed 2D set by a truncated Chamfer distance
(correspondence-free), refine the best few by local rotation steps, and hand the winner to the
network, which then learns only the residual (the same problem as a limited-range dataset).

Both sets are compared in a *canonical camera*: the rotation :func:`canonical_camera` takes the 2D
set's mean bearing to the optical axis, which removes the off-axis distortion of the projection, so
a rotation found here is ``R_view ~= R_c @ R_true`` (world to canonical camera).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from bpnp.geometry.rotation import axis_angle_to_matrix


def _rotation_to_z(v: Tensor) -> Tensor:
    """Minimal rotations (..., 3, 3) taking unit vectors ``v`` (..., 3) to +z (the identity at +z,
    a half turn about x at -z)."""
    z = torch.zeros_like(v)
    z[..., 2] = 1.0
    axis = torch.linalg.cross(v, z)
    s = axis.norm(dim=-1, keepdim=True)
    c = v[..., 2:]
    x = torch.zeros_like(v)
    x[..., 0] = 1.0
    unit = torch.where(s > 1e-9, axis / s.clamp_min(1e-12), x)
    return axis_angle_to_matrix(unit * torch.atan2(s, c))


def canonical_camera(bearings: Tensor, mask: Tensor) -> Tensor:
    """Rotation ``R_c`` (B, 3, 3) taking the mean valid bearing to the optical axis.

    Args:
        bearings: (B, m, 3) unit bearings; mask: (B, m) bool.
    """
    w = mask[..., None].to(bearings.dtype)
    mean = (bearings * w).sum(1)
    mean = torch.where(mean.norm(dim=-1, keepdim=True) > 1e-9, mean, torch.tensor([0.0, 0.0, 1.0]).to(mean))
    return _rotation_to_z(torch.nn.functional.normalize(mean, dim=-1))


@functools.cache
def rotation_grid(directions: int, inplane: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``directions * inplane`` rotations (H, 3, 3) covering SO(3): optical axes on a Fibonacci
    sphere, each with ``inplane`` evenly spaced rotations about it."""
    i = torch.arange(directions, dtype=torch.float64) + 0.5
    polar = torch.acos(1.0 - 2.0 * i / directions)
    azimuth = math.pi * (1.0 + 5.0**0.5) * i
    d = torch.stack(
        [polar.sin() * azimuth.cos(), polar.sin() * azimuth.sin(), polar.cos()], dim=-1
    )  # world direction of the optical axis: row 3 of R
    psi = torch.arange(inplane, dtype=torch.float64) * (2.0 * math.pi / inplane)
    Rz = axis_angle_to_matrix(torch.stack([torch.zeros_like(psi), torch.zeros_like(psi), psi], -1))
    return (Rz[None] @ _rotation_to_z(d)[:, None]).reshape(-1, 3, 3).to(dtype)


def _normalise_2d(q: Tensor, w: Tensor) -> Tensor:
    """Zero weighted mean and unit weighted RMS radius over the point axis (-2); w (..., s)."""
    count = w.sum(-1, keepdim=True).clamp_min(1.0)
    q = q - (q * w[..., None]).sum(-2, keepdim=True) / count[..., None]
    rms = ((q.pow(2).sum(-1) * w).sum(-1, keepdim=True) / count).sqrt().clamp_min(1e-9)
    return q / rms[..., None]


def silhouette_distance(
    R: Tensor, X: Tensor, w3: Tensor, p2: Tensor, w2: Tensor, depth_ratio: Tensor, truncate: float
) -> Tensor:
    """Truncated symmetric Chamfer distance between projected 3D sets and normalised 2D sets.

    Args:
        R: (B, H, 3, 3) rotations to score; X: (B, s3, 3) centred 3D points; w3: (B, s3) weights.
        p2: (B, s2, 2) normalised 2D points (zero mean, unit RMS); w2: (B, s2).
        depth_ratio: (B,) RMS radius of the 2D set before normalisation (sets the depth of the
            projection, hence its perspective).
        truncate: squared distances are clamped here (outliers cost at most this).
    Returns:
        (B, H), lower is better.
    """
    Y = torch.einsum("bhij,bsj->bhsi", R, X)
    w3h = w3[:, None].expand(-1, R.shape[1], -1)
    count3 = w3h.sum(-1, keepdim=True).clamp_min(1.0)
    spread = ((Y[..., :2].pow(2).sum(-1) * w3h).sum(-1, keepdim=True) / count3).sqrt()
    depth = spread / depth_ratio[:, None, None].clamp_min(1e-9)  # object distance (B, H, 1)
    q = Y[..., :2] / (Y[..., 2] + depth).clamp_min(1e-3 * depth)[..., None]
    q = _normalise_2d(q, w3h)
    # Padding sits far away on either side, so the truncation alone keeps it out of every minimum.
    q = torch.where(w3h[..., None] > 0, q, 1e3)
    p = torch.where(w2[..., None] > 0, p2, -1e3)[:, None]
    d = p.pow(2).sum(-1)[..., :, None] + q.pow(2).sum(-1)[..., None, :] - 2.0 * p @ q.transpose(-1, -2)
    d = d.clamp(0.0, truncate)  # (B, H, s2, s3)
    c2 = w2.sum(-1).clamp_min(1.0)[:, None]
    return (d.amin(-1) * w2[:, None]).sum(-1) / c2 + (d.amin(-2) * w3[:, None]).sum(-1) / count3[..., 0]


def dense_points(x: Tensor, mask: Tensor, k: int = 8, factor: float = 2.0) -> Tensor:
    """Points of the dense part of each set: kNN distance at most ``factor`` times the median.

    Uniform clutter (2D outliers over the image, 3D outliers in the bounding box) is much sparser
    than points sampled on a surface, so this keeps the search's centring and scale robust.

    Args:
        x: (B, N, C) coordinates; mask: (B, N) bool.
    Returns:
        (B, N) bool, a subset of ``mask`` (the whole of it when a sample has at most ``k`` points).
    """
    N = x.shape[1]
    if N <= k:
        return mask
    d = torch.cdist(x, x).masked_fill(~mask[:, None, :], float("inf"))
    d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    kth = d.topk(k, dim=-1, largest=False).values[..., -1]
    finite = mask & torch.isfinite(kth)
    med = torch.where(finite, kth, torch.nan).nanmedian(dim=1, keepdim=True).values
    keep = finite & (kth <= factor * med)
    enough = keep.sum(1, keepdim=True) > k
    return torch.where(enough, keep, mask)


def _subset(mask: Tensor, k: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Random subset of at most ``k`` valid indices per sample: (B, k) indices and (B, k) weights."""
    device = generator.device if generator is not None else mask.device
    keys = torch.rand(mask.shape, generator=generator, device=device).to(mask.device)
    keys = keys.masked_fill(~mask, -1.0)
    k = min(k, mask.shape[1])
    idx = keys.topk(k, dim=1).indices
    return idx, mask.gather(1, idx)


def _local_steps(step_deg: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The identity and +-``step_deg`` about each axis (7, 3, 3)."""
    a = torch.cat([torch.eye(3), -torch.eye(3)]).to(torch.float64) * math.radians(step_deg)
    return torch.cat([torch.eye(3, dtype=torch.float64)[None], axis_angle_to_matrix(a)]).to(dtype).to(device)


def canonical_image(bearings: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The 2D set in the canonical camera, robust to uniform clutter.

    Args:
        bearings: (B, m, 3) unit bearings; mask: (B, m) bool.
    Returns:
        ``R_c`` (B, 3, 3) (mean dense bearing to the optical axis), image coordinates (B, m, 2) in
        that camera centred on the dense points, their RMS radius (B,) over the dense points, and
        the dense points (B, m) bool (:func:`dense_points`).
    """
    dtype = torch.promote_types(bearings.dtype, torch.float32)
    bearings = bearings.to(dtype)
    dense = dense_points(bearings, mask)
    R_c = canonical_camera(bearings, dense)
    b = bearings @ R_c.transpose(1, 2)
    x = b[..., :2] / b[..., 2:].clamp_min(1e-6)
    w = dense.to(dtype)
    count = w.sum(1, keepdim=True).clamp_min(1.0)
    x = x - (x * w[..., None]).sum(1, keepdim=True) / count[..., None]
    rms = ((x.pow(2).sum(-1) * w).sum(1) / count[:, 0]).sqrt()
    return R_c, x, rms, dense


@torch.no_grad()
def search_rotation(
    x: Tensor,
    rms: Tensor,
    dense2d: Tensor,
    points3d: Tensor,
    dense3d: Tensor,
    directions: int = 100,
    inplane: int = 24,
    keep: int = 8,
    steps_deg: tuple[float, ...] = (8.0, 4.0, 2.0),
    coarse_points: int = 64,
    fine_points: int = 256,
    truncate: float = 0.25,
    chunk: int = 600,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The rotation (B, 3, 3), world to canonical camera, whose projection of the 3D set best
    matches the canonical image ``x`` (B, m, 2) of RMS radius ``rms`` (B,) (:func:`canonical_image`),
    comparing the points ``dense2d`` (B, m) and ``dense3d`` (B, n) of ``points3d`` (B, n, 3).

    A grid of ``directions * inplane`` rotations is scored on ``coarse_points`` random points of
    each set; the best ``keep`` are refined by greedy rotation steps of ``steps_deg`` (two rounds
    each) on ``fine_points`` points, and the best refined one is returned. Not differentiable.
    ``truncate`` caps the Chamfer squared distances (in units of the 2D set's RMS radius); ``chunk``
    rotations are scored at once (memory: B * chunk * coarse_points^2 floats); ``generator`` draws
    the random point subsets (deterministic search).
    """
    dtype = x.dtype
    points3d = points3d.to(dtype)
    B = x.shape[0]
    w3 = dense3d.to(dtype)[..., None]
    X = points3d - (points3d * w3).sum(1, keepdim=True) / w3.sum(1, keepdim=True).clamp_min(1.0)

    def sets(k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        i2, w2 = _subset(dense2d, k, generator)
        i3, w3 = _subset(dense3d, k, generator)
        p2 = _normalise_2d(x.gather(1, i2[..., None].expand(-1, -1, 2)), w2.to(dtype))
        return X.gather(1, i3[..., None].expand(-1, -1, 3)), w3.to(dtype), p2, w2.to(dtype)

    grid = rotation_grid(directions, inplane, dtype).to(x.device)
    X3, w3, p2, w2 = sets(coarse_points)
    chunks = [grid[None, i : i + chunk].expand(B, -1, -1, -1) for i in range(0, len(grid), chunk)]
    score = torch.cat([silhouette_distance(R, X3, w3, p2, w2, rms, truncate) for R in chunks], dim=1)
    best, top = score.topk(min(keep, len(grid)), dim=1, largest=False)
    cand = grid[top]  # (B, keep, 3, 3)
    if steps_deg:
        X3, w3, p2, w2 = sets(fine_points)
        best = silhouette_distance(cand, X3, w3, p2, w2, rms, truncate)
        rows = torch.arange(B, device=cand.device)[:, None]
        cols = torch.arange(cand.shape[1], device=cand.device)[None]
        for step in steps_deg:
            moves = _local_steps(step, dtype, cand.device)
            for _ in range(2):
                trial = (moves[None, None] @ cand[:, :, None]).reshape(B, -1, 3, 3)
                s = silhouette_distance(trial, X3, w3, p2, w2, rms, truncate).reshape(B, cand.shape[1], -1)
                best, k = s.min(-1)
                cand = trial.reshape(B, cand.shape[1], -1, 3, 3)[rows, cols, k]
    return cand[torch.arange(B, device=cand.device), best.argmin(1)]


def view_search(
    bearings: Tensor, points3d: Tensor, mask2d: Tensor, mask3d: Tensor, **options
) -> tuple[Tensor, Tensor]:
    """:func:`search_rotation` from bearings (B, m, 3) and world points (B, n, 3) with their masks.

    Returns:
        ``R_view`` (B, 3, 3) world to canonical camera, and ``R_c`` (B, 3, 3) the canonical
        camera's rotation from the real one (so ``R_c.T @ R_view`` estimates the camera rotation).
    """
    R_c, x, rms, dense2d = canonical_image(bearings, mask2d)
    return search_rotation(x, rms, dense2d, points3d, dense_points(points3d, mask3d), **options), R_c


def perturb_rotation(R: Tensor, max_deg: float, generator: torch.Generator | None = None) -> Tensor:
    """``R`` (B, 3, 3) left-multiplied by rotations about uniform random axes by angles uniform in
    [0, ``max_deg``]: a stand-in for :func:`view_search`'s answer when training on known poses."""
    device = generator.device if generator is not None else R.device
    axis = torch.randn(R.shape[0], 3, generator=generator, device=device, dtype=torch.float64)
    angle = torch.rand(R.shape[0], 1, generator=generator, device=device, dtype=torch.float64)
    omega = torch.nn.functional.normalize(axis, dim=-1) * angle * math.radians(max_deg)
    return axis_angle_to_matrix(omega).to(R) @ R
