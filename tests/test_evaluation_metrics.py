"""Metrics against hand-computed values, and the aggregate summary / torchmetrics wrapper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bpnp.data import Sample, collate
from bpnp.evaluation import MethodOutput, PoseMetrics, flatten, problem_metrics, summarize
from bpnp.metrics.errors import (
    error_auc,
    match_precision_recall,
    pose_errors,
    pose_recall,
    precision_at_true_count,
    quantiles,
    recall_curve,
    reprojection_errors,
    scene_extent,
)

F64 = torch.float64


def rot_z(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=F64)


def test_rotation_errors_exactly_0_90_180_degrees():
    flip_x = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64))  # 180 deg about x
    R_est = torch.stack([torch.eye(3, dtype=F64), rot_z(90.0), flip_x, rot_z(30.0) @ flip_x])
    eye = torch.eye(3, dtype=F64)
    R_gt = torch.stack([eye, eye, eye, rot_z(30.0)])
    t = torch.zeros(4, 3, dtype=F64)
    rot, trans, centre = pose_errors(R_est, t, R_gt, t, torch.ones(4, dtype=torch.bool))
    assert rot.tolist() == pytest.approx([0.0, 90.0, 180.0, 180.0], abs=1e-9)
    assert trans.tolist() == [0.0] * 4 and centre.tolist() == [0.0] * 4


def test_translation_and_centre_errors_by_hand():
    # Same rotation (90 deg about z), t differs by (3, 4, 0): ||dt|| = 5 and the centres -R^T t differ
    # by R^T (3, 4, 0), also of length 5. With R = I vs Rz(90) and t = (1, 0, 0) for both, the centres
    # are (-1, 0, 0) and -Rz(90)^T (1, 0, 0) = (0, 1, 0): distance sqrt(2).
    R = torch.stack([rot_z(90.0), torch.eye(3, dtype=F64)])
    R_gt = torch.stack([rot_z(90.0), rot_z(90.0)])
    t = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    t_gt = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    _, trans, centre = pose_errors(R, t, R_gt, t_gt, torch.ones(2, dtype=torch.bool))
    assert trans.tolist() == pytest.approx([5.0, 0.0])
    assert centre.tolist() == pytest.approx([5.0, math.sqrt(2.0)])


def test_failed_problems_get_infinite_errors():
    R = torch.eye(3, dtype=F64).repeat(3, 1, 1)
    R[2, 0, 0] = math.nan
    t = torch.zeros(3, 3, dtype=F64)
    valid = torch.tensor([True, False, True])
    rot, trans, centre = pose_errors(R, t, R.nan_to_num(1.0), t, valid)
    assert rot[0] == 0 and all(math.isinf(x) for x in [*rot[1:], *trans[1:], *centre[1:]])


def test_reprojection_error_of_a_known_shift_and_behind_the_camera():
    # Points on the plane z = 5 with f = 500: shifting t by 0.01 along x moves every projection by
    # 500 * 0.01 / 5 = 1 px. The second estimate puts the points behind the camera: inf.
    X = torch.tensor([[0.0, 0.0, 5.0], [1.0, -1.0, 5.0], [-1.0, 0.5, 5.0]], dtype=F64)[None].repeat(2, 1, 1)
    K = torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]], dtype=F64)[None].repeat(2, 1, 1)
    R_gt = torch.eye(3, dtype=F64).repeat(2, 1, 1)
    t_gt = torch.zeros(2, 3, dtype=F64)
    t = torch.tensor([[0.01, 0.0, 0.0], [0.0, 0.0, -10.0]], dtype=F64)
    match = torch.tensor([[0, 1, 2, -1], [2, -1, -1, -1]])
    err = reprojection_errors(X, match, K, R_gt, t, R_gt, t_gt, torch.ones(2, dtype=torch.bool))
    assert err[0].item() == pytest.approx(1.0, abs=1e-9)
    assert math.isinf(err[1].item())


def test_match_precision_and_recall_by_hand():
    match = torch.tensor([[2, -1, 0, 1]])
    # (0, 2) right, (1, 0) wrong (1 is an outlier), (2, 0) right, (0, 2) repeated, one padding row.
    pairs = torch.tensor([[[0, 2], [1, 0], [2, 0], [0, 2], [-1, -1]]])
    precision, recall = match_precision_recall(pairs, match)
    assert precision.item() == pytest.approx(3 / 4)
    assert recall.item() == pytest.approx(2 / 3)


def test_precision_at_the_number_of_true_matches_by_hand():
    match = torch.tensor([[0, 1, -1]] * 4 + [[-1, -1, -1]])  # K = 2 (last problem: no true match)
    pairs = torch.tensor([[[0, 0], [2, 2], [1, 1]]] * 5)
    scores = torch.tensor([[0.9, 0.5, 0.4], [0.9, 0.0, 0.4], [0.9, -1, -1], [-0.1, -0.5, -0.6], [1, 1, 1]])
    pairs[2, 1:] = -1  # one pair listed
    p = precision_at_true_count(pairs, match, scores)
    # best two (0,0) (2,2): 1 of 2; the zero-score pair dropped: 2 of 2; one pair for K = 2: 1 of 2;
    # negative scores (a cost) count like any others
    assert p[:4].tolist() == [0.5, 1.0, 0.5, 0.5]
    # a perfect answer listing 1.5 m pairs reaches the ceiling: no score means the given order
    long = torch.tensor([[[0, 0], [1, 1], [2, 0], [2, 1]]])
    assert precision_at_true_count(long, match[:1]).item() == 1.0
    assert math.isnan(p[4].item())


def test_scene_extent_uses_matched_points_and_percentiles():
    line = torch.zeros(1, 103, 3, dtype=F64)
    line[0, :101, 0] = torch.arange(101, dtype=F64)  # matched: x = 0..100
    line[0, 101:, 1] = 1e6  # far unmatched points do not count
    match = torch.arange(101)[None]
    assert scene_extent(line, match).item() == pytest.approx(90.0)  # 95th - 5th percentile


def test_quantiles_by_hand_including_inf_and_nan():
    assert quantiles([4.0, 1.0, 3.0, 2.0]) == pytest.approx([1.75, 2.5, 3.25])
    q = quantiles([1.0, 2.0, math.inf, math.inf, math.nan])
    assert q[0] == pytest.approx(1.75) and math.isinf(q[1]) and math.isinf(q[2])
    assert all(math.isnan(x) for x in quantiles([]))


def test_recall_by_hand():
    rot = [1.0, 3.0, 6.0, 0.5, math.inf]
    trans = [0.01, 0.2, 0.01, 0.6, math.inf]
    assert pose_recall(rot, trans, 5.0, 0.25) == pytest.approx(2 / 5)
    assert pose_recall(rot, trans, 10.0, 1.0) == pytest.approx(4 / 5)
    assert recall_curve([0.5, 2.0, 4.0, math.nan], np.array([0.0, 1.0, 4.0])).tolist() == [0.0, 0.25, 0.75]


def test_auc_by_hand():
    # Curve through (0, 0), (0.5, 1/4), (2, 2/4), (4, 3/4), held flat to the threshold:
    # at 1 px: 0.5 * 0.25 / 2 + 0.5 * 0.25 = 0.1875;
    # at 5 px: 0.0625 + 1.5 * 0.375 + 2 * 0.625 + 1 * 0.75 = 2.625, / 5 = 0.525;
    # at 10 px: 0.0625 + 0.5625 + 1.25 + 6 * 0.75 = 6.375, / 10 = 0.6375.
    errors = [2.0, math.inf, 0.5, 4.0]
    assert error_auc(errors, 1.0) == pytest.approx(0.1875)
    assert error_auc(errors, 5.0) == pytest.approx(0.525)
    assert error_auc(errors, 10.0) == pytest.approx(0.6375)
    assert error_auc([0.0, 0.0], 1.0) == pytest.approx(1.0)
    assert error_auc([math.nan], 1.0) == 0.0


def _toy_batch(n_problems: int = 4) -> tuple:
    """Problems whose estimate is the truth rotated by k degrees about z (k = problem index)."""
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]], dtype=F64)
    samples, Rs = [], []
    for k in range(n_problems):
        X = torch.rand(20, 3, generator=g, dtype=F64) + torch.tensor([0.0, 0.0, 4.0], dtype=F64)
        R, t = torch.eye(3, dtype=F64), torch.zeros(3, dtype=F64)
        uv = X[:, :2] / X[:, 2:] * 500 + torch.tensor([320.0, 240.0], dtype=F64)
        samples.append(Sample(uv, K, X, R, t, torch.arange(20), scene="toy", id=str(k)))
        Rs.append(rot_z(float(k)))
    batch = collate(samples)
    out = MethodOutput(
        R=torch.stack(Rs),
        t=torch.zeros(n_problems, 3, dtype=F64),
        valid=torch.ones(n_problems, dtype=torch.bool),
        pairs=torch.stack([torch.arange(20), torch.arange(20)], -1)[None].repeat(n_problems, 1, 1),
    )
    return batch, out


def test_summary_of_known_rotation_errors():
    batch, out = _toy_batch(4)
    cols = problem_metrics(batch, out)
    assert cols["rotation_error_deg"].tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=1e-9)
    s = summarize(cols, metric_units=True)
    assert s["num_problems"] == 4 and s["failures"] == 0
    assert s["rotation_error_deg"]["q50"] == pytest.approx(1.5)
    # Centre errors are 0 (t = 0 and camera at the origin), so recall is decided by rotation alone.
    assert s["recall"]["1deg_1pct"] == pytest.approx(0.5)
    assert s["recall"]["25cm_2deg"] == pytest.approx(0.75)
    assert s["recall"]["5deg_5pct"] == 1.0
    assert s["topk_inlier_ratio"] == 1.0 and s["match_recall"] == 1.0
    assert "25cm_2deg" not in summarize(cols)["recall"]  # unitless scenes: no metric recall


def test_pixel_thresholds_skip_normalised_cameras():
    # K = I (BPnPNet's archive): the reprojection errors are not pixels, so no pixel AUC
    batch, out = _toy_batch(2)
    batch.K = torch.eye(3, dtype=batch.K.dtype).expand_as(batch.K).clone()
    cols = problem_metrics(batch, out)
    assert cols["pixel_units"].tolist() == [0.0, 0.0]
    assert all(math.isnan(v) for v in summarize(cols)["reprojection_auc"].values())


def test_pose_metrics_accumulates_like_one_summary():
    batch, out = _toy_batch(4)
    metric = PoseMetrics()
    for half in (slice(0, 2), slice(2, 4)):
        sub = collate([Sample(batch.points2d[i], batch.K[i], batch.points3d[i], batch.R[i], batch.t[i],
                              batch.match[i]) for i in range(4)[half]])  # fmt: skip
        metric.update(sub, MethodOutput(out.R[half], out.t[half], out.valid[half], out.pairs[half]))
    got = metric.compute()
    want = flatten(summarize(problem_metrics(batch, out)))
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].item() == pytest.approx(v, nan_ok=True), k
