import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from bpnp.data import BPnPNetArchiveDataset
from bpnp.geometry import project_points


def make_problem(rng: np.random.Generator, m: int, n: int, pairs: int, per_2d: bool, pad: int):
    """One archive sample: the first ``pairs`` 2D points are projections (K = I) of 3D points
    ``perm[:pairs]``; arrays padded by repetition to ``pad`` rows as BPnPNet's train split is."""
    R = Rotation.random(random_state=rng).as_matrix()
    t = np.array([0.0, 0.0, 6.0])
    p3d = rng.uniform(-1, 1, (n, 3))
    perm = rng.permutation(n)[:pairs]
    xc = p3d[perm] @ R.T + t
    p2d = np.concatenate([xc[:, :2] / xc[:, 2:], rng.uniform(-0.2, 0.2, (m - pairs, 2))])
    if per_2d:
        w = np.full(m, n)
        w[:pairs] = perm
    else:
        w = np.full(n, m)  # m means: no 2D partner
        w[perm] = np.arange(pairs)
    reps = lambda a: np.concatenate([a] * (pad // len(a) + 1))[:pad]  # noqa: E731
    return dict(
        p2d=reps(p2d), p3d=reps(p3d), R_gt=R, t_gt=t.reshape(3, 1), W_gt=reps(w),
        num_points_2d=np.array([m]), num_points_3d=np.array([n]),
    )  # fmt: skip


def write_archive(root: Path, dataset: str, split: str, samples: list[dict], as_dict: bool = False) -> None:
    folder = root / f"{dataset}_{split}" / "preprocessed"
    folder.mkdir(parents=True)
    for key in samples[0]:
        values = [s[key] for s in samples]
        with (folder / f"{key}.pkl").open("wb") as f:
            pickle.dump(dict(enumerate(values)) if as_dict and key == "p3d" else values, f)


@pytest.mark.parametrize("dataset", ["modelnet40", "data61_2d3d"])
def test_round_trip(tmp_path, dataset):
    per_2d = dataset == "data61_2d3d"
    rng = np.random.default_rng(0)
    train = [make_problem(rng, 15, 20, 10, per_2d, pad=32) for _ in range(9)]
    train.append(make_problem(rng, 15, 20, 3, per_2d, pad=32))  # too few pairs: rejected
    write_archive(tmp_path, dataset, "train", train, as_dict=True)
    write_archive(
        tmp_path, dataset, "test", [make_problem(rng, 12, 12, 12, per_2d, pad=12) for _ in range(2)]
    )

    ds = BPnPNetArchiveDataset(tmp_path, dataset, split="train", val_fraction=0.0, dtype=torch.float64)
    assert len(ds) == 9 and ds.rejected == {"fewer than 4 inliers": 1}
    for i in range(len(ds)):
        s = ds[i]
        src = train[ds.items[i]]
        assert s.points2d.shape == (15, 2) and s.points3d.shape == (20, 3)  # padding dropped
        assert s.num_inliers == 10 and torch.equal(s.K, torch.eye(3, dtype=torch.float64))
        np.testing.assert_allclose(s.R.numpy(), src["R_gt"])
        m = s.match >= 0
        uv = project_points(s.points3d[s.match[m]], s.R, s.t, s.K)
        torch.testing.assert_close(uv, s.points2d[m])
        # The same point sets as stored, up to order.
        np.testing.assert_allclose(np.sort(s.points3d.numpy(), 0), np.sort(src["p3d"][:20], 0))
    test = BPnPNetArchiveDataset(tmp_path, dataset, split="test")
    assert len(test) == 2 and test[0].num_inliers == 12
    val = BPnPNetArchiveDataset(tmp_path, dataset, split="val", val_fraction=0.3)
    train_part = BPnPNetArchiveDataset(tmp_path, dataset, split="train", val_fraction=0.3)
    assert not set(val.items) & set(train_part.items) and len(val) + len(train_part) == 9


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="modelnet40_train"):
        BPnPNetArchiveDataset(tmp_path)
    rng = np.random.default_rng(1)
    write_archive(tmp_path, "modelnet40", "train", [make_problem(rng, 8, 8, 8, False, 8)])
    (tmp_path / "modelnet40_train" / "preprocessed" / "W_gt.pkl").write_bytes(b"\x80\x04truncated")
    with pytest.raises(ValueError, match="W_gt.pkl"):
        BPnPNetArchiveDataset(tmp_path)
    (tmp_path / "modelnet40_train" / "preprocessed" / "W_gt.pkl").unlink()
    with pytest.raises(FileNotFoundError, match="W_gt.pkl"):
        BPnPNetArchiveDataset(tmp_path)


# One sample in BPnPNet's layout, by hand (K = I): R turns 90 degrees about z, t = (0, 0, 4), so
# X = (x, y, z) projects to ((-y) / (z + 4), x / (z + 4)).
HAND_R = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
HAND_T = np.array([0.0, 0.0, 4.0])
HAND_P3D = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 4], [1, 1, -2], [-2, 2, 0], [3, 3, 3]], dtype=float)
# 2D rows: X1, an outlier, X0, X4, X2, X3.
HAND_P2D = np.array([[-0.5, 0.0], [0.9, -0.9], [0.0, 0.25], [-0.5, -0.5], [0.0, 0.0], [-0.5, 0.5]])
HAND_W = np.array([2, 0, 4, 5, 3, 6])  # 2D partner of each 3D point; 6 = m: X5 has none
HAND_MATCH = [1, -1, 0, 4, 2, 3]  # 3D partner of each 2D point, inverted by hand


