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
