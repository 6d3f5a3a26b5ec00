from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
from scipy.spatial.transform import Rotation

from bpnp.data import ColmapDataset
from bpnp.data.colmap import camera_intrinsics, undistort_pixels
from bpnp.geometry import project_points

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STATUE = SHARED / "colmap" / "statue_of_liberty"
needs_statue = pytest.mark.skipif(not (STATUE / "images.bin").is_file(), reason=f"{STATUE} not available")


@pytest.fixture(scope="module")
def statue() -> ColmapDataset:
    return ColmapDataset(STATUE, dtype=torch.float64)


def reprojection_errors(s) -> torch.Tensor:
    m = s.match >= 0
    return (project_points(s.points3d[s.match[m]], s.R, s.t, s.K) - s.points2d[m]).norm(dim=-1)


@needs_statue
def test_statue_queries_reproject_onto_undistorted_keypoints(statue):
    assert len(statue) == 40
    for i in range(len(statue)):
        s = statue[i]
        assert reprojection_errors(s).median() < 2.0
        assert s.K[0, 1] == 0 and s.image_size == (800, 1200)
        # Natural outliers on both sides: untriangulated keypoints, points the query does not see.
        assert s.num_inliers >= 4 and (s.match < 0).any() and len(s.points3d) > s.num_inliers


@needs_statue
def test_statue_undistortion_agrees_with_colmap():
    rec = pycolmap.Reconstruction(str(STATUE))
    cam = rec.cameras[1]
    im = rec.images[rec.reg_image_ids()[0]]
    uv = np.array([p.xy for p in im.points2D])
    K, dist = camera_intrinsics(cam.model.name, cam.params)
    ours = undistort_pixels(uv, K, dist)
    ref = cam.cam_from_img(uv) @ K[:2, :2].T + K[:2, 2]  # COLMAP's own inverse of its model
    assert np.abs(ours - ref).max() < 1e-3


@needs_statue
def test_statue_split_and_caps():
    parts = [ColmapDataset(STATUE, split=s, seed=1) for s in ("train", "val", "test")]
    names = [{p.names[i] for i in p.items} for p in parts]
    assert [len(n) for n in names] == [32, 4, 4] and not (names[0] & names[1] or names[1] & names[2])
    capped = ColmapDataset(STATUE, split="test", seed=1, m_max=200, n_max=300, outlier_rate_2d=0.5)
    for i in range(len(capped)):
        s = capped[i]
        assert len(s.points2d) <= 200 and len(s.points3d) <= 300
        assert abs((s.match < 0).float().mean() - 0.5) < 0.02


def write_text_model(folder: Path, model: str, params: list[float]) -> dict:
    """A small COLMAP text model; keypoints come from COLMAP's own projection (``img_from_cam``)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    cam = pycolmap.Camera(model=model, width=640, height=480, params=params)
    X = rng.uniform(-1, 1, (80, 3))
    poses, lines, tracks = {}, [], {j: [] for j in range(80)}
    for img in range(1, 4):
        R = Rotation.from_euler("xyz", rng.uniform(-0.2, 0.2, 3)).as_matrix()
        t = np.array([0.0, 0.0, 5.0]) + rng.uniform(-0.3, 0.3, 3)
        seen = np.sort(rng.choice(80, 50, replace=False))
        uv = cam.img_from_cam(X[seen] @ R.T + t)
        kps = [(*uv[k], int(seen[k])) for k in range(len(seen))]
        kps += [(*rng.uniform(0, 480, 2), -1) for _ in range(10)]  # untriangulated keypoints
        for idx, (_, _, pid) in enumerate(kps):
            if pid >= 0:
                tracks[pid].append((img, idx))
        qx, qy, qz, qw = Rotation.from_matrix(R).as_quat()
        lines.append(f"{img} {qw} {qx} {qy} {qz} {t[0]} {t[1]} {t[2]} 1 im{img}.jpg")
        lines.append(" ".join(f"{u} {v} {pid}" for u, v, pid in kps))
        poses[f"im{img}.jpg"] = (R, t)
    (folder / "cameras.txt").write_text(f"1 {model} 640 480 {' '.join(map(str, params))}\n")
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    pts = [
        f"{j} {X[j][0]} {X[j][1]} {X[j][2]} 128 128 128 0.5 " + " ".join(f"{a} {b}" for a, b in tr)
        for j, tr in tracks.items()
        if tr
    ]
    (folder / "points3D.txt").write_text("\n".join(pts) + "\n")
    return poses


@pytest.mark.parametrize(
    "model,params",
    [
        ("SIMPLE_PINHOLE", [500, 320, 240]),
        ("PINHOLE", [500, 520, 320, 240]),
        ("SIMPLE_RADIAL", [500, 320, 240, -0.3]),
        ("RADIAL", [500, 320, 240, -0.2, 0.05]),
        ("OPENCV", [500, 510, 321, 239, -0.2, 0.04, 0.001, -0.002]),
    ],
)
def test_text_model_camera_models_reproject_exactly(tmp_path, model, params):
    poses = write_text_model(tmp_path / "sparse", model, params)
    ds = ColmapDataset(tmp_path / "sparse", dtype=torch.float64, num_covisible=0)
    assert len(ds) == 3
    for i in range(len(ds)):
        s = ds[i]
        assert reprojection_errors(s).max() < 1e-3
        R, t = poses[s.id]
        np.testing.assert_allclose(s.R.numpy(), R, atol=1e-9)
        np.testing.assert_allclose(s.t.numpy(), t, atol=1e-9)
        assert s.num_inliers == 50 and len(s.points2d) == 60
        assert len(s.points3d) == 50  # no co-visible images: only the query's own points
    with_covis = ColmapDataset(tmp_path / "sparse", num_covisible=2)[0]
    assert len(with_covis.points3d) > 50 and with_covis.num_inliers == 50


def test_missing_model_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ColmapDataset(tmp_path / "nowhere")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "cameras.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="images"):
        ColmapDataset(tmp_path / "m")
    with pytest.raises(ValueError, match="FISHEYE"):
        camera_intrinsics("OPENCV_FISHEYE", np.zeros(8))