def hand_samples(count: int = 3) -> dict[str, list]:
    """``count`` copies of the hand sample, padded by repetition to 8 rows as BPnPNet pads."""
    pad = lambda a: np.concatenate([a, a[:2]])  # noqa: E731
    one = dict(
        p2d=pad(HAND_P2D), p3d=pad(HAND_P3D), R_gt=HAND_R, t_gt=HAND_T, W_gt=pad(HAND_W),
        num_points_2d=np.array([6]), num_points_3d=np.array([6]),
    )  # fmt: skip
    return {k: [np.array(v) for _ in range(count)] for k, v in one.items()}


def write_bpnpnet(root: Path, fields: dict[str, object]) -> Path:
    """Each field pickled as BPnPNet's preprocessing writes it: a dict keyed by sample index."""
    folder = root / "modelnet40_train" / "preprocessed"
    folder.mkdir(parents=True)
    for key, values in fields.items():
        with (folder / f"{key}.pkl").open("wb") as f:
            pickle.dump(dict(enumerate(values)) if isinstance(values, list) else values, f)
    return root


def test_hand_written_bpnpnet_layout(tmp_path):
    ds = BPnPNetArchiveDataset(write_bpnpnet(tmp_path, hand_samples()), val_fraction=0.0, dtype=torch.float64)
    assert len(ds) == 3
    p2, p3, match, R, t = ds._arrays(1)
    np.testing.assert_array_equal(p2, HAND_P2D)  # padding rows dropped
    np.testing.assert_array_equal(p3, HAND_P3D)
    assert match.tolist() == HAND_MATCH
    s = ds[1]
    assert s.num_inliers == 5 and torch.equal(s.R, torch.from_numpy(HAND_R)) and s.t.tolist() == [0, 0, 4]
    pairs = {
        (tuple(s.points2d[i].tolist()), tuple(s.points3d[s.match[i]].tolist()))
        for i in range(6)
        if s.match[i] >= 0
    }
    assert pairs == {
        (tuple(HAND_P2D[i]), tuple(HAND_P3D[HAND_MATCH[i]])) for i in range(6) if HAND_MATCH[i] >= 0
    }


def _with_nan(p3):
    p3 = p3.copy()
    p3[2, 1] = np.nan
    return p3


