"""The sample format every source yields, and the padded batch the models consume."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
from torch import Tensor


@dataclass
class Sample:
    """One blind-PnP problem.

    Attributes:
        points2d: (m, 2) pixel coordinates (undistorted: the camera is a pinhole with ``K``).
        K: (3, 3) intrinsics.
        points3d: (n, 3) world points.
        R: (3, 3) and ``t`` (3,): ground-truth pose, ``x_cam = R X + t``.
        match: (m,) int64 index of each 2D point's 3D partner, or -1 (outlier).
        scene: name of the scene or object the problem comes from.
        id: unique identifier of the problem within its source.
        image_path: the image the 2D points were taken from, when the source has one.
        image_size: (width, height) in pixels, when known.
        R_ref: (3, 3) and ``t_ref`` (3,): the pose of a reference view of the 3D set (the retrieved
            database image of a map, whose pose is known), when the source has one; the network's
            bearing input expresses the 3D points in its camera frame.
    """

    points2d: Tensor
    K: Tensor
    points3d: Tensor
    R: Tensor
    t: Tensor
    match: Tensor
    scene: str = ""
    id: str = ""
    image_path: str | None = None
    image_size: tuple[int, int] | None = None
    R_ref: Tensor | None = None
    t_ref: Tensor | None = None

    @property
    def num_inliers(self) -> int:
        return int((self.match >= 0).sum())


@dataclass
class Batch:
    """Samples padded to the largest m and n, with masks marking the real entries.

    Attributes:
        points2d: (B, M, 2); ``mask2d`` (B, M) bool.
        points3d: (B, N, 3); ``mask3d`` (B, N) bool.
        K, R: (B, 3, 3); ``t`` (B, 3).
        match: (B, M) int64, -1 for outliers and padding.
        scene, id, image_path, image_size: per-sample lists.
        R_ref: (B, 3, 3) and ``t_ref`` (B, 3): reference views, when every sample has one (else None).
    """

    points2d: Tensor
    mask2d: Tensor
    points3d: Tensor
    mask3d: Tensor
    K: Tensor
    R: Tensor
    t: Tensor
    match: Tensor
    scene: list[str] = field(default_factory=list)
    id: list[str] = field(default_factory=list)
    image_path: list[str | None] = field(default_factory=list)
    image_size: list[tuple[int, int] | None] = field(default_factory=list)
    R_ref: Tensor | None = None
    t_ref: Tensor | None = None

    def __len__(self) -> int:
        return self.points2d.shape[0]

    @property
    def ref_view(self) -> tuple[Tensor, Tensor] | None:
        """``(R_ref, t_ref)`` when the samples have reference views, else None."""
        return None if self.R_ref is None or self.t_ref is None else (self.R_ref, self.t_ref)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Copy of the batch with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)

    def pin_memory(self) -> Batch:
        """Pinned copy (DataLoader calls this when ``pin_memory=True``)."""
        pinned = {
            f.name: getattr(self, f.name).pin_memory()
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **pinned)


def collate(samples: list[Sample]) -> Batch:
    """Pad a list of samples into a :class:`Batch` (zeros in padded slots, ``match = -1``)."""
    if not samples:
        raise ValueError("collate: empty list of samples")
    B = len(samples)
    M = max(s.points2d.shape[0] for s in samples)
    N = max(s.points3d.shape[0] for s in samples)
    dtype = samples[0].points3d.dtype
    p2 = torch.zeros(B, M, 2, dtype=dtype)
    p3 = torch.zeros(B, N, 3, dtype=dtype)
    m2 = torch.zeros(B, M, dtype=torch.bool)
    m3 = torch.zeros(B, N, dtype=torch.bool)
    match = torch.full((B, M), -1, dtype=torch.long)
    for b, s in enumerate(samples):
        m, n = s.points2d.shape[0], s.points3d.shape[0]
        p2[b, :m], p3[b, :n] = s.points2d, s.points3d
        m2[b, :m], m3[b, :n] = True, True
        match[b, :m] = s.match
    has_ref = all(s.R_ref is not None and s.t_ref is not None for s in samples)
    return Batch(
        points2d=p2,
        mask2d=m2,
        points3d=p3,
        mask3d=m3,
        K=torch.stack([s.K.to(dtype) for s in samples]),
        R=torch.stack([s.R.to(dtype) for s in samples]),
        t=torch.stack([s.t.to(dtype) for s in samples]),
        match=match,
        scene=[s.scene for s in samples],
        id=[s.id for s in samples],
        image_path=[s.image_path for s in samples],
        image_size=[s.image_size for s in samples],
        R_ref=torch.stack([s.R_ref.to(dtype) for s in samples]) if has_ref else None,
        t_ref=torch.stack([s.t_ref.to(dtype) for s in samples]) if has_ref else None,
    )


def sample_from_numpy(
    points2d: np.ndarray,
    K: np.ndarray,
    points3d: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    match: np.ndarray,
    scene: str = "",
    id: str = "",
    image_path: str | None = None,
    image_size: tuple[int, int] | None = None,
    R_ref: np.ndarray | None = None,
    t_ref: np.ndarray | None = None,
    dtype: torch.dtype = torch.float32,
) -> Sample:
    """Build a :class:`Sample` from numpy arrays, checking shapes, index range and finiteness.

    Args:
        points2d: (m, 2); K: (3, 3); points3d: (n, 3); R: (3, 3); t: (3,); match: (m,) ints;
        R_ref: (3, 3) and t_ref: (3,), or None (both or neither).
    Raises:
        ValueError: naming the sample when a shape is wrong, an index is out of range or a value is
            not finite (so NaN never reaches a model).
    """
    points2d = np.asarray(points2d).reshape(-1, 2)
    points3d = np.asarray(points3d).reshape(-1, 3)
    K, R, t = np.asarray(K).reshape(3, 3), np.asarray(R).reshape(3, 3), np.asarray(t).reshape(3)
    match = np.asarray(match, dtype=np.int64).reshape(-1)
    where = f"sample {scene}/{id}"
    if match.shape[0] != points2d.shape[0]:
        raise ValueError(f"{where}: match has {match.shape[0]} entries for {points2d.shape[0]} 2D points")
    if match.size and (match.max() >= points3d.shape[0] or match.min() < -1):
        raise ValueError(f"{where}: match indices outside [-1, {points3d.shape[0]})")
    if (R_ref is None) != (t_ref is None):
        raise ValueError(f"{where}: R_ref and t_ref come together (got only one)")
    ref = ()
    if R_ref is not None:
        R_ref, t_ref = np.asarray(R_ref).reshape(3, 3), np.asarray(t_ref).reshape(3)
        ref = (("R_ref", R_ref), ("t_ref", t_ref))
    for name, a in (("points2d", points2d), ("points3d", points3d), ("K", K), ("R", R), ("t", t), *ref):
        if not np.isfinite(a).all():
            raise ValueError(f"{where}: {name} has non-finite values")
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dtype)  # noqa: E731
    return Sample(
        points2d=as_t(points2d),
        K=as_t(K),
        points3d=as_t(points3d),
        R=as_t(R),
        t=as_t(t),
        match=torch.from_numpy(np.ascontiguousarray(match)),
        scene=scene,
        id=id,
        image_path=image_path,
        image_size=None if image_size is None else (int(image_size[0]), int(image_size[1])),
        R_ref=None if R_ref is None else as_t(R_ref),
        t_ref=None if t_ref is None else as_t(t_ref),
    )
