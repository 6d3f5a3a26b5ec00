"""RANSAC initialisation of the PnP layer on the top-k weighted pairs (no gradients), and the
candidate pair sets it draws from (:func:`top_pairs`, :func:`hungarian_pairs`).

- :func:`opencv_ransac`: OpenCV's ``solvePnPRansac`` (P3P hypotheses) per sample on the CPU.
- :func:`torch_ransac`: batched on the tensors' device: rounds of minimal samples of 3 pairs for the
  whole batch, solved at once by the Lambda Twist P3P solver (:func:`bpnp.geometry.solve_p3p`),
  their up to 4 poses pre-scored on a random subset of pairs, the best few scored on all pairs by
  weighted inlier count, until every sample meets its adaptive RANSAC bound; then Gauss-Newton
  steps on the best pose's inliers. Planar scenes work; a sample's result does not depend on its
  batch mates.

Both take the inlier threshold in normalised image units, need 4 positively weighted pairs, and
fall back to the weighted DLT on all candidate pairs when no hypothesis is found.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from bpnp.geometry.dlt import camera_matrix_to_pose, dlt_camera_matrix
from bpnp.geometry.p3p import p3p_camera_entries
from bpnp.geometry.rotation import axis_angle_to_matrix
from bpnp.nodes.pnp.objectives import REPROJECTION, PairedProblem, derivatives, local_pose, paired_value


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


def _pair_rows(x: Tensor, X: Tensor, threshold: float) -> Tensor:
    """Rows that turn a flattened camera matrix into the residuals ``u - x z``, ``v - y z`` and
    ``threshold * z`` of each pair (float32: scores need no more, and it halves the memory traffic).

    Args:
        x: (B, k, 2), X: (B, k, 3).
    Returns:
        (B, 3 k, 12): the three blocks of k rows in that order.
    """
    x, X = x.float(), X.float()
    Xh = torch.cat([X, torch.ones_like(X[..., :1])], dim=-1)  # (B, k, 4)
    o = torch.zeros_like(Xh)
    return torch.cat(
        [
            torch.cat([Xh, o, -x[..., :1] * Xh], dim=-1),
            torch.cat([o, Xh, -x[..., 1:] * Xh], dim=-1),
            torch.cat([o, o, threshold * Xh], dim=-1),
        ],
        dim=1,
    )


def _row_planes(rows: Tensor, P: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Residual planes ``u - x z``, ``v - y z`` and ``threshold * z`` (B, k, H) of hypotheses
    P (B, H, 3, 4) at the pairs of :func:`_pair_rows`."""
    planes = rows @ P.float().flatten(-2).transpose(-1, -2)  # (B, 3 k, H)
    return planes.unflatten(1, (3, rows.shape[1] // 3)).unbind(1)


def _row_scores(rows: Tensor, P: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted inlier score of camera-matrix hypotheses from :func:`_pair_rows`: a pair is an
    inlier when ``|(u - x z, v - y z)| < threshold z`` (the reprojection test without a division;
    it implies ``z > 0``).

    Args:
        rows: (B, 3 k, 12), P: (B, H, 3, 4), w: (B, k).
    Returns:
        ``(score (B, H), inlier (B, k, H) bool)``.
    """
    ru, rv, tz = _row_planes(rows, P)
    inlier = torch.hypot(ru, rv) < tz
    return (w.float()[:, None, :] @ inlier.float()).squeeze(1), inlier


def _row_fit(rows: Tensor, P: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Inliers (B, k) and weighted truncated squared reprojection error ``sum w min(e^2, threshold^2)``
    (MSAC, in units of ``threshold^2``; B,) of one hypothesis P (B, 3, 4) per sample."""
    ru, rv, tz = (v[..., 0] for v in _row_planes(rows, P[:, None]))
    d = torch.hypot(ru, rv)
    e2 = torch.where(d < tz, (d / tz).square(), 1.0)  # d < tz: an inlier (so tz > 0)
    return d < tz, (w.float() * e2).sum(-1)


def _inlier_scores(P: Tensor, x: Tensor, X: Tensor, w: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Weighted inlier score of camera-matrix hypotheses (reprojection error below ``threshold``,
    positive depth).

    Args:
        P: (B, H, 3, 4).
        x: (B, k, 2), X: (B, k, 3), w: (B, k).
    Returns:
        ``(score (B, H), inlier (B, k, H) bool)``.
    """
    return _row_scores(_pair_rows(x, X, threshold), P, w)


def score_poses(R: Tensor, t: Tensor, x: Tensor, X: Tensor, w: Tensor, threshold: float) -> Tensor:
    """Weighted inlier score (B, H) of candidate poses, in the units of the RANSAC scores.

    Args:
        R: (B, H, 3, 3), t: (B, H, 3) world-to-camera poses; x: (B, k, 2) normalised image points,
        X: (B, k, 3) their world partners, w: (B, k) pair weights; threshold: normalised units.
    """
    return _inlier_scores(torch.cat([R, t[..., None]], dim=-1), x, X, w, threshold)[0]


def _int64(c: int) -> int:
    """A 64-bit constant as the signed integer of the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _MIX1, _MIX2 = (_int64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (``>>`` on signed integers copies the sign bit)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix64(z: Tensor) -> Tensor:
    """SplitMix64's finaliser: a bijection of 64-bit integers (wrapping arithmetic) mixing all bits."""
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def _uniform(keys: Tensor, start: int, n: int) -> Tensor:
    """Draws ``start .. start + n - 1`` of the SplitMix64 streams ``keys`` (R,): (R, n) float64 in [0, 1).

    Counter-based: any draw of any stream directly, identical on every device (``torch.rand``'s
    numbers on CUDA depend on the tensor's size, so on the other samples of the batch).
    """
    j = torch.arange(start, start + n, device=keys.device, dtype=torch.int64)
    return _shift_right(_mix64(keys[:, None] + j * _GOLDEN), 11).double() * 2.0**-53


def _distinct_triples(u: Tensor, n: Tensor) -> Tensor:
    """Uniform triples of distinct indices in ``[0, n)`` from uniform numbers.

    Draw ``j0 < n``, ``j1 < n - 1``, ``j2 < n - 2`` and step each past the indices drawn before it
    (in increasing order), which maps them one-to-one onto the distinct triples.

    Args:
        u: (B, H, 3) uniform in [0, 1).
        n: (B,) population sizes (>= 3 for distinct triples).
    Returns:
        (B, H, 3) int64.
    """
    size = (n[:, None, None] - torch.arange(3, device=u.device)).clamp_min(1)
    j = (u * size).long().clamp_max(size - 1)
    j0, j1, j2 = j.unbind(-1)
    j1 = j1 + (j1 >= j0)
    lo, hi = torch.minimum(j0, j1), torch.maximum(j0, j1)
    j2 = j2 + (j2 >= lo)
    j2 = j2 + (j2 >= hi)
    return torch.stack([j0, j1, j2], dim=-1)


def _gather_pairs(x: Tensor, X: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Pairs ``idx`` (B, ...) of x (B, k, 2), X (B, k, 3) -> (B, ..., 2), (B, ..., 3)."""
    flat = idx.reshape(idx.shape[0], -1, 1)
    xs = x.gather(1, flat.expand(-1, -1, 2)).reshape(*idx.shape, 2)
    Xs = X.gather(1, flat.expand(-1, -1, 3)).reshape(*idx.shape, 3)
    return xs, Xs


# Pairs of the local optimisation at most (the highest-weighted inliers): bounds its cost for large k.
_LOCAL_PAIRS = 256


def _refine_on_inliers(
    R: Tensor, t: Tensor, x: Tensor, X: Tensor, w: Tensor, steps: int
) -> tuple[Tensor, Tensor]:
    """Gauss-Newton steps on the weighted reprojection error (weights ``w``: zero off the inliers);
    a step is kept only where it lowers the error.

    Args:
        R: (B, 3, 3), t: (B, 3), x: (B, k, 2), X: (B, k, 3), w: (B, k).
    Returns:
        ``(R (B, 3, 3), t (B, 3))``.
    """
    problem = PairedProblem(REPROJECTION, X, x, w, torch.zeros_like(w[:, 0]))
    eye = torch.eye(6, dtype=R.dtype, device=R.device)
    for _ in range(steps):
        f, grad, H, _ = derivatives(problem, R, t)
        # A little damping keeps the solve defined for inlier sets that do not fix all 6 parameters.
        damp = 1e-9 * H.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(torch.finfo(R.dtype).tiny)
        step = torch.linalg.solve_ex(H + damp[:, None, None] * eye, -grad)[0]
        R_new, t_new = local_pose(R, t, step)
        f_new = paired_value(problem, R_new, t_new)
        better = torch.isfinite(f_new) & (f_new < f)
        R = torch.where(better[:, None, None], R_new, R)
        t = torch.where(better[:, None], t_new, t)
    return R, t


def _round_sizes(iterations: int, round_size: int) -> list[int]:
    """Minimal samples per round: half of ``round_size`` first (a sample with many inliers is done
    after a few dozen), then ``round_size``; ``iterations`` in all."""
    sizes, total = [], 0
    while total < iterations:
        sizes.append(min(max(1, round_size // 2 if not sizes else round_size), iterations - total))
        total += sizes[-1]
    return sizes


def _round_best(
    x: Tensor, X: Tensor, w: Tensor, rows: Tensor, tri: Tensor, sub: Tensor, threshold: float, keep: int
) -> tuple[Tensor, Tensor, Tensor]:
    """One RANSAC round for the active samples: the P3P poses of minimal samples ``tri`` (A, h, 3),
    pre-scored on the pairs ``sub`` (A, n_sub), the best ``keep`` scored on all pairs (``rows``).

    Returns:
        the round's best score (A,), its positive inlier count (A,) and camera matrix (A, 3, 4).
    """
    h = tri.shape[1]
    entries, valid = p3p_camera_entries(*_gather_pairs(x, X, tri))  # 12 x (A, h, 4), (A, h, 4)
    entries, valid = [e.flatten(1) for e in entries], valid.flatten(1)  # (A, 4 h)
    # Pre-scoring on random positive pairs (the candidates in float32: one stack of the lot), then
    # the round's best few (kept in float64) on all pairs.
    w_sub = w.gather(1, sub)
    P32 = torch.stack([e.float() for e in entries], dim=-1).unflatten(-1, (3, 4))  # (A, 4 h, 3, 4)
    pre = _inlier_scores(P32, *_gather_pairs(x, X, sub), w_sub, threshold)[0]
    # Less the minimal sample's own pairs, which every pose of it fits exactly: left in, they rank a
    # wrong pose whose sample the subset happens to hold above a right one.
    mass = torch.zeros_like(w).scatter_add_(1, sub, w_sub)  # (A, k): weight of each pair in the subset
    own = mass.gather(1, tri.flatten(1)).view(-1, h, 3).sum(-1)
    pre = pre - own.float().repeat_interleave(4, dim=1)
    top = torch.where(valid, pre, -1.0).topk(min(keep, 4 * h), dim=-1).indices
    P = torch.stack([e.gather(1, top) for e in entries], dim=-1).unflatten(-1, (3, 4))  # (A, keep, 3, 4)
    score, inlier = _row_scores(rows, P, w)
    score = torch.where(valid.gather(1, top), score, -1.0)
    s_round, i_round = score.max(-1)
    count = (inlier & (w > 0)[:, :, None]).sum(1).gather(1, i_round[:, None]).squeeze(1)
    return s_round, count, P[torch.arange(len(P), device=P.device), i_round]


def _local_optimisation(x: Tensor, X: Tensor, w: Tensor, rows: Tensor, P: Tensor, steps: int) -> Tensor:
    """Gauss-Newton on the (highest-weighted) inliers of the camera matrices ``P`` (B, 3, 4), twice
    with re-selected inliers; kept where the truncated error does not grow (a refined pose often
    trades a chance inlier of the rough one for accuracy)."""
    n_lo = min(w.shape[1], _LOCAL_PAIRS)
    inlier, cost = _row_fit(rows, P, w)
    for _ in range(2):
        w_lo, idx = (w * inlier).topk(n_lo, dim=-1)
        x_lo, X_lo = _gather_pairs(x, X, idx)
        R_lo, t_lo = _refine_on_inliers(P[..., :3], P[..., 3], x_lo, X_lo, w_lo, steps)
        P_lo = torch.cat([R_lo, t_lo[..., None]], dim=-1)
        inlier_lo, cost_lo = _row_fit(rows, P_lo, w)
        ok = (cost_lo <= cost) & torch.isfinite(P_lo).all((-1, -2))
        P = torch.where(ok[:, None, None], P_lo, P)
        inlier = torch.where(ok[:, None], inlier_lo, inlier)
        cost = torch.where(ok, cost_lo, cost)
    return P


def torch_ransac(
    x: Tensor,
    X: Tensor,
    w: Tensor,
    threshold: float = 0.01,
    iterations: int = 1000,
    round_size: int = 128,
    prescore_pairs: int = 32,
    keep: int = 8,
    confidence: float = 0.999,
    local_steps: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched P3P RANSAC on the inputs' device.

    Rounds of minimal samples (3 distinct positive pairs, drawn uniformly) for every sample of the
    batch, all solved at once by :func:`~bpnp.geometry.solve_p3p`. Each of the up to 4 poses of a
    minimal sample is pre-scored on ``prescore_pairs`` random positive pairs (in place of OpenCV's
    fourth pair that picks one: a hypothesis needs 3 true pairs, not 4), and the round's ``keep``
    best are scored on all pairs by weighted inlier count (reprojection error below ``threshold``,
    positive depth). A sample stops once its minimal samples reach the adaptive bound
    ``log(1 - confidence) / log(1 - e^3)`` at its best inlier ratio ``e``, or ``iterations``; the
    batch stops when every sample has (one host sync per round). Stopped samples are frozen, so a
    result does not depend on the other samples of the batch. Last, a local optimisation: Gauss-
    Newton steps on the reprojection error of the best pose's inliers, twice with re-selected
    inliers, each kept where it scores at least as well by the truncated squared error (MSAC: the
    inlier count alone would reject a refined pose that loses one chance inlier of the rough one).

    Needs 4 positive pairs (the best pose must have an inlier beyond its minimal sample); planar
    scenes are fine. Solved in float64, scored in float32.

    Args:
        x: (B, k, 2) normalised image coordinates.
        X: (B, k, 3) world points.
        w: (B, k) weights, sorted or not; pairs with ``w <= 0`` are left out.
        threshold: inlier threshold in normalised image units.
        iterations: minimal samples per sample at most.
        round_size: minimal samples per round (the first round: half as many).
        prescore_pairs: pairs of the cheap first scoring.
        keep: poses per round scored on all pairs.
        confidence: of the adaptive stopping bound.
        local_steps: Gauss-Newton steps per local optimisation.
        generator: random generator (on the inputs' device) for reproducibility.
    Returns:
        ``(R (B, 3, 3), t (B, 3), found (B,) bool)``; not found: :func:`_fallback_pose`.
    """
    # Long because the docstring states the whole algorithm; the body is the round loop and the
    # preparation its streams and scores share.
    dtype = x.dtype
    x, X = x.detach().double(), X.detach().double()
    w = w.detach().double().clamp_min(0)
    B, k = w.shape
    dev = x.device
    # Positive pairs first, so a sample draws uniformly among its own n_pos candidates.
    order = torch.argsort((w > 0).to(torch.int8), dim=-1, descending=True, stable=True)
    x = x.gather(1, order[..., None].expand(-1, -1, 2))
    X = X.gather(1, order[..., None].expand(-1, -1, 3))
    w = w.gather(1, order)
    positive = w > 0
    n_pos = positive.sum(-1)
    sizes = _round_sizes(iterations, round_size) if k else []
    n_sub = min(prescore_pairs, k)
    rows = _pair_rows(x, X, threshold)  # (B, 3 k, 12), reused by every full scoring
    # Each sample's random numbers: a stream of its own (from one seed and its place in the batch),
    # the same on every device and whatever the other samples are.
    seed = torch.randint(-(2**63), 2**63 - 1, (), generator=generator, device=dev, dtype=torch.int64)
    keys = _mix64(_mix64(seed + torch.arange(B, device=dev)))
    log_fail = math.log(max(1.0 - confidence, 1e-300))

    best_score = torch.full((B,), -1.0, device=dev)
    best_count = torch.zeros(B, dtype=torch.long, device=dev)
    best_P = torch.zeros(B, 3, 4, dtype=torch.float64, device=dev)
    done = n_pos < 4
    drawn = 0
    for r, h in enumerate(sizes):
        active = (~done).nonzero().squeeze(1)  # the round's one host sync
        if active.numel() == 0:
            break
        if len(active) < B:
            xa, Xa, wa, na, rows_a = x[active], X[active], w[active], n_pos[active], rows[active]
        else:
            xa, Xa, wa, na, rows_a = x, X, w, n_pos, rows
        # A stream's draws 3 j .. 3 j + 2 pick minimal sample j; from 3 * iterations on, n_sub per
        # round pick the pre-scoring pairs.
        tri = _distinct_triples(_uniform(keys[active], 3 * drawn, 3 * h).view(-1, h, 3), na)
        drawn += h
        sub = (
            (_uniform(keys[active], 3 * iterations + n_sub * r, n_sub) * na[:, None]).long().clamp_max(k - 1)
        )
        s_round, count, P_round = _round_best(xa, Xa, wa, rows_a, tri, sub, threshold, keep)
        better = s_round > best_score[active]
        best_score[active] = torch.where(better, s_round, best_score[active])
        best_count[active] = torch.where(better, count, best_count[active])
        best_P[active] = torch.where(better[:, None, None], P_round, best_P[active])
        # Adaptive bound: enough minimal samples for `confidence` at the best inlier ratio so far.
        ratio = (best_count[active] / na).clamp(0, 1)
        needed = torch.where(ratio > 0, log_fail / torch.log1p(-(ratio**3)), torch.inf)
        done[active] = drawn >= needed

    found = (n_pos >= 4) & (best_count >= 4)
    best_P = _local_optimisation(x, X, w, rows, best_P, local_steps)
    # The fallback for the whole batch, picked per sample: no host sync to find the lost samples.
    R_fb, t_fb = _fallback_pose(x, X, w)
    R = torch.where(found[:, None, None], best_P[..., :3], R_fb)
    t = torch.where(found[:, None], best_P[..., 3], t_fb)
    return R.to(dtype), t.to(dtype), found
