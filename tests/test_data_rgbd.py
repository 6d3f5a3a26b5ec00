import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from bpnp.data import RGBDDataset
from bpnp.data.rgbd import NYU_INTRINSICS
from bpnp.geometry import project_points

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TUM = SHARED / "rgbd" / "tum_sample"
TUM_INTRINSICS = (535.4, 539.2, 320.1, 247.6)


def check_backprojection(s, depth_m: np.ndarray) -> None:
    """Matched 3D points reproject onto their pixels, and their camera depth is the map's value."""
    m = s.match >= 0
    X = s.points3d[s.match[m]]
    torch.testing.assert_close(project_points(X, s.R, s.t, s.K), s.points2d[m], atol=1e-6, rtol=0)
    z = (X @ s.R.T + s.t)[:, 2].numpy()
    u, v = np.round(s.points2d[m].numpy()).astype(int).T
    np.testing.assert_allclose(z, depth_m[v, u], atol=1e-6)


@pytest.mark.skipif(not (TUM / "TUM_depth.png").is_file(), reason=f"{TUM} not available")
def test_tum_sample_backprojection():
    ds = RGBDDataset(TUM, intrinsics=TUM_INTRINSICS, samples_per_frame=2, num_points=500, dtype=torch.float64)
    assert len(ds) == 2
    depth_m = cv2.imread(str(TUM / "TUM_depth.png"), cv2.IMREAD_UNCHANGED) / 5000.0
    a, b = ds[0], ds[1]
    for s in (a, b):
        assert s.points2d.shape == (500, 2) and s.num_inliers == 500 and s.image_size == (640, 480)
        assert s.image_path.endswith("TUM_color.png")
        torch.testing.assert_close(s.K[0], torch.tensor([535.4, 0, 320.1], dtype=torch.float64))
        check_backprojection(s, depth_m)
    assert not torch.allclose(a.R, b.R)  # each problem has its own world frame
    noisy = RGBDDataset(
        TUM, intrinsics=TUM_INTRINSICS, noise_px=1.0, outlier_rate_2d=0.4, outlier_rate_3d=0.2
    )[0]
    assert abs((noisy.match < 0).float().mean() - 0.4) < 0.01
    assert abs(1 - noisy.num_inliers / len(noisy.points3d) - 0.2) < 0.01


def write_pair_folder(root: Path, n: int, with_json: bool = True) -> list[np.ndarray]:
    """rgb/ + depth/ subfolders (Redwood style, depth in mm, holes of zeros) and intrinsics.json."""
    rng = np.random.default_rng(0)
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    depths = []
    for k in range(n):
        d = rng.integers(500, 4000, (48, 64)).astype(np.uint16)
        d[:10] = 0  # missing depth
        cv2.imwrite(str(root / "depth" / f"{k:05d}.png"), d)
        cv2.imwrite(str(root / "rgb" / f"{k:05d}.png"), np.zeros((48, 64, 3), np.uint8))
        depths.append(d / 1000.0)
    if with_json:
        K = [[50.0, 0, 31.5], [0, 52.0, 23.5], [0, 0, 1]]
        meta = {"width": 64, "height": 48, "intrinsic_matrix": list(np.array(K).T.reshape(-1))}
        (root / "intrinsics.json").write_text(json.dumps(meta))
    return depths


def test_folder_pairs_intrinsics_file_and_splits(tmp_path):
    depths = write_pair_folder(tmp_path / "seq", 10)
    ds = RGBDDataset(tmp_path / "seq", depth_scale=1000.0, num_points=100, dtype=torch.float64)
    assert len(ds) == 10 and ds.intrinsics == (50.0, 52.0, 31.5, 23.5)
    for i in (0, 7):
        s = ds[i]
        check_backprojection(s, depths[int(s.id.split("/")[0])])
        assert (s.points2d[:, 1] >= 10).all()  # the rows without depth are never sampled
    train = RGBDDataset(tmp_path / "seq", split="train", depth_scale=1000.0, test_fraction=0.2)
    test = RGBDDataset(tmp_path / "seq", split="test", depth_scale=1000.0, test_fraction=0.2)
    assert (
        len(train) == 7 and len(test) == 2 and not {f[0] for f in train.frames} & {f[0] for f in test.frames}
    )


def test_nyu_mat_layout(tmp_path):
    rng = np.random.default_rng(0)
    depth_hw = rng.uniform(0.5, 5.0, (3, 48, 64)).astype(np.float32)  # (N, H, W) in metres
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w") as f:  # MATLAB v7.3 stores arrays transposed: (N, 3, W, H), (N, W, H)
        f["images"] = rng.integers(0, 255, (3, 3, 64, 48), dtype=np.uint8)
        f["depths"] = depth_hw.transpose(0, 2, 1)
    ds = RGBDDataset(path, num_points=200, dtype=torch.float64)
    assert len(ds) == 3 and ds.intrinsics == NYU_INTRINSICS
    for i in range(3):
        s = ds[i]
        assert s.image_size == (64, 48)
        check_backprojection(s, depth_hw[i].astype(np.float64))


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RGBDDataset(tmp_path / "nowhere", intrinsics=TUM_INTRINSICS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no colour/depth pairs"):
        RGBDDataset(tmp_path / "empty", intrinsics=TUM_INTRINSICS)
    write_pair_folder(tmp_path / "noK", 1, with_json=False)
    with pytest.raises(FileNotFoundError, match="intrinsics"):
        RGBDDataset(tmp_path / "noK")
    (tmp_path / "corrupt.mat").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="corrupt.mat"):
        RGBDDataset(tmp_path / "corrupt.mat")
    write_pair_folder(tmp_path / "bad", 1)
    (tmp_path / "bad" / "depth" / "00000.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="00000.png"):
        RGBDDataset(tmp_path / "bad", depth_scale=1000.0)[0]


def test_tum_timestamp_names_pair_by_nearest_time(tmp_path):
    root = tmp_path / "fr1"
    write_pair_folder(root, 2)
    # TUM names frames by capture time; colour and depth times differ by a few milliseconds.
    for k, (c, d) in enumerate(
        [("1305031102.175304", "1305031102.160407"), ("1305031102.211214", "1305031102.194330")]
    ):
        (root / "rgb" / f"{k:05d}.png").rename(root / "rgb" / f"{c}.png")
        (root / "depth" / f"{k:05d}.png").rename(root / "depth" / f"{d}.png")
    ds = RGBDDataset(root, depth_scale=1000.0)
    assert [(c.stem, d.stem) for c, d in ds.frames] == [
        ("1305031102.175304", "1305031102.160407"),
        ("1305031102.211214", "1305031102.194330"),
    ]


def test_frame_without_depth_is_never_passed_on(tmp_path):
    from bpnp.data.cache import write_cache

    write_pair_folder(tmp_path / "seq", 2)
    cv2.imwrite(str(tmp_path / "seq" / "depth" / "00000.png"), np.zeros((48, 64), np.uint16))
    ds = RGBDDataset(tmp_path / "seq", depth_scale=1000.0, num_points=50)
    with pytest.warns(UserWarning, match="item 0 rejected"):
        s = ds[0]
    assert s.id.startswith("00001") and s.num_inliers == 50
    summary = write_cache(ds, tmp_path / "cache", progress=False)
    assert summary["written"] == 1 and summary["rejected"] == {"fewer than 4 valid depth pixels": 1}
