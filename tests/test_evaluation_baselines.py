"""Baselines, the evaluation loop, and the outlier sweep; the oracle on the real COLMAP sample."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bpnp.data import Batch, ObjectProtocol, PointControl, SyntheticDataset, collate
from bpnp.evaluation import (
    HungarianMatcher,
    MethodOutput,
    OracleBaseline,
    RandomBaseline,
    RansacConfig,
    evaluate_sweep,
    hungarian_pairs,
    problem_metrics,
    ransac_pnp,
    with_outlier_rate,
)
from bpnp.geometry import axis_angle_to_matrix, rotation_error_deg

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def synthetic(n: int = 6, rate: float | None = 0.3, noise_px: float = 0.5) -> SyntheticDataset:
    return SyntheticDataset(
        num_samples=n,
        split="test",
        control=PointControl(outlier_rate_2d=rate, outlier_rate_3d=rate),
        protocol=ObjectProtocol(num_points=120, noise_px=noise_px),
    )


def batch_of(ds, indices=None) -> Batch:
    return collate([ds[i] for i in (indices if indices is not None else range(len(ds)))])


def test_oracle_recovers_the_pose_despite_outliers():
    batch = batch_of(synthetic())
    out = OracleBaseline()(batch)
    assert out.valid.all()
    assert rotation_error_deg(out.R.double(), batch.R.double()).max() < 0.5
    assert ((out.t - batch.t).norm(dim=-1) / batch.t.norm(dim=-1)).max() < 0.01
    # The pairs are exactly the true matches.
    for b in range(len(batch)):
        p = out.pairs[b][out.pairs[b, :, 0] >= 0]
        assert (batch.match[b, p[:, 0]] == p[:, 1]).all()
        assert len(p) == int((batch.match[b] >= 0).sum())


def test_ransac_needs_four_pairs():
    rng = np.random.default_rng(0)
    assert ransac_pnp(rng.random((3, 3)) + [0, 0, 5], rng.random((3, 2)), np.eye(3), RansacConfig()) is None


def test_hungarian_pairs_by_hand():
    cost = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])
    pairs, c = hungarian_pairs(cost)
    assert pairs.tolist() == [[0, 1], [1, 0]] and c.tolist() == pytest.approx([0.1, 0.2])
    pairs, _ = hungarian_pairs(cost, max_cost=0.15)
    assert pairs.tolist() == [[0, 1]]


def _cost_from_truth(batch: Batch) -> torch.Tensor:
    """Cost 0 on true pairs, uniform noise in [0.5, 1.5) elsewhere: what ideal features would give."""
    g = torch.Generator().manual_seed(0)
    B, M, N = batch.match.shape[0], batch.points2d.shape[1], batch.points3d.shape[1]
    cost = 0.5 + torch.rand(B, M, N, generator=g)
    b, i = torch.nonzero(batch.match >= 0, as_tuple=True)
    cost[b, i, batch.match[b, i]] = 0.0
    return cost


def test_features_hungarian_with_ideal_costs_matches_and_localises():
    batch = batch_of(synthetic(4))
    out = HungarianMatcher(_cost_from_truth, topk=200)(batch)
    assert out.valid.all()
    cols = problem_metrics(batch, out)
    # Every true pair is cheapest, so every one is found; the rest are outlier-to-outlier leftovers.
    assert (cols["match_recall"] == 1.0).all()
    assert (cols["rotation_error_deg"] < 0.5).all()
    # The cheapest pairs come first: the first pair of each problem is a true match.
    assert (batch.match.gather(1, out.pairs[:, :1, 0]).squeeze(1) == out.pairs[:, 0, 1]).all()


def test_random_baseline_uses_its_budget_and_stays_a_floor():
    batch = batch_of(synthetic(2))
    start = time.perf_counter()
    out = RandomBaseline(budget_ms=40.0, ransac=RansacConfig(iterations=50), seed=1)(batch)
    assert time.perf_counter() - start >= 2 * 0.040
    cols = problem_metrics(batch, out)
    assert (cols["topk_inlier_ratio"] < 0.2).all()
    assert out.pairs.shape[0] == 2 and out.pairs.shape[2] == 2


class _PerturbedInit:
    """A fake network: the oracle's pose after "refinement", a pose 3 degrees off as its initial pose."""

    name = "fake"

    def __call__(self, batch: Batch) -> MethodOutput:
        out = OracleBaseline()(batch)
        tilt = axis_angle_to_matrix(torch.tensor([0.0, 0.0, np.radians(3.0)], dtype=out.R.dtype))
        out.R_init, out.t_init = tilt @ out.R, out.t.clone()
        out.init_seconds = 0.5 * len(batch)  # its own clock for the initial pose: 500 ms a problem
        return out


