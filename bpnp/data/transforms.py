"""Point-count and outlier-rate control shared by every source.

Sources build a :class:`Correspondences` (numpy, before conversion to tensors) and pass it through
:class:`PointControl`, so capping, outlier injection and shuffling behave identically everywhere and
are deterministic under the generator the source hands in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

MIN_INLIERS = 4  # fewest correspondences that determine a pose (P3P plus one to disambiguate)


@dataclass
class Correspondences:
    """The 2D and 3D sets of one problem and their ground-truth pairing.

    Attributes:
        points2d: (m, 2) pixels.
        points3d: (n, 3) world points.
        match: (m,) int64 index into ``points3d`` or -1. Each 3D point has at most one 2D partner.
        bounds2d: (4,) ``(x_min, y_min, x_max, y_max)`` of the region 2D outliers are drawn from
            (the image, or the 2D points' bounding box when the source has no image).
    """

    points2d: np.ndarray
    points3d: np.ndarray
    match: np.ndarray
    bounds2d: np.ndarray

    @property
    def num_inliers(self) -> int:
        return int((self.match >= 0).sum())


def image_bounds(width: float, height: float) -> np.ndarray:
    """Bounds (4,) of an image whose pixel centres span ``[0, width] x [0, height]``."""
    return np.array([0.0, 0.0, float(width), float(height)])


def box_bounds(points2d: np.ndarray) -> np.ndarray:
    """Bounds (4,) of the bounding box of (m, 2) points (a unit box around the origin if empty)."""
    if len(points2d) == 0:
        return np.array([-1.0, -1.0, 1.0, 1.0])
    return np.concatenate([points2d.min(0), points2d.max(0)])


def _outlier_count(num_inliers: int, rate: float) -> int:
    """Outliers needed beside ``num_inliers`` inliers for an outlier fraction ``rate``."""
    return int(round(num_inliers * rate / (1.0 - rate)))


def _choose(rng: np.random.Generator, idx: np.ndarray, k: int) -> np.ndarray:
    """``k`` entries of ``idx`` at random, in their original order."""
    if k >= len(idx):
        return idx
    return np.sort(rng.choice(idx, size=k, replace=False))


def keep_3d(c: Correspondences, keep: np.ndarray) -> Correspondences:
    """Restrict the 3D set to the sorted indices ``keep``, remapping ``match`` (lost partners -> -1)."""
    remap = np.full(len(c.points3d) + 1, -1, dtype=np.int64)  # the extra slot maps -1 to -1
    remap[keep] = np.arange(len(keep))
    return replace(c, points3d=c.points3d[keep], match=remap[c.match])


def keep_2d(c: Correspondences, keep: np.ndarray) -> Correspondences:
    """Restrict the 2D set to the indices ``keep``."""
    return replace(c, points2d=c.points2d[keep], match=c.match[keep])


def _partnered_3d(c: Correspondences) -> np.ndarray:
    """(n,) bool: which 3D points have a 2D partner."""
    has = np.zeros(len(c.points3d), dtype=bool)
    has[c.match[c.match >= 0]] = True
    return has


def set_outlier_rate_2d(c: Correspondences, rate: float, rng: np.random.Generator) -> Correspondences:
    """Make the fraction of 2D points without a partner exactly ``rate`` (up to rounding): drop
    outliers at random when there are too many, add points uniform in ``bounds2d`` when too few."""
    inl = np.flatnonzero(c.match >= 0)
    out = np.flatnonzero(c.match < 0)
    want = _outlier_count(len(inl), rate)
    if want <= len(out):
        return keep_2d(c, np.sort(np.concatenate([inl, _choose(rng, out, want)])))
    lo, hi = c.bounds2d[:2], c.bounds2d[2:]
    extra = lo + rng.random((want - len(out), 2)) * (hi - lo)
    return replace(
        c,
        points2d=np.concatenate([c.points2d, extra.astype(c.points2d.dtype)]),
        match=np.concatenate([c.match, np.full(len(extra), -1, dtype=np.int64)]),
    )


def set_outlier_rate_3d(c: Correspondences, rate: float, rng: np.random.Generator) -> Correspondences:
    """Make the fraction of 3D points without a partner exactly ``rate`` (up to rounding): drop
    outliers at random, or add points uniform in the 3D points' bounding box."""
    has = _partnered_3d(c)
    inl, out = np.flatnonzero(has), np.flatnonzero(~has)
    want = _outlier_count(len(inl), rate)
    if want <= len(out):
        return keep_3d(c, np.sort(np.concatenate([inl, _choose(rng, out, want)])))
    if len(c.points3d):
        lo, hi = c.points3d.min(0), c.points3d.max(0)
    else:
        lo, hi = -np.ones(3), np.ones(3)
    extra = lo + rng.random((want - len(out), 3)) * (hi - lo)
    return replace(c, points3d=np.concatenate([c.points3d, extra.astype(c.points3d.dtype)]))


def cap_counts(
    c: Correspondences, m_max: int | None, n_max: int | None, rng: np.random.Generator
) -> Correspondences:
    """Subsample to at most ``m_max`` 2D and ``n_max`` 3D points.

    Inliers, 2D outliers and 3D outliers are thinned by one common factor, keeping pairs together,
    so both outlier rates survive the cap; at least ``min(MIN_INLIERS, inliers)`` pairs are kept.
    """
    m, n = len(c.points2d), len(c.points3d)
    scale = min(1.0, (m_max or m) / max(m, 1), (n_max or n) / max(n, 1))
    if scale >= 1.0:
        return c
    inl2 = np.flatnonzero(c.match >= 0)
    out2 = np.flatnonzero(c.match < 0)
    out3 = np.flatnonzero(~_partnered_3d(c))
    k = max(min(MIN_INLIERS, len(inl2)), int(scale * len(inl2)))
    k2 = min(int(scale * len(out2)), max((m_max or m) - k, 0))
    k3 = min(int(scale * len(out3)), max((n_max or n) - k, 0))
    kept_inl = _choose(rng, inl2, k)
    c = keep_2d(c, np.sort(np.concatenate([kept_inl, _choose(rng, out2, k2)])))
    keep3 = np.zeros(len(c.points3d), dtype=bool)
    keep3[c.match[c.match >= 0]] = True
    keep3[_choose(rng, out3, k3)] = True
    return keep_3d(c, np.flatnonzero(keep3))


def shuffle(c: Correspondences, rng: np.random.Generator) -> Correspondences:
    """Randomly permute both sets so the storage order carries no hint of the pairing."""
    c = keep_3d(c, rng.permutation(len(c.points3d)))
    return keep_2d(c, rng.permutation(len(c.points2d)))


@dataclass(frozen=True)
class PointControl:
    """Outlier rates, point-count caps and shuffling, applied in that order.

    Attributes:
        m_max, n_max: caps on the 2D and 3D set sizes (None: no cap).
        outlier_rate_2d, outlier_rate_3d: target outlier fractions in [0, 1) (None: keep the source's
            own outliers). Natural outliers are dropped at random to reach a lower rate; uniform ones
            are added to reach a higher rate.
        shuffle: permute both sets.
    """

    m_max: int | None = None
    n_max: int | None = None
    outlier_rate_2d: float | None = None
    outlier_rate_3d: float | None = None
    shuffle: bool = True

    def __post_init__(self) -> None:
        for name in ("m_max", "n_max"):
            v = getattr(self, name)
            if v is not None and v < MIN_INLIERS:
                raise ValueError(f"{name}={v}: must be at least {MIN_INLIERS}")
        for name in ("outlier_rate_2d", "outlier_rate_3d"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v < 1.0:
                raise ValueError(f"{name}={v}: must lie in [0, 1)")

    def __call__(self, c: Correspondences, rng: np.random.Generator) -> Correspondences:
        if self.outlier_rate_2d is not None:
            c = set_outlier_rate_2d(c, self.outlier_rate_2d, rng)
        if self.outlier_rate_3d is not None:
            c = set_outlier_rate_3d(c, self.outlier_rate_3d, rng)
        c = cap_counts(c, self.m_max, self.n_max, rng)
        return shuffle(c, rng) if self.shuffle else c
