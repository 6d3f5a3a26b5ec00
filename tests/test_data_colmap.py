import logging
import struct
import warnings
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import scipy.sparse as sp
import torch
from scipy.spatial.transform import Rotation
from training_utils import SCENES, STATUE

from bpnp.data import ColmapDataset, PointControl, build_dataset
from bpnp.data.colmap import camera_intrinsics, split_models, top_covisible, undistort_pixels
from bpnp.geometry import project_points

needs_statue = pytest.mark.skipif(not (STATUE / "images.bin").is_file(), reason=f"{STATUE} not available")
needs_scenes = pytest.mark.skipif(not (SCENES / "llff_room").is_dir(), reason=f"{SCENES} not available")


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
    parts = [ColmapDataset(STATUE, split=s, split_by="image", seed=1) for s in ("train", "val", "test")]
    names = [{p.names[i] for i in p.items} for p in parts]
    assert [len(n) for n in names] == [32, 4, 4] and not (names[0] & names[1] or names[1] & names[2])
    capped = ColmapDataset(
        STATUE,
        split="test",
        split_by="image",
        seed=1,
        control=PointControl(m_max=200, n_max=300, outlier_rate_2d=0.5),
    )
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


def scene_of(sample) -> str:
    return sample.scene.split("/")[0]


def test_hand_made_scenes_split_by_scene(tmp_path):
    root = tmp_path / "scenes"
    for name in ("a", "b", "c"):
        write_text_model(root / name / "sparse", "SIMPLE_PINHOLE", [500, 320, 240])
    # Two models of one scene (MegaDepth's sparse/manhattan/<k>) must stay in one split.
    write_text_model(root / "d" / "sparse" / "0", "SIMPLE_PINHOLE", [500, 320, 240])
    write_text_model(root / "d" / "sparse" / "1", "SIMPLE_PINHOLE", [500, 320, 240])
    fractions = {"val_fraction": 0.25, "test_fraction": 0.25}
    scenes, models = {}, {}
    for split in ("train", "val", "test"):
        ds = build_dataset("colmap", split, root, seed=2, **fractions)
        scenes[split] = {scene_of(ds[i]) for i in range(len(ds))}
        models[split] = {ds[i].scene for i in range(len(ds))}
    assert [len(v) for v in scenes.values()] == [2, 1, 1]
    assert set().union(*scenes.values()) == {"a", "b", "c", "d"}
    assert not (
        scenes["train"] & scenes["val"] or scenes["train"] & scenes["test"] or scenes["val"] & scenes["test"]
    )
    d_split = next(k for k, v in scenes.items() if "d" in v)
    assert {"d/sparse/0", "d/sparse/1"} <= models[d_split]
    # The per-image split, on request, puts every model in every split (3 images: one per split).
    by_image = [
        build_dataset("colmap", s, root, split_by="image", **fractions) for s in ("train", "val", "test")
    ]
    assert all({scene_of(ds[i]) for i in range(len(ds))} == {"a", "b", "c", "d"} for ds in by_image)
    assert [len(ds) for ds in by_image] == [5, 5, 5]


def test_scene_split_needs_several_scenes(tmp_path):
    write_text_model(tmp_path / "one" / "m", "SIMPLE_PINHOLE", [500, 320, 240])
    with pytest.raises(ValueError, match=r"several scenes.*split_by='image'"):
        ColmapDataset(tmp_path / "one" / "m", split="train")
    with pytest.raises(ValueError, match=r"several scenes.*split_by='image'"):
        build_dataset("colmap", "train", tmp_path / "one" / "m")
    with pytest.raises(ValueError, match=r"several scenes: COLMAP root .*one has 1 \(m\).*split_by='image'"):
        build_dataset("colmap", "val", tmp_path / "one")
    assert len(build_dataset("colmap", "all", tmp_path / "one" / "m")) == 3
    write_text_model(tmp_path / "one" / "n", "SIMPLE_PINHOLE", [500, 320, 240])
    # Two scenes cannot give train, val and test one each.
    with pytest.raises(ValueError, match=r"has 2 \(m, n\), at least 3"):
        build_dataset("colmap", "train", tmp_path / "one")
    with pytest.raises(ValueError, match="split_by"):
        build_dataset("colmap", "train", tmp_path / "one", split_by="frame")


