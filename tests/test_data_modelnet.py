from pathlib import Path

import numpy as np
import pytest
import torch

from bpnp.data import ModelNet40Dataset, ObjectProtocol
from bpnp.geometry import project_points


def write_off(path: Path, verts: np.ndarray, faces: list[list[int]], fused_header: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"OFF{len(verts)} {len(faces)} 0" if fused_header else f"OFF\n{len(verts)} {len(faces)} 0"
    lines = (
        [head]
        + [" ".join(map(str, v)) for v in verts]
        + [f"{len(f)} " + " ".join(map(str, f)) for f in faces]
    )
    path.write_text("\n".join(lines) + "\n")


def box(sx, sy, sz) -> tuple[np.ndarray, list[list[int]]]:
    """An axis-aligned box with quad faces (ModelNet files mix polygon sizes)."""
    v = np.array([[x, y, z] for x in (0, sx) for y in (0, sy) for z in (0, sz)], dtype=float)
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    return v, quads


@pytest.fixture()
def modelnet_root(tmp_path: Path) -> Path:
    for c, dims in (("chair", (1, 2, 3)), ("table", (3, 1, 0.5))):
        for k in range(5):
            write_off(tmp_path / c / "train" / f"{c}_{k:04d}.off", *box(*dims), fused_header=k == 0)
        write_off(tmp_path / c / "test" / f"{c}_9000.off", *box(*dims))
    return tmp_path


def test_reads_layout_and_splits(modelnet_root):
    train = ModelNet40Dataset(
        modelnet_root,
        split="train",
        val_fraction=0.2,
        protocol=ObjectProtocol(num_points=200, scale_range=(1.0, 1.0)),
    )
    val = ModelNet40Dataset(
        modelnet_root,
        split="val",
        val_fraction=0.2,
        protocol=ObjectProtocol(num_points=200, scale_range=(1.0, 1.0)),
    )
    test = ModelNet40Dataset(
        modelnet_root,
        split="test",
        samples_per_mesh=3,
        protocol=ObjectProtocol(num_points=200, scale_range=(1.0, 1.0)),
    )
    assert (len(train), len(val), len(test)) == (8, 2, 6)
    assert not set(train.files) & set(val.files)
    assert {f.parent.parent.name for f in test.files} == {"chair", "table"}
    only = ModelNet40Dataset(
        modelnet_root,
        split="test",
        classes=["table"],
        protocol=ObjectProtocol(num_points=50, scale_range=(1.0, 1.0)),
    )
    assert len(only) == 1 and only[0].scene == "table"


def test_points_lie_on_the_mesh_and_project(modelnet_root):
    ds = ModelNet40Dataset(
        modelnet_root,
        split="train",
        dtype=torch.float64,
        protocol=ObjectProtocol(num_points=300, scale_range=(1.0, 1.0)),
    )
    for i in range(len(ds)):  # includes the fused-header file
        s = ds[i]
        X = s.points3d.numpy()
        # A box normalised to unit radius: every point lies on one of its faces.
        lo, hi = X.min(0), X.max(0)
        on_face = np.isclose(X, lo, atol=1e-9) | np.isclose(X, hi, atol=1e-9)
        assert on_face.any(1).all()
        np.testing.assert_allclose(np.linalg.norm(hi - lo) / 2, 1.0, atol=0.05)  # unit bounding sphere
        m = s.match >= 0
        uv = project_points(s.points3d[s.match[m]], s.R, s.t, s.K)
        torch.testing.assert_close(uv, s.points2d[m])
    # Aspect ratios of the two classes survive (no anisotropic scaling by default).
    ext = {ds[i].scene: np.ptp(ds[i].points3d.numpy(), 0) for i in range(len(ds))}
    np.testing.assert_allclose(
        np.sort(ext["chair"]) / np.sort(ext["chair"])[-1], [1 / 3, 2 / 3, 1], atol=0.02
    )


def test_missing_and_corrupt_files_are_named(tmp_path, modelnet_root):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        ModelNet40Dataset(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="class"):
        ModelNet40Dataset(modelnet_root, classes=["sofa"])
    bad = modelnet_root / "chair" / "test" / "chair_9000.off"
    bad.write_text("this is not a mesh\n")
    ds = ModelNet40Dataset(
        modelnet_root,
        split="test",
        classes=["chair"],
        protocol=ObjectProtocol(num_points=50, scale_range=(1.0, 1.0)),
    )
    with pytest.raises(ValueError, match="chair_9000.off"):
        ds[0]
