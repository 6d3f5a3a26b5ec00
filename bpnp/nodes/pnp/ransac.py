"""RANSAC initialisation of the PnP layer on the top-k weighted pairs (no gradients), and the
candidate pair sets it draws from (:func:`top_pairs`, :func:`hungarian_pairs`).

- :func:`opencv_ransac`: OpenCV's ``solvePnPRansac`` (P3P hypotheses) per sample on the CPU.
- :func:`torch_ransac`: batched on the tensors' device: 6-point DLT hypotheses solved at once with
  batched linear algebra, pre-scored on a random subset of pairs, the best few scored on all pairs by
  weighted inlier count, then re-fitted on their inliers (weighted DLT).

Both fall back to the weighted DLT on all candidate pairs when no hypothesis is found.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from bpnp.geometry.dlt import camera_matrix_to_pose, dlt_camera_matrix
from bpnp.geometry.rotation import axis_angle_to_matrix


def top_pairs(W: Tensor, k: int, per_row: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest entries of each dense weight matrix, among each row's ``per_row`` largest.

    Exact when no row holds more than ``per_row`` of the top k (default ``ceil(k / m)``: for a
    transport plan, whose rows carry similar mass, each 2D point's best 3D partner); a row-wise
    selection first is two to three times faster than a top-k over all m n entries.

    Args:
        W: (B, m, n).
        k: number of pairs (capped at m n).
        per_row: candidates per row, or None.
    Returns:
        ``(rows (B, k), cols (B, k), weights (B, k))``, weights in descending order.
    """
    B, m, n = W.shape
    r = min(n, per_row if per_row is not None else -(-k // m))
    if r == 1:
        w_row, col_row = W.max(dim=-1, keepdim=True)  # (B, m, 1)
    else:
        w_row, col_row = W.topk(r, dim=-1)  # (B, m, r)
    w, idx = w_row.reshape(B, m * r).topk(min(k, m * r), dim=-1)
    return idx // r, col_row.reshape(B, m * r).gather(1, idx), w


def hungarian_pairs(cost: np.ndarray, max_cost: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one assignment of minimum total cost, pairs sorted by cost (cheapest first).

    Args:
        cost: (m, n) cost matrix (e.g. distances between unit features).
        max_cost: drop assigned pairs costlier than this (None keeps all min(m, n)).
    Returns:
        pairs (k, 2) int64 ``(i, j)`` and their costs (k,).
    """
    rows, cols = linear_sum_assignment(cost)
    c = cost[rows, cols]
    order = np.argsort(c, kind="stable")
    pairs, c = np.stack([rows, cols], 1)[order].astype(np.int64), c[order]
    if max_cost is not None:
        keep = c <= max_cost
        pairs, c = pairs[keep], c[keep]
    return pairs, c


def _fallback_pose(x: Tensor, X: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted DLT on all pairs; where it is not finite, identity rotation and the points' centroid
    moved in front of the camera.

    Args:
        x: (B, k, 2), X: (B, k, 3), w: (B, k).
    Returns:
        ``(R (B, 3, 3), t (B, 3))``.
    """
    R, t = camera_matrix_to_pose(dlt_camera_matrix(x, X, w))
    wsum = w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    centroid = (w[..., None] * X).sum(-2) / wsum
    spread = ((w * (X - centroid[:, None]).norm(dim=-1)).sum(-1) / wsum.squeeze(-1)).clamp_min(1.0)
    t_default = -centroid + torch.stack([0 * spread, 0 * spread, 3.0 * spread], dim=-1)
    ok = torch.isfinite(R).all((-1, -2)) & torch.isfinite(t).all(-1)
    eye = torch.eye(3, dtype=R.dtype, device=R.device).expand_as(R)
    return torch.where(ok[:, None, None], R, eye), torch.where(ok[:, None], t, t_default)


def opencv_ransac(
    x: Tensor, X: Tensor, w: Tensor, threshold: float = 0.01, iterations: int = 1000
) -> tuple[Tensor, Tensor, Tensor]:
    """OpenCV ``solvePnPRansac`` (P3P) per sample on its positively weighted pairs.

    Args:
        x: (B, k, 2) normalised image coordinates.
        X: (B, k, 3) world points.
        w: (B, k) weights; pairs with ``w <= 0`` are left out.
        threshold: inlier threshold in normalised image units.
        iterations: RANSAC iterations.
    Returns:
        ``(R (B, 3, 3), t (B, 3), found (B,) bool)`` on the inputs' device and dtype.
    """
    B = x.shape[0]
    x_np = x.detach().to("cpu", torch.float64).numpy()
    X_np = X.detach().to("cpu", torch.float64).numpy()
    w_np = w.detach().to("cpu", torch.float64).numpy()
    rvecs, tvecs = np.zeros((B, 3)), np.zeros((B, 3))
    found = np.zeros(B, dtype=bool)
    K = np.eye(3)
    for b in range(B):
        keep = w_np[b] > 0
        if keep.sum() < 4:
            continue
        obj = np.ascontiguousarray(X_np[b, keep])
        img = np.ascontiguousarray(x_np[b, keep])
        try:
            ok, rvec, tvec, inliers = cv2.solvePnPRansac(
                obj, img, K, None, iterationsCount=iterations, reprojectionError=threshold,
                confidence=0.999, flags=cv2.SOLVEPNP_P3P,
            )  # fmt: skip
        except cv2.error:
            ok, inliers = False, None
        candidates = [(rvec, tvec)] if ok else []
        sel = inliers.ravel() if ok and inliers is not None and len(inliers) >= 4 else slice(None)
        if _planar(obj[sel]):
            candidates += _ippe(obj[sel], img[sel])
        best = _best_candidate(candidates, obj, img, w_np[b, keep], threshold)
        if best is not None:
            rvecs[b], tvecs[b], found[b] = best[0], best[1], True
    R = axis_angle_to_matrix(torch.as_tensor(rvecs, dtype=x.dtype, device=x.device))
    t = torch.as_tensor(tvecs, dtype=x.dtype, device=x.device)
    found_t = torch.as_tensor(found, device=x.device)
    R_fb, t_fb = _fallback_pose(x.detach(), X.detach(), w.detach().clamp_min(0))
    return torch.where(found_t[:, None, None], R, R_fb), torch.where(found_t[:, None], t, t_fb), found_t


def _planar(X: np.ndarray, rel: float = 1e-4) -> bool:
    """Do the points (k, 3) lie (nearly) on a plane? Smallest covariance eigenvalue against the largest."""
    if len(X) < 4:
        return False
    ev = np.linalg.eigvalsh(np.cov(X.T))
    return bool(ev[0] <= rel * max(ev[2], np.finfo(float).tiny))


def _ippe(X: np.ndarray, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Both IPPE solutions of a planar set: P3P RANSAC's final fit often lands on the mirrored one."""
    try:
        _, rvecs, tvecs, _ = cv2.solvePnPGeneric(X, x, np.eye(3), None, flags=cv2.SOLVEPNP_IPPE)
    except cv2.error:
        return []
    return list(zip(rvecs, tvecs, strict=True))


def _best_candidate(
    candidates: list[tuple[np.ndarray, np.ndarray]],
    X: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The finite pose with the lowest weighted truncated reprojection error (MSAC score)."""
    best, best_score = None, np.inf
    for rvec, tvec in candidates:
        rvec, tvec = np.asarray(rvec, float).ravel(), np.asarray(tvec, float).ravel()
        if not (np.isfinite(rvec).all() and np.isfinite(tvec).all()):
            continue
        Xc = X @ cv2.Rodrigues(rvec)[0].T + tvec
        z = Xc[:, 2]
        err = np.where(z > 0, ((Xc[:, :2] / np.where(z > 0, z, 1.0)[:, None] - x) ** 2).sum(-1), np.inf)
        score = float((w * np.minimum(err, threshold**2)).sum())
        if score < best_score:
            best, best_score = (rvec, tvec), score
    return best


def _inlier_scores(P: Tensor, x: Tensor, X: Tensor, w: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Weighted inlier score of camera-matrix hypotheses (reprojection error below ``threshold``,
    positive depth).

    Args:
        P: (B, H, 3, 4).
        x: (B, k, 2), X: (B, k, 3), w: (B, k).
    Returns:
        ``(score (B, H), inlier (B, k, H) bool)``.
    """
    # Scores need no more than single precision: halves the memory traffic of the (B, k, H) planes.
    P, x, X, w = P.float(), x.float(), X.float(), w.float()
    Xh = torch.cat([X, torch.ones_like(X[..., :1])], dim=-1)  # (B, k, 4)
    # One (B, k, 4) x (B, 4, H) product per image coordinate: (B, k, H) planes, no size-3 reductions.
    u, v, z = (Xh @ P[:, :, r, :].transpose(-1, -2) for r in range(3))
    front = z > 0
    inv_z = 1.0 / torch.where(front, z, torch.ones_like(z))
    du = u * inv_z - x[..., 0:1]
    dv = v * inv_z - x[..., 1:2]
    inlier = front & (du * du + dv * dv < threshold**2)
    return (inlier * w[..., None]).sum(1), inlier


def score_poses(R: Tensor, t: Tensor, x: Tensor, X: Tensor, w: Tensor, threshold: float) -> Tensor:
    """Weighted inlier score (B, H) of candidate poses, in the units of the RANSAC scores.

    Args:
        R: (B, H, 3, 3), t: (B, H, 3) world-to-camera poses; x: (B, k, 2) normalised image points,
        X: (B, k, 3) their world partners, w: (B, k) pair weights; threshold: normalised units.
    """
    return _inlier_scores(torch.cat([R, t[..., None]], dim=-1), x, X, w, threshold)[0]


def torch_ransac(
    x: Tensor,
    X: Tensor,
    w: Tensor,
    threshold: float = 0.01,
    hypotheses: int = 512,
    sample_size: int = 6,
    prescore_pairs: int = 64,
    keep: int = 8,
    refits: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched RANSAC with DLT hypotheses, on the inputs' device (computed in float64).

    Needs non-coplanar 3D points (the DLT is degenerate for planar scenes; OpenCV's P3P is not).

    Args:
        x: (B, k, 2) normalised image coordinates.
        X: (B, k, 3) world points.
        w: (B, k) weights, sorted or not; pairs with ``w <= 0`` are left out.
        threshold: inlier threshold in normalised image units.
        hypotheses: hypotheses per sample.
        sample_size: pairs per hypothesis (>= 6).
        prescore_pairs: pairs of the cheap first scoring round.
        keep: hypotheses per sample scored on all pairs.
        refits: weighted-DLT re-fits on the inliers of the best hypothesis.
        generator: random generator (on the inputs' device) for reproducibility.
    Returns:
        ``(R (B, 3, 3), t (B, 3), found (B,) bool)``.
    """
    dtype = x.dtype
    x, X = x.detach().double(), X.detach().double()
    w = w.detach().double().clamp_min(0)
    B, k = w.shape
    dev = x.device
    # Positive pairs first, so a sample draws uniformly among its own n_pos candidates.
    order = torch.argsort((w > 0).to(torch.int8), dim=-1, descending=True, stable=True)
    x, X, w = (
        x.gather(1, order[..., None].expand(-1, -1, 2)),
        X.gather(1, order[..., None].expand(-1, -1, 3)),
        w.gather(1, order),
    )
    n_pos = (w > 0).sum(-1).clamp_min(1)
    n_sub = min(prescore_pairs, k)
    # One draw, each sample's numbers contiguous: a sample's hypotheses and pre-scoring pairs depend
    # on its place in the batch only, not on how many samples follow it.
    uniform = torch.rand(
        (B, hypotheses * sample_size + n_sub), generator=generator, device=dev, dtype=torch.float64
    )
    index = (uniform * n_pos[:, None]).long().clamp(0, max(k - 1, 0))

    def gather_pairs(idx: Tensor) -> tuple[Tensor, Tensor]:
        flat = idx.reshape(B, -1)
        xs = x.gather(1, flat[..., None].expand(-1, -1, 2)).reshape(*idx.shape, 2)
        Xs = X.gather(1, flat[..., None].expand(-1, -1, 3)).reshape(*idx.shape, 3)
        return xs, Xs

    xs, Xs = gather_pairs(index[:, : hypotheses * sample_size].reshape(B, hypotheses, sample_size))
    P = dlt_camera_matrix(xs, Xs, fix_depth=True)  # (B, H, 3, 4)
    P = torch.where(torch.isfinite(P), P, torch.zeros_like(P))
    # Cheap pre-scoring on a random subset of pairs, then full scoring of the best few.
    sub = index[:, hypotheses * sample_size :]
    xp, Xp = gather_pairs(sub)
    pre, _ = _inlier_scores(P, xp, Xp, w.gather(1, sub), threshold)
    top = pre.topk(min(keep, hypotheses), dim=-1).indices
    P = P.gather(1, top[..., None, None].expand(-1, -1, 3, 4))
    score, inlier = _inlier_scores(P, x, X, w, threshold)
    s_best, best = score.max(-1)
    P_best = P[torch.arange(B, device=dev), best]
    mask = inlier.gather(2, best[:, None, None].expand(-1, k, 1)).squeeze(-1)
    for _ in range(refits):
        # Local optimisation: the weighted DLT on the best hypothesis' inliers, kept if it scores as well.
        P_fit = dlt_camera_matrix(x, X, w * mask)
        P_fit = torch.where(torch.isfinite(P_fit), P_fit, P_best)
        s_fit, in_fit = _inlier_scores(P_fit[:, None], x, X, w, threshold)
        better = s_fit[:, 0] >= s_best
        P_best = torch.where(better[:, None, None], P_fit, P_best)
        mask = torch.where(better[:, None], in_fit[..., 0], mask)
        s_best = torch.where(better, s_fit[:, 0], s_best)
    found = mask.sum(-1) >= sample_size
    R, t = camera_matrix_to_pose(P_best)
    found = found & torch.isfinite(R).all((-1, -2)) & torch.isfinite(t).all(-1)
    R_fb, t_fb = _fallback_pose(x, X, w)
    R = torch.where(found[:, None, None], R, R_fb)
    t = torch.where(found[:, None], t, t_fb)
    return R.to(dtype), t.to(dtype), found