def test_sweep_rows_initial_pose_row_and_random_budget():
    ds = synthetic(4, rate=None)
    rand = RandomBaseline(budget_ms=None, ransac=RansacConfig(iterations=20))

    def make(rate):
        return DataLoader(with_outlier_rate(ds, rate), batch_size=2, collate_fn=collate)

    rows = evaluate_sweep([rand, _PerturbedInit()], make, [0.0, 0.5], progress=False)
    labels = [(r.method, r.outlier_rate) for r in rows]
    assert labels == [
        ("fake", 0.0), ("fake (no PnP layer)", 0.0), ("random", 0.0),
        ("fake", 0.5), ("fake (no PnP layer)", 0.5), ("random", 0.5),
    ]  # fmt: skip
    fake, init = rows[0].summary, rows[1].summary
    assert fake["rotation_error_deg"]["q75"] < 0.5
    assert init["rotation_error_deg"]["q50"] == pytest.approx(3.0, abs=0.5)
    assert init["ms_per_problem"] == pytest.approx(500.0)  # timed on its own, not the full method's
    assert rand.budget_ms is None  # restored after the sweep
    assert rows[2].summary["ms_per_problem"] >= 0.9 * fake["ms_per_problem"]
    # Same problems at both rates: the same true poses, more outliers at 0.5.
    assert rows[0].ids == rows[3].ids
    assert rows[0].columns["num_inliers"].tolist() == rows[3].columns["num_inliers"].tolist()
    assert (rows[3].columns["num_2d"] > rows[0].columns["num_2d"]).all()


def test_ransac_threshold_follows_normalised_coordinates():
    # K = I: a 4 "px" threshold would be 4 units of the normalised image plane, so every outlier
    # would count as an inlier; the normalised threshold keeps them out.
    g = np.random.default_rng(3)
    R = axis_angle_to_matrix(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)).numpy()
    X = g.uniform(-1, 1, (60, 3))
    Xc = X @ R.T + np.array([0.1, -0.2, 5.0])
    x = Xc[:, :2] / Xc[:, 2:] + g.normal(0, 5e-4, (60, 2))
    x[:24] = g.uniform(-0.3, 0.3, (24, 2))  # 40 % outliers
    res = ransac_pnp(X, x, np.eye(3), RansacConfig())
    err = rotation_error_deg(torch.as_tensor(res.R)[None], torch.as_tensor(R)[None]).item()
    assert err < 0.5


def test_with_outlier_rate_keeps_problems_and_sets_rate():
    ds = synthetic(3, rate=None, noise_px=0.0)
    for rate in (0.25, 0.75):
        other = with_outlier_rate(ds, rate)
        for i in range(3):
            a, b = ds[i], other[i]
            assert torch.allclose(a.R, b.R) and torch.allclose(a.t, b.t)
            assert b.num_inliers == a.num_inliers
            assert (b.match < 0).float().mean().item() == pytest.approx(rate, abs=0.02)
    assert with_outlier_rate(ds, None) is ds
    with pytest.raises(TypeError, match="outlier-rate control"):
        with_outlier_rate(torch.utils.data.TensorDataset(torch.zeros(2)), 0.5)


@pytest.mark.skipif(not (DATA / "colmap" / "statue_of_liberty").is_dir(), reason="COLMAP sample absent")
def test_oracle_on_the_real_colmap_sample():
    data = pytest.importorskip("bpnp.data")
    if not hasattr(data, "ColmapDataset"):
        pytest.skip("bpnp.data has no ColmapDataset")
    ds = data.ColmapDataset(DATA / "colmap" / "statue_of_liberty")
    loader = DataLoader(ds, batch_size=8, collate_fn=collate)
    (row,) = evaluate_sweep([OracleBaseline()], lambda rate: loader, progress=False)
    s = row.summary
    assert s["num_problems"] == len(ds) == 40
    # Rotation 5 deg, camera centre within 5 % of the scene extent.
    assert s["recall"]["5deg_5pct"] > 0.95
    assert s["failures"] == 0


def test_map_baselines_use_the_reference_view():
    from bpnp.evaluation.baselines import BearingHungarian, RetrievedPoseBaseline

    # the reference view at the query's own camera: nearest bearings are the true pairs
    ds = SyntheticDataset(
        num_samples=3,
        seed=5,
        control=PointControl(outlier_rate_3d=0.3),
        protocol=ObjectProtocol(num_points=40, reference_view_deg=0.0),
    )
    batch = collate([ds[i] for i in range(3)])
    out = BearingHungarian()(batch)
    assert out.valid.all() and rotation_error_deg(out.R, batch.R).max() < 1e-2
    pairs = out.pairs[0][out.pairs[0, :, 0] >= 0]
    assert (batch.match[0, pairs[:, 0]] == pairs[:, 1]).all()  # every kept pair is a true one
    got = RetrievedPoseBaseline()(batch)
    assert torch.equal(got.R, batch.R_ref) and torch.equal(got.t, batch.t_ref)
    plain = collate([SyntheticDataset(num_samples=1, protocol=ObjectProtocol(num_points=40))[0]])
    for method in (RetrievedPoseBaseline(), BearingHungarian()):
        with pytest.raises(ValueError, match="reference view"):
            method(plain)