@needs_scenes
def test_real_scenes_split_by_scene():
    names = sorted(d.name for d in SCENES.iterdir() if d.is_dir())
    assert len(names) == 20
    parts = {s: [d.name for d in split_models(SCENES, s, seed=0)] for s in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [16, 2, 2]  # round(20 * 0.1) = 2 for val and test
    assert sorted(sum(parts.values(), [])) == names  # disjoint and complete
    test = build_dataset("colmap", "test", SCENES, seed=0)
    assert sorted(ds.scene for ds in test.datasets) == parts["test"]
    assert {test[i].scene for i in range(0, len(test), 7)} <= set(parts["test"])
    other = {s: set(split_models(SCENES, s, seed=1)) for s in ("val", "test")}
    assert other != {s: set(split_models(SCENES, s, seed=0)) for s in ("val", "test")}  # the seed matters


def test_top_covisible_hand_computed():
    # Point tracks of five images (-1: untriangulated keypoint; image 1 sees point 2 twice).
    kp = [np.array(p) for p in ([0, 1, 2, 3], [1, 2, 3, 4, -1, 2], [3, 4, 5], [6], [0, 5])]
    # Shared points: 0-1 {1, 2, 3}, 0-2 {3}, 0-4 {0}, 1-2 {3, 4}, 2-4 {5}; image 3 shares none.
    index = [[1, 2], [0, 2], [1, 0], [-1, -1], [0, 2]]  # ties broken by the lower index
    count = [[3, 1], [3, 2], [2, 1], [0, 0], [1, 1]]
    for block in (1, 1 << 22):  # one image per block, or all at once
        idx, cnt = top_covisible(kp, 7, 2, block_entries=block)
        assert idx.tolist() == index and cnt.tolist() == count
    idx, cnt = top_covisible(kp, 7, 5)
    assert idx[0].tolist() == [1, 2, 4, -1, -1] and cnt[0].tolist() == [3, 1, 1, 0, 0]


@needs_statue
def test_covisibility_matches_the_dense_computation(statue):
    A = sp.csr_matrix(
        (
            np.ones(sum(int((p >= 0).sum()) for p in statue.kp_point)),
            (
                np.concatenate([np.full((p >= 0).sum(), i) for i, p in enumerate(statue.kp_point)]),
                np.concatenate([p[p >= 0] for p in statue.kp_point]),
            ),
        ),
        shape=(len(statue.kp_point), len(statue.xyz)),
    )
    A.data[:] = 1.0
    dense = (A @ A.T).toarray()
    np.fill_diagonal(dense, 0)
    for i in range(len(dense)):
        order = np.argsort(-dense[i], kind="stable")[: statue.num_covisible]
        np.testing.assert_array_equal(statue.covisible(i), order[dense[i, order] > 0])
    assert statue.covis_index.shape == (40, 5)  # (images, num_covisible), never (images, images)


def patched_statue(folder: Path, file: str, offset: int, fmt: str, value) -> Path:
    """The statue model with one value of ``file`` overwritten (struct ``fmt`` at ``offset``); the
    other files are links to the originals."""
    folder.mkdir()
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        if name != file:
            (folder / name).symlink_to(STATUE / name)
    data = bytearray((STATUE / file).read_bytes())
    struct.pack_into(fmt, data, offset, value)
    (folder / file).write_bytes(bytes(data))
    return folder


# cameras.bin: uint64 count, then int32 id, int32 model, uint64 width, uint64 height, float64 params;
# the statue's one camera is SIMPLE_RADIAL (f, cx, cy, k): f at byte 32, cx at 40, cy at 48.
@needs_statue
@pytest.mark.parametrize(
    "offset,value,named",
    [
        (32, 0.0, r"camera 1 \(SIMPLE_RADIAL\) in .*cameras.bin: focal length"),
        (32, float("nan"), r"camera 1 \(SIMPLE_RADIAL\) in .*cameras.bin: parameters .*finite"),
        (40, 5000.0, r"camera 1 .* in .*cameras.bin: principal point \(5000.0, 600.0\).*800x1200"),
        (56, float("inf"), r"camera 1 .*cameras.bin.*finite"),
    ],
)
def test_invalid_camera_is_named(tmp_path, offset, value, named):
    folder = patched_statue(tmp_path / "m", "cameras.bin", offset, "<d", value)
    with pytest.raises(ValueError, match=named):
        ColmapDataset(folder)


@needs_statue
def test_truncated_cameras_file_is_named(tmp_path):
    folder = patched_statue(tmp_path / "m", "cameras.bin", 0, "<Q", 1)
    (folder / "cameras.bin").write_bytes((STATUE / "cameras.bin").read_bytes()[:40])
    with pytest.raises(
        ValueError, match=r"truncated .*m/cameras.bin: camera 1 \(SIMPLE_RADIAL, 4 par.*64 bytes.*40"
    ):
        ColmapDataset(folder)
    (folder / "cameras.bin").write_bytes((STATUE / "cameras.bin").read_bytes() + b"\0" * 8)
    with pytest.raises(ValueError, match=r"cameras.bin: 72 bytes, expected 64"):
        ColmapDataset(folder)


def test_invalid_text_camera_is_named(tmp_path):
    write_text_model(tmp_path / "m", "PINHOLE", [500, 520, 320, 240])
    (tmp_path / "m" / "cameras.txt").write_text("1 PINHOLE 640 480 500 -520 320 240\n")
    with pytest.raises(
        ValueError,
        match=r"camera 1 \(PINHOLE\) in .*cameras.txt: focal length \(fx, fy\) = \(500.0, -520.0\)",
    ):
        ColmapDataset(tmp_path / "m")


# points3D.bin: uint64 count, then per point uint64 id, float64 x, y, z, ...: the first x at byte 16.
@needs_statue
def test_non_finite_3d_point_is_dropped_and_its_images_kept(tmp_path, caplog):
    folder = patched_statue(tmp_path / "m", "points3D.bin", 16, "<d", float("nan"))
    (point_id,) = struct.unpack_from("<Q", (STATUE / "points3D.bin").read_bytes(), 8)
    with caplog.at_level(logging.WARNING, logger="bpnp.data.colmap"):
        ds = ColmapDataset(folder, dtype=torch.float64)
    assert f"points3D.bin: dropped 1 3D point(s) with non-finite coordinates (id {point_id})" in caplog.text
    assert len(ds) == 40 and len(ds.xyz) == 9066 - 1 and np.isfinite(ds.xyz).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rejected item would warn and be replaced
        for i in range(len(ds)):
            s = ds.build(i)
            assert torch.isfinite(s.points3d).all() and reprojection_errors(s).median() < 2.0


@pytest.mark.skipif(not STATUE.is_dir(), reason="needs ../shared/data")
def test_retrieval_protocol_keeps_only_what_the_retrieved_images_see():
    rec = pycolmap.Reconstruction(str(STATUE))
    covisible = ColmapDataset(STATUE, split_by="image", num_covisible=3)
    retrieval = ColmapDataset(STATUE, split_by="image", num_covisible=3, query_protocol="retrieval")
    names = {im.name: im for im in rec.images.values()}
    for ds in (covisible, retrieval):
        for index in range(0, len(ds), 7):
            sample = ds[index]
            i = ds.items[index]
            query = names[ds.names[i]]
            # the points the retrieved images observe, straight from pycolmap
            retrieved = {
                p.point3D_id for j in ds.covisible(i) for p in names[ds.names[j]].points2D if p.has_point3D()
            }
            own = {p.point3D_id for p in query.points2D if p.has_point3D()}
            expected = retrieved if ds is retrieval else retrieved | own
            assert len(sample.points3d) == len(expected)
            # inliers: the query's triangulated keypoints whose point is in the set
            assert sample.num_inliers == sum(
                p.has_point3D() and p.point3D_id in expected for p in query.points2D
            )
    # the queries the retrieved images leave with too few inliers are counted, and no more
    dropped = retrieval.rejected["fewer than 4 inliers among the retrieved images' points"]
    assert len(retrieval) + dropped == len(covisible)
    with pytest.raises(ValueError, match="query_protocol"):
        ColmapDataset(STATUE, split_by="image", query_protocol="magic")


@needs_statue
def test_reference_view_is_the_most_covisible_image():
    rec = pycolmap.Reconstruction(str(STATUE))
    ds = ColmapDataset(STATUE, split_by="image", num_covisible=1, query_protocol="retrieval")
    images = list(rec.images.values())
    seen = {im.name: {p.point3D_id for p in im.points2D if p.has_point3D()} for im in images}
    for index in range(0, len(ds), 5):
        sample = ds[index]
        name = ds.names[ds.items[index]]
        # the database image sharing most points, counted straight from pycolmap (ties: any of them)
        shared = {o: len(seen[name] & seen[o]) for o in seen if o != name}
        best = max(shared.values())
        refs = [im for im in images if im.name != name and shared[im.name] == best]
        poses = [im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world for im in refs]
        assert any(
            np.allclose(sample.R_ref.numpy(), p.rotation.matrix(), atol=1e-5)
            and np.allclose(sample.t_ref.numpy(), p.translation, atol=1e-4)
            for p in poses
        )


def test_scene_lists_choose_the_splits(tmp_path):
    root = tmp_path / "scenes"
    for name in ("a", "b", "c", "d"):
        write_text_model(root / name / "sparse", "SIMPLE_PINHOLE", [500, 320, 240])
    lists = {"train": ["a", "d"], "val": ["b"], "test": ["c"]}
    for split, names in lists.items():
        ds = build_dataset("colmap", split, root, scenes=lists)
        assert sorted({scene_of(ds[i]) for i in range(len(ds))}) == names
    with pytest.raises(ValueError, match=r"no scene 'bb'.*did you mean 'b'"):
        build_dataset("colmap", "train", root, scenes={"train": ["a"], "val": ["bb"]})
    with pytest.raises(ValueError, match=r"'a' is in both 'train' and 'test'"):
        build_dataset("colmap", "train", root, scenes={"train": ["a"], "test": ["a"]})
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['tset'\]"):
        build_dataset("colmap", "train", root, scenes={"train": ["a"], "tset": ["c"]})
    with pytest.raises(ValueError, match="no scene for split 'val'"):
        build_dataset("colmap", "val", root, scenes={"train": ["a"]})
    with pytest.raises(ValueError, match="split_by='scene'"):
        build_dataset("colmap", "train", root, scenes=lists, split_by="image")


@needs_scenes
def test_shipped_real_scene_config_keeps_scenes_apart():
    from bpnp.cli.configs import composed_section
    from bpnp.data.colmap import find_models

    data = composed_section(Path(__file__).resolve().parents[1] / "bpnp/configs/colmap_scenes.yaml", "data")
    lists = data["options"]["scenes"]
    assert [len(lists[s]) for s in ("train", "val", "test")] == [14, 3, 3]
    every = [n for s in lists.values() for n in s]
    assert sorted(every) == sorted({d.relative_to(SCENES).parts[0] for d in find_models(SCENES)})
    test = build_dataset("colmap", "test", SCENES, scenes=lists, query_protocol="retrieval", num_covisible=1)
    train = build_dataset(
        "colmap", "train", SCENES, scenes=lists, query_protocol="retrieval", num_covisible=1
    )
    assert {d.scene for d in test.datasets} == set(lists["test"])
    assert not {d.scene for d in train.datasets} & set(lists["test"] + lists["val"])
