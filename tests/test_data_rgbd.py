import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from bpnp.data import PointControl, RGBDDataset
from bpnp.data.rgbd import NYU_INTRINSICS, room_of, scene_of_name
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
        TUM,
        intrinsics=TUM_INTRINSICS,
        noise_px=1.0,
        control=PointControl(outlier_rate_2d=0.4, outlier_rate_3d=0.2),
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
    opts = dict(split_by="frame", depth_scale=1000.0, test_fraction=0.2)
    train = RGBDDataset(tmp_path / "seq", split="train", **opts)
    test = RGBDDataset(tmp_path / "seq", split="test", **opts)
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


def write_nyu_mat(path: Path, scenes: list[str] | None, size=(48, 64)) -> np.ndarray:
    """An NYU labelled file as MATLAB v7.3 writes it: ``depths`` transposed (N, W, H), ``scenes`` a
    (1, N) cell array of references to (len, 1) uint16 character arrays under ``#refs#``."""
    n = 6 if scenes is None else len(scenes)
    depth_hw = np.random.default_rng(0).uniform(0.5, 5.0, (n, *size)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["depths"] = depth_hw.transpose(0, 2, 1)
        if scenes is not None:
            refs = f.create_dataset("scenes", (1, n), dtype=h5py.ref_dtype)
            for k, name in enumerate(scenes):
                chars = np.array([ord(c) for c in name], dtype=np.uint16).reshape(-1, 1)
                refs[0, k] = f.create_dataset(f"#refs#/s{k}", data=chars).ref
    return depth_hw


def test_nyu_mat_split_by_scene(tmp_path):
    scenes = ["bedroom_0001", "kitchen_0028a", "bedroom_0001", "office_0003", "kitchen_0028b",
              "bathroom_0007", "kitchen_0028b", "bathroom_0007"]  # fmt: skip
    # Room of each frame, by hand: the sessions a and b of kitchen_0028 are one room.
    room = dict(
        enumerate(["bedroom", "kitchen", "bedroom", "office", "kitchen", "bathroom", "kitchen", "bathroom"])
    )
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    write_nyu_mat(path, scenes)
    opts = dict(val_fraction=0.25, test_fraction=0.25, num_points=50, seed=1)
    parts = {s: RGBDDataset(path, split=s, **opts) for s in ("train", "val", "test")}
    rooms = {s: {room[k] for k in ds.frames} for s, ds in parts.items()}
    assert [len(r) for r in rooms.values()] == [2, 1, 1]
    assert set().union(*rooms.values()) == {"bedroom", "kitchen", "office", "bathroom"}
    assert sorted(sum((ds.frames for ds in parts.values()), [])) == list(range(8))  # disjoint, complete
    for ds in parts.values():
        for i in range(len(ds)):
            assert ds[i].scene == scenes[int(ds[i].id.split("/")[0])]
    # Per frame on request: the old partition of frame indices.
    by_frame = RGBDDataset(path, split="test", split_by="frame", **opts)
    assert len(by_frame.frames) == 2


def test_scene_split_needs_scenes(tmp_path):
    write_pair_folder(tmp_path / "seq", 3)
    with pytest.raises(
        ValueError, match=r"several scenes: RGB-D source .*seq has 1 \(seq\).*split_by='frame'"
    ):
        RGBDDataset(tmp_path / "seq", split="train", depth_scale=1000.0)
    assert len(RGBDDataset(tmp_path / "seq", split="all", depth_scale=1000.0)) == 3
    write_nyu_mat(tmp_path / "noscenes.mat", None)
    with pytest.raises(ValueError, match=r"no 'scenes' in NYU file .*noscenes.mat.*split_by='frame'"):
        RGBDDataset(tmp_path / "noscenes.mat", split="train")
    assert len(RGBDDataset(tmp_path / "noscenes.mat", split="train", split_by="frame").frames) == 4
    write_nyu_mat(tmp_path / "short.mat", ["kitchen_0001"] * 6)
    with h5py.File(tmp_path / "short.mat", "a") as f:
        del f["scenes"]
        f.create_dataset("scenes", (1, 2), dtype=h5py.ref_dtype)
    with pytest.raises(ValueError, match=r"short.mat: 'scenes' has 2 entries, expected 6"):
        RGBDDataset(tmp_path / "short.mat")


def test_folder_frames_named_by_nyu_scene(tmp_path):
    root = tmp_path / "nyu_frames"
    root.mkdir()
    scenes = ("bedroom_0004", "cafe_0001a", "cafe_0001b", "living_room_0010", "study_0002")
    names = [f"{scene}_{k:05d}" for scene in scenes for k in range(2)]
    for name in names:
        cv2.imwrite(str(root / f"{name}_color.png"), np.zeros((48, 64, 3), np.uint8))
        cv2.imwrite(str(root / f"{name}_depth.png"), np.full((48, 64), 1000, np.uint16))
    opts = dict(intrinsics=TUM_INTRINSICS, depth_scale=1000.0, val_fraction=0.2, test_fraction=0.2)
    parts = {s: RGBDDataset(root, split=s, **opts) for s in ("train", "val", "test")}
    # Rooms by hand from the file names: cafe_0001a and cafe_0001b are one room.
    room = {f"{scene}_{k:05d}_color.png": scene.rstrip("ab") for scene in scenes for k in range(2)}
    rooms = {s: {room[c.name] for c, _ in ds.frames} for s, ds in parts.items()}
    assert [len(r) for r in rooms.values()] == [2, 1, 1]
    assert not (
        rooms["train"] & rooms["val"] or rooms["train"] & rooms["test"] or rooms["val"] & rooms["test"]
    )
    assert sum(len(ds.frames) for ds in parts.values()) == 10
    assert {ds[0].scene for ds in parts.values()} <= set(scenes)
    assert (
        scene_of_name("cafe_0001a_00000_color.png") == "cafe_0001a" and room_of("cafe_0001a") == "cafe_0001"
    )
    for other in ("TUM_color.png", "frame_000123.png", "00012.png", "1305031102.175304.png"):
        assert scene_of_name(other) is None