def _with_duplicate(w):
    w = w.copy()
    w[1] = w[0]  # 3D points 0 and 1 both paired with 2D point 2
    return w


@pytest.mark.parametrize(
    "field,damage,named",
    [
        ("p2d", lambda a: np.hstack([a, np.ones((8, 1))]), r"p2d.pkl: p2d has shape \(8, 3\).*\(rows, 2\)"),
        ("p2d", lambda a: a.T, r"p2d.pkl: p2d has shape \(2, 8\).*one point per row \(transposed\?\)"),
        ("p3d", lambda a: a.T, r"p3d.pkl: p3d has shape \(3, 8\).*one point per row \(transposed\?\)"),
        ("p3d", _with_nan, r"p3d.pkl: p3d has non-finite values"),
        ("num_points_2d", lambda a: np.array([9]), r"p2d.pkl: .*rows >= num_points_2d = 9"),
        ("num_points_3d", lambda a: np.array([2.5]), r"num_points_3d.pkl: .*one non-negative integer"),
        ("R_gt", lambda R: R.T, r"R_gt.pkl: the pose \(R_gt, t_gt\) does not fit the pairs"),
        ("R_gt", lambda R: R @ np.diag([1.0, 1.0, -1.0]), r"R_gt.pkl: R_gt is not a rotation.*det = -1"),
        ("R_gt", lambda R: 1.1 * R, r"R_gt.pkl: R_gt is not a rotation"),
        ("R_gt", lambda R: R.reshape(9), r"R_gt.pkl: R_gt is \(9,\), expected a finite \(3, 3\)"),
        ("t_gt", lambda t: t[:2], r"t_gt.pkl: t_gt is \(2,\)"),
        ("W_gt", lambda w: w[:4], r"W_gt.pkl: W_gt has shape \(4,\), expected \(6,\) or longer"),
        (
            "W_gt",
            lambda w: np.where(w == 6, 9, w),
            r"W_gt.pkl: W_gt values span \[0, 9\], expected .*\[-1, 8\]",
        ),
        ("W_gt", lambda w: w + 0.5, r"W_gt.pkl: W_gt holds non-integer values"),
        ("W_gt", lambda w: w.astype(str), r"W_gt.pkl: W_gt holds non-integer values"),
        ("W_gt", _with_duplicate, r"W_gt.pkl: W_gt pairs 2D point 2 twice"),
    ],
)
def test_damaged_sample_is_named(tmp_path, field, damage, named):
    fields = hand_samples()
    fields[field][1] = damage(fields[field][1])
    root = write_bpnpnet(tmp_path, fields)
    # Every sample is checked: the damaged one is named whichever split is built.
    for split in ("train", "val"):
        with pytest.raises(
            ValueError, match=r"corrupt archive sample 1 in .*modelnet40_train/preprocessed/" + named
        ):
            BPnPNetArchiveDataset(root, split=split, val_fraction=0.3)


def test_containers_must_be_lists_or_index_keyed_dicts(tmp_path):
    fields = hand_samples(3)
    fields["p3d"] = {str(k): v for k, v in enumerate(fields["p3d"])}
    with pytest.raises(ValueError, match=r"p3d.pkl: key '0' \(str\) is not a sample index"):
        BPnPNetArchiveDataset(write_bpnpnet(tmp_path / "a", fields))
    fields["p3d"] = {0: fields["p2d"][0], 1: fields["p2d"][1], 3: fields["p2d"][2]}
    with pytest.raises(ValueError, match=r"p3d.pkl: dict keys are not 0..2 \(missing \[2\], largest 3\)"):
        BPnPNetArchiveDataset(write_bpnpnet(tmp_path / "b", fields))
    fields["p3d"] = "p3d"
    with pytest.raises(ValueError, match=r"p3d.pkl: expected a list of per-sample arrays, got str"):
        BPnPNetArchiveDataset(write_bpnpnet(tmp_path / "c", fields))
