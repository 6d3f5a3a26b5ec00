"""The numpy view of one problem of a batch and of a method's answer to it, shared by the drawers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bpnp.data.sample import Batch
from bpnp.metrics.output import MethodOutput


@dataclass
class ProblemView:
    """One problem, unpadded, as float64 numpy arrays.

    Attributes:
        points2d: (m, 2) pixels; points3d: (n, 3); match: (m,) index or -1.
        K: (3, 3); R, t: ground-truth pose; R_est, t_est: estimated pose or None when invalid.
        pairs: (k, 2) the method's pairs ``(i, j)``, best first (empty when it gives none).
        plan: (m, n) or (m + 1, n + 1) transport plan, or None.
        image_size: (width, height); image_path: the photo, when the source has one.
    """

    points2d: np.ndarray
    points3d: np.ndarray
    match: np.ndarray
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    R_est: np.ndarray | None
    t_est: np.ndarray | None
    pairs: np.ndarray
    plan: np.ndarray | None
    image_size: tuple[int, int]
    image_path: str | None = None
    title: str = ""

    @property
    def correct(self) -> np.ndarray:
        """(k,) bool: which pairs are true matches."""
        if len(self.pairs) == 0:
            return np.zeros(0, dtype=bool)
        return self.match[self.pairs[:, 0]] == self.pairs[:, 1]


def _image_size(K: np.ndarray, points2d: np.ndarray, size: tuple[int, int] | None) -> tuple[int, int]:
    """The image size, else twice the principal point, else the points' extent (for K = I data)."""
    if size is not None:
        return int(size[0]), int(size[1])
    w, h = 2 * K[0, 2], 2 * K[1, 2]
    if w >= 16 and h >= 16:
        return int(round(w)), int(round(h))
    hi = points2d.max(0) if len(points2d) else np.ones(2)
    return max(int(np.ceil(hi[0])), 16), max(int(np.ceil(hi[1])), 16)


def _unpad_plan(P: np.ndarray, m: int, n: int, M: int, N: int) -> np.ndarray:
    """The real block of a padded plan: (m, n), or (m + 1, n + 1) when the padded plan (M + 1, N + 1)
    carries a dustbin as its last row and column."""
    if P.shape == (M + 1, N + 1):
        top = np.concatenate([P[:m, :n], P[:m, N:]], 1)
        bottom = np.concatenate([P[M:, :n], P[M:, N:]], 1)
        return np.concatenate([top, bottom], 0)
    return P[:m, :n]


def problem_view(batch: Batch, out: MethodOutput | None, b: int) -> ProblemView:
    """Problem ``b`` of ``batch`` and, if given, the method's answer to it."""
    m, n = int(batch.mask2d[b].sum()), int(batch.mask3d[b].sum())
    p2 = batch.points2d[b, :m].detach().double().cpu().numpy()
    K = batch.K[b].detach().double().cpu().numpy()
    R_est = t_est = plan = None
    pairs = np.zeros((0, 2), dtype=np.int64)
    if out is not None:
        out = out.detach_cpu()
        if bool(out.valid[b]) and np.isfinite(out.R[b].numpy()).all() and np.isfinite(out.t[b].numpy()).all():
            R_est, t_est = out.R[b].double().numpy(), out.t[b].double().numpy()
        if out.pairs is not None:
            p = out.pairs[b].long().numpy()
            pairs = p[(p[:, 0] >= 0) & (p[:, 1] >= 0) & (p[:, 0] < m) & (p[:, 1] < n)]
        if out.plan is not None:
            plan = _unpad_plan(
                out.plan[b].double().numpy(), m, n, batch.points2d.shape[1], batch.points3d.shape[1]
            )
    size = batch.image_size[b] if b < len(batch.image_size) else None
    path = batch.image_path[b] if b < len(batch.image_path) else None
    title = batch.id[b] if b < len(batch.id) else ""
    return ProblemView(
        points2d=p2,
        points3d=batch.points3d[b, :n].detach().double().cpu().numpy(),
        match=batch.match[b, :m].detach().cpu().numpy(),
        K=K,
        R=batch.R[b].detach().double().cpu().numpy(),
        t=batch.t[b].detach().double().cpu().numpy(),
        R_est=R_est,
        t_est=t_est,
        pairs=pairs,
        plan=plan,
        image_size=_image_size(K, p2, size),
        image_path=path,
        title=title,
    )
