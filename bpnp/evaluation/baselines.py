"""Methods that need no trained network, and the RANSAC / Hungarian steps the network reuses.

- :class:`OracleBaseline`: OpenCV PnP-RANSAC on the ground-truth correspondences (upper bound).
- :class:`RandomBaseline`: PnP-RANSAC on random one-to-one pairs, retried until a time budget per
  problem is spent (the floor).
- :class:`RetrievedPoseBaseline`: the reference view's pose (a map's retrieved database image).
- :class:`BearingHungarian`: nearest reference-view bearings, one-to-one, then RANSAC.
- :class:`HungarianMatcher`: a cost (or feature-distance) matrix matched one-to-one with
  ``scipy.optimize.linear_sum_assignment``, then PnP-RANSAC on the cheapest pairs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from bpnp.data.sample import Batch
from bpnp.geometry import bearing_angles, normalized_to_bearings, pixels_to_normalized
from bpnp.metrics.output import MethodOutput
from bpnp.models.network import reference_bearings
from bpnp.nodes.pnp.ransac import hungarian_pairs

# Time per problem of the random baseline when no other method's time is there to copy.
DEFAULT_BUDGET_MS = 50.0


def normalised_camera(K: np.ndarray) -> bool:
    """Is ``K`` the identity, i.e. are the image points in normalised rather than pixel units?"""
    return bool(np.allclose(K, np.eye(3)))


@dataclass(frozen=True)
class RansacConfig:
    """Settings of OpenCV's PnP-RANSAC.

    ``threshold_px`` applies to pixel coordinates; a problem whose ``K`` is the identity (points already
    normalised, as in BPnPNet's archive) uses ``threshold_normalised`` instead (0.005 is 4 px at a
    focal length of 800 px).
    """

    threshold_px: float = 4.0
    threshold_normalised: float = 0.005
    iterations: int = 1000
    confidence: float = 0.9999
    refine: bool = True


@dataclass
class RansacPose:
    """One problem's RANSAC outcome: ``R`` (3, 3), ``t`` (3,), ``inliers`` (k,) bool over the input pairs."""

    R: np.ndarray
    t: np.ndarray
    inliers: np.ndarray


def ransac_pnp(
    points3d: np.ndarray, points2d: np.ndarray, K: np.ndarray, cfg: RansacConfig
) -> RansacPose | None:
    """PnP-RANSAC on paired points, refined by Levenberg-Marquardt on the inliers.

    Args:
        points3d: (k, 3) world points; points2d: (k, 2) their image points; K: (3, 3).
    Returns:
        The pose, or None when there are fewer than 4 pairs or RANSAC finds no consensus.
    """
    k = points3d.shape[0]
    if k < 4:
        return None
    X = np.ascontiguousarray(points3d, dtype=np.float64).reshape(k, 1, 3)
    x = np.ascontiguousarray(points2d, dtype=np.float64).reshape(k, 1, 2)
    Kd = np.ascontiguousarray(K, dtype=np.float64)
    # SOLVEPNP_ITERATIVE needs 6 points in general position but EPnP (its RANSAC minimal solver for
    # fewer) copes with 4-5; OpenCV picks by itself.
    try:
        ok, rvec, tvec, inl = cv2.solvePnPRansac(
            X, x, Kd, None,
            iterationsCount=cfg.iterations,
            reprojectionError=float(cfg.threshold_normalised if normalised_camera(Kd) else cfg.threshold_px),
            confidence=cfg.confidence,
            flags=cv2.SOLVEPNP_ITERATIVE,
        )  # fmt: skip
    except cv2.error:
        return None
    if not ok or inl is None or len(inl) < 4 or not (np.isfinite(rvec).all() and np.isfinite(tvec).all()):
        return None
    inliers = np.zeros(k, dtype=bool)
    inliers[inl.reshape(-1)] = True
    if cfg.refine:
        rvec, tvec = cv2.solvePnPRefineLM(X[inliers], x[inliers], Kd, None, rvec, tvec)
    R, _ = cv2.Rodrigues(rvec)
    return RansacPose(R=R, t=tvec.reshape(3), inliers=inliers)


