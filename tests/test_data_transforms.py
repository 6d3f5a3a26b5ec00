import numpy as np
import pytest
import torch

from bpnp.data import Batch, PointControl, collate
from bpnp.data.sample import Sample, sample_from_numpy
from bpnp.data.splits import split_groups, split_items
from bpnp.data.transforms import (
    Correspondences,
    cap_counts,
    image_bounds,
    set_outlier_rate_2d,
    set_outlier_rate_3d,
    shuffle,
)


def make_corr(inliers=100, out2=30, out3=50, seed=0) -> Correspondences:
    """3D points i < inliers pair with 2D point i; each 2D inlier is its 3D partner's (x, y) * 10,
    so a pair can be recognised from coordinates alone after any reordering."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (inliers + out3, 3))
    uv_in = X[:inliers, :2] * 10
    uv_out = rng.uniform(100, 200, (out2, 2))  # far from any inlier
    match = np.concatenate([np.arange(inliers), -np.ones(out2, dtype=np.int64)])
    return Correspondences(np.concatenate([uv_in, uv_out]), X, match, image_bounds(300, 300))


def assert_pairs_intact(c: Correspondences) -> None:
    m = c.match >= 0
    np.testing.assert_allclose(c.points2d[m], c.points3d[c.match[m], :2] * 10)
    assert len(np.unique(c.match[m])) == m.sum()  # one 2D partner per 3D point


def rates(c: Correspondences) -> tuple[float, float]:
    k = c.num_inliers
    return 1 - k / len(c.points2d), 1 - k / len(c.points3d)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.5, 0.75])
def test_outlier_rates_are_reached_by_dropping_or_injecting(rate):
    rng = np.random.default_rng(1)
    c = set_outlier_rate_3d(set_outlier_rate_2d(make_corr(), rate, rng), rate, rng)
    r2, r3 = rates(c)
    assert c.num_inliers == 100  # inliers are never dropped
    assert abs(r2 - rate) < 0.01 and abs(r3 - rate) < 0.01
    assert_pairs_intact(c)
    # Injected 2D outliers lie in the image; 3D ones in the original bounding box.
    out2 = c.points2d[c.match < 0]
    assert (out2 >= 0).all() and (out2 <= 300).all()
    assert (np.abs(c.points3d) <= 1).all()


def test_injected_outliers_are_uniform_in_the_image():
    c = Correspondences(np.full((1000, 2), 5.0), np.zeros((1000, 3)), np.arange(1000), image_bounds(640, 480))
    out = set_outlier_rate_2d(c, 0.5, np.random.default_rng(0)).points2d[1000:]
    assert len(out) == 1000
    assert abs(out[:, 0].mean() - 320) < 15 and abs(out[:, 1].mean() - 240) < 12
    assert abs(out[:, 0].std() - 640 / np.sqrt(12)) < 10


def test_cap_keeps_both_rates_and_pairs():
    c = make_corr(inliers=400, out2=400, out3=1200)
    capped = cap_counts(c, 200, 1000, np.random.default_rng(0))
    assert len(capped.points2d) <= 200 and len(capped.points3d) <= 1000
    r2, r3 = rates(capped)
    assert abs(r2 - 0.5) < 0.02 and abs(r3 - 0.75) < 0.02
    assert_pairs_intact(capped)
    # No cap: unchanged.
    assert cap_counts(c, None, None, np.random.default_rng(0)) is c


def test_cap_keeps_at_least_four_inliers():
    c = make_corr(inliers=5, out2=1000, out3=1000)
    capped = cap_counts(c, 10, 10, np.random.default_rng(0))
    assert capped.num_inliers >= 4 and len(capped.points2d) <= 10 and len(capped.points3d) <= 10


def test_shuffle_permutes_and_keeps_pairs():
    c = shuffle(make_corr(), np.random.default_rng(3))
    assert_pairs_intact(c)
    assert not np.array_equal(c.match[:100], np.arange(100))


def test_point_control_is_deterministic_per_generator():
    ctl = PointControl(m_max=64, n_max=80, outlier_rate_2d=0.3, outlier_rate_3d=0.4)
    a = ctl(make_corr(), np.random.default_rng([7, 1]))
    b = ctl(make_corr(), np.random.default_rng([7, 1]))
    c = ctl(make_corr(), np.random.default_rng([7, 2]))
    np.testing.assert_array_equal(a.points2d, b.points2d)
    np.testing.assert_array_equal(a.match, b.match)
    assert not np.array_equal(a.points2d, c.points2d)
    assert len(a.points2d) <= 64 and len(a.points3d) <= 80
    assert_pairs_intact(a)


def test_point_control_validates_arguments():
    with pytest.raises(ValueError, match="outlier_rate_2d"):
        PointControl(outlier_rate_2d=1.0)
    with pytest.raises(ValueError, match="m_max"):
        PointControl(m_max=2)


def test_sample_from_numpy_rejects_nan_and_bad_indices():
    args = dict(points2d=np.zeros((3, 2)), K=np.eye(3), points3d=np.zeros((2, 3)), R=np.eye(3), t=np.zeros(3))
    s = sample_from_numpy(**args, match=np.array([0, -1, 1]), scene="s", id="i")
    assert s.points2d.dtype == torch.float32 and s.match.dtype == torch.int64
    with pytest.raises(ValueError, match="s/i.*match"):
        sample_from_numpy(**args, match=np.array([0, 2, -1]), scene="s", id="i")
    bad = {**args, "points3d": np.array([[0, 0, np.nan], [0, 0, 0]])}
    with pytest.raises(ValueError, match="points3d has non-finite"):
        sample_from_numpy(**bad, match=np.array([0, -1, 1]))


def _sample(m: int, n: int, seed: int) -> Sample:
    g = torch.Generator().manual_seed(seed)
    match = torch.full((m,), -1, dtype=torch.long)
    match[: min(m, n)] = torch.randperm(n, generator=g)[: min(m, n)]
    p2, p3 = torch.rand(m, 2, generator=g), torch.rand(n, 3, generator=g)
    return Sample(
        p2, torch.eye(3), p3, torch.eye(3), torch.zeros(3), match, scene="x", id=str(seed), image_size=(4, 3)
    )


def test_collate_pads_and_masks():
    samples = [_sample(5, 7, 0), _sample(9, 3, 1)]
    b = collate(samples)
    assert isinstance(b, Batch)
    assert b.points2d.shape == (2, 9, 2) and b.points3d.shape == (2, 7, 3)
    assert b.mask2d.sum(1).tolist() == [5, 9] and b.mask3d.sum(1).tolist() == [7, 3]
    for i, s in enumerate(samples):
        m, n = len(s.points2d), len(s.points3d)
        torch.testing.assert_close(b.points2d[i, :m], s.points2d)
        torch.testing.assert_close(b.points3d[i, :n], s.points3d)
        assert (b.match[i, :m] == s.match).all() and (b.match[i, m:] == -1).all()
        assert (b.points2d[i, m:] == 0).all() and (b.points3d[i, n:] == 0).all()
    assert b.id == ["0", "1"] and b.image_size == [(4, 3), (4, 3)]
    moved = b.to("cpu")
    assert isinstance(moved, Batch) and moved.points3d.data_ptr() == b.points3d.data_ptr()
    assert b.ref_view is None  # no sample has a reference view
    samples[0].R_ref, samples[0].t_ref = torch.eye(3), torch.ones(3)
    assert collate(samples).ref_view is None  # one without: none for the batch
    samples[1].R_ref, samples[1].t_ref = -torch.eye(3), torch.zeros(3)
    R_ref, t_ref = collate(samples).ref_view
    assert torch.equal(R_ref, torch.stack([torch.eye(3), -torch.eye(3)])) and torch.equal(
        t_ref[0], torch.ones(3)
    )


def test_split_items_partition():
    parts = {
        s: split_items(100, s, seed=3, val_fraction=0.2, test_fraction=0.1) for s in ("train", "val", "test")
    }
    assert [len(p) for p in parts.values()] == [70, 20, 10]
    assert len(np.unique(np.concatenate(list(parts.values())))) == 100
    np.testing.assert_array_equal(
        parts["val"], split_items(100, "val", seed=3, val_fraction=0.2, test_fraction=0.1)
    )
    assert not np.array_equal(
        parts["val"], split_items(100, "val", seed=4, val_fraction=0.2, test_fraction=0.1)
    )
    with pytest.raises(ValueError, match="split"):
        split_items(10, "training")


def test_split_groups_partition():
    groups = ["a", "b", "a", "c", "d", "e", "f", "g", "h", "i", "j", "b"]  # ten distinct scenes
    parts = {
        s: split_groups(groups, s, seed=3, val_fraction=0.2, test_fraction=0.1)
        for s in ("train", "val", "test")
    }
    assert [len(p) for p in parts.values()] == [7, 2, 1]
    assert sorted(sum(parts.values(), [])) == list("abcdefghij")  # disjoint and complete
    assert split_groups(groups, "all") == list("abcdefghij")
    # Three scenes: one each, although 10 % of 3 rounds to none.
    assert sorted(len(split_groups("xyz", s)) for s in ("train", "val", "test")) == [1, 1, 1]
    assert split_groups("xyz", "test", test_fraction=0.0) == []  # no test split asked for
    with pytest.raises(
        ValueError, match=r"several scenes: the data has 2 \(x, y\), at least 3 .*; pass X instead"
    ):
        split_groups("xyx", "train", instead="X")
    with pytest.raises(ValueError, match="at least 5"):  # round(1.5) = 2 scenes each for val and test
        split_groups("abc", "train", val_fraction=0.5, test_fraction=0.5)