def _pose_tensors(results: list[RansacPose | None], like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Stack per-problem results into R (B, 3, 3), t (B, 3), valid (B,); failures get identity / 0."""
    B = len(results)
    R = torch.eye(3, dtype=like.dtype).repeat(B, 1, 1)
    t = torch.zeros(B, 3, dtype=like.dtype)
    valid = torch.zeros(B, dtype=torch.bool)
    for b, res in enumerate(results):
        if res is not None:
            R[b] = torch.as_tensor(res.R, dtype=like.dtype)
            t[b] = torch.as_tensor(res.t, dtype=like.dtype)
            valid[b] = True
    return R, t, valid


def _pad_pairs(pairs: list[np.ndarray], scores: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Pad per-problem (k_b, 2) pairs and (k_b,) scores to (B, k, 2) / (B, k) with -1 / nan."""
    k = max((p.shape[0] for p in pairs), default=0)
    P = torch.full((len(pairs), k, 2), -1, dtype=torch.long)
    S = torch.full((len(pairs), k), math.nan, dtype=torch.float64)
    for b, (p, s) in enumerate(zip(pairs, scores, strict=True)):
        P[b, : p.shape[0]] = torch.as_tensor(p, dtype=torch.long)
        S[b, : s.shape[0]] = torch.as_tensor(s, dtype=torch.float64)
    return P, S


def _problem_arrays(batch: Batch, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unpadded (m, 2) pixels, (n, 3) points, (3, 3) K and (m,) match of problem ``b``."""
    m, n = int(batch.mask2d[b].sum()), int(batch.mask3d[b].sum())
    return (
        batch.points2d[b, :m].double().cpu().numpy(),
        batch.points3d[b, :n].double().cpu().numpy(),
        batch.K[b].double().cpu().numpy(),
        batch.match[b, :m].cpu().numpy(),
    )


def _inliers_first(pairs: np.ndarray, inliers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder pairs so RANSAC inliers come first; the score is the inlier flag."""
    order = np.argsort(~inliers, kind="stable")
    return pairs[order], inliers[order].astype(np.float64)


def per_problem(batch: Batch, solve) -> MethodOutput:
    """Run ``solve(uv, X, K, match) -> (RANSAC result or None, pairs (k, 2))`` on every problem of a
    batch (OpenCV works per problem) and pack the poses and pairs, RANSAC inliers first."""
    results, pairs, scores = [], [], []
    for b in range(len(batch)):
        res, p = solve(*_problem_arrays(batch, b))
        results.append(res)
        p, s = _inliers_first(p, res.inliers) if res is not None else (p, np.zeros(len(p)))
        pairs.append(p)
        scores.append(s)
    R, t, valid = _pose_tensors(results, batch.points3d)
    P, S = _pad_pairs(pairs, scores)
    return MethodOutput(R=R, t=t, valid=valid, pairs=P, scores=S)


class OracleBaseline:
    """PnP-RANSAC on the ground-truth correspondences: what a perfect matcher would reach."""

    name = "oracle"

    def __init__(self, ransac: RansacConfig | None = None) -> None:
        self.ransac = ransac or RansacConfig()

    def __call__(self, batch: Batch) -> MethodOutput:
        def solve(uv: np.ndarray, X: np.ndarray, K: np.ndarray, match: np.ndarray):
            i = np.flatnonzero(match >= 0)
            return ransac_pnp(X[match[i]], uv[i], K, self.ransac), np.stack([i, match[i]], axis=1)

        return per_problem(batch, solve)


class RandomBaseline:
    """PnP-RANSAC on random one-to-one pairs, repeated with fresh pairs until ``budget_ms`` per
    problem is spent; the attempt with most inliers wins. At least one attempt per problem.

    Args:
        budget_ms: time per problem; None lets the evaluation runner set it to the compared
            method's time (``DEFAULT_BUDGET_MS`` when called outside the runner).
        max_pairs: pairs drawn per attempt (at most min(m, n)).
        ransac: settings of each attempt (fewer iterations than the oracle, so that several
            attempts fit the budget).
        seed: seed of the pair sampler.
    """

    name = "random"

    def __init__(
        self,
        budget_ms: float | None = DEFAULT_BUDGET_MS,
        max_pairs: int = 1000,
        ransac: RansacConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.budget_ms = budget_ms
        self.max_pairs = max_pairs
        self.ransac = ransac or RansacConfig(iterations=50)
        self.rng = np.random.default_rng(seed)

    def _solve(self, uv: np.ndarray, X: np.ndarray, K: np.ndarray) -> tuple[RansacPose | None, np.ndarray]:
        k = min(uv.shape[0], X.shape[0], self.max_pairs)
        best: RansacPose | None = None
        best_pairs = np.zeros((0, 2), dtype=np.int64)
        budget = DEFAULT_BUDGET_MS if self.budget_ms is None else self.budget_ms
        deadline = time.perf_counter() + budget / 1000.0
        while True:
            p = np.stack([self.rng.permutation(uv.shape[0])[:k], self.rng.permutation(X.shape[0])[:k]], 1)
            res = ransac_pnp(X[p[:, 1]], uv[p[:, 0]], K, self.ransac)
            better = res is not None and (best is None or res.inliers.sum() > best.inliers.sum())
            if better or best_pairs.shape[0] == 0:
                best, best_pairs = res, p
            if time.perf_counter() >= deadline:
                return best, best_pairs

    def __call__(self, batch: Batch) -> MethodOutput:
        return per_problem(batch, lambda uv, X, K, _: self._solve(uv, X, K))


class HungarianMatcher:
    """Features + Hungarian: one-to-one matching of a cost matrix, then PnP-RANSAC on the top-k.

    Args:
        cost_fn: batch -> (B, M, N) costs (padded like the batch; only the real block is used),
            e.g. the distance ``||f_i - g_j||`` between a network's unit features.
        topk: keep the k cheapest assigned pairs (None keeps all).
        max_cost: drop pairs costlier than this.
        name: row label in reports.
    """

    def __init__(
        self,
        cost_fn: Callable[[Batch], Tensor],
        topk: int | None = None,
        max_cost: float | None = None,
        ransac: RansacConfig | None = None,
        name: str = "features+hungarian",
    ) -> None:
        self.cost_fn = cost_fn
        self.topk = topk
        self.max_cost = max_cost
        self.ransac = ransac or RansacConfig()
        self.name = name

    def __call__(self, batch: Batch) -> MethodOutput:
        with torch.no_grad():
            cost = self.cost_fn(batch).detach().double().cpu().numpy()
        results, pairs, scores = [], [], []
        for b in range(len(batch)):
            uv, X, K, _ = _problem_arrays(batch, b)
            p, c = hungarian_pairs(cost[b, : uv.shape[0], : X.shape[0]], self.max_cost)
            if self.topk is not None:
                p, c = p[: self.topk], c[: self.topk]
            results.append(ransac_pnp(X[p[:, 1]], uv[p[:, 0]], K, self.ransac))
            pairs.append(p)
            scores.append(-c)
        R, t, valid = _pose_tensors(results, batch.points3d)
        P, S = _pad_pairs(pairs, scores)
        return MethodOutput(R=R, t=t, valid=valid, pairs=P, scores=S)


class RetrievedPoseBaseline:
    """The reference view's pose as the answer (the retrieved database image, with no matching):
    how much a query's nearest map image alone gives, the floor a matcher must beat on map data."""

    name = "retrieved pose"

    def __init__(self, ransac: RansacConfig | None = None) -> None:
        del ransac  # no estimation: the same constructor as the other baselines

    def __call__(self, batch: Batch) -> MethodOutput:
        if batch.ref_view is None:
            raise ValueError(
                "baseline 'retrieved': the samples have no reference view (R_ref, t_ref); the colmap "
                "source has one, the synthetic one with reference_view_deg"
            )
        R, t = batch.ref_view
        return MethodOutput(R=R, t=t, valid=torch.ones(len(batch), dtype=torch.bool, device=R.device))


def reference_view_angles(batch: Batch) -> Tensor:
    """(B, M, N) angles (radians) between each query bearing and each 3D point's bearing in the
    reference view: the matching cost of a map's retrieved image without any learning."""
    q = normalized_to_bearings(pixels_to_normalized(batch.points2d.double(), batch.K.double()))
    ref = batch.ref_view
    if ref is None:
        raise ValueError("baseline 'bearings': the samples have no reference view (R_ref, t_ref)")
    r = reference_bearings(batch.points3d.double(), batch.mask3d, (ref[0].double(), ref[1].double()))
    return bearing_angles(q, r)


class BearingHungarian(HungarianMatcher):
    """Nearest bearings one-to-one: the query's keypoints matched to the 3D points as the reference
    view sees them (Hungarian on the angles, pairs beyond ``max_angle`` dropped), then RANSAC; what
    a nearby retrieved image gives without learning, the baseline a matcher on map data must beat."""

    def __init__(self, ransac: RansacConfig | None = None, max_angle: float = 0.05) -> None:
        super().__init__(reference_view_angles, max_cost=max_angle, ransac=ransac, name="bearings+hungarian")


BASELINES: dict[str, type] = {
    "oracle": OracleBaseline,
    "random": RandomBaseline,
    "retrieved": RetrievedPoseBaseline,
    "bearings": BearingHungarian,
}
