"""``bpnp predict`` on one's own files, through the real command, with the shipped network."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import open3d as o3d
import pytest
import torch
from training_utils import ROOT, SCENES, STATUE

from bpnp import load_pretrained
from bpnp.cli.predict import predict_main
from bpnp.data.files import read_intrinsics, read_points
from bpnp.data.synthetic import UNIFORM_PROTOCOL, ObjectProtocol, SyntheticDataset
from bpnp.geometry import rotation_error_deg
from bpnp.models import PRETRAINED


@pytest.fixture(scope="module")
def problem():
    """A test problem of the shipped network's protocol (no outliers), with its true pose."""
    s = SyntheticDataset(
        split="test", seed=0, num_samples=1, protocol=ObjectProtocol(num_points=256, **UNIFORM_PROTOCOL)
    )[0]
    return s.points2d.double().numpy(), s.points3d.double().numpy(), s.K.double().numpy(), s.R.double()


def write_problem(folder, uv, X, K, kinds=("txt", "ply", "txt")):
    folder.mkdir(parents=True, exist_ok=True)
    k2, k3, kk = kinds
    paths = {
        "points2d": folder / f"points2d.{k2}",
        "points3d": folder / f"points3d.{k3}",
        "K": folder / f"K.{kk}",
    }
    np.savetxt(
        paths["points2d"], uv, delimiter="," if k2 == "csv" else " ", header="u v" if k2 == "csv" else ""
    )
    if k3 == "ply":
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(X))
        o3d.io.write_point_cloud(str(paths["points3d"]), pcd)
    else:
        np.save(paths["points3d"], X)
    if kk == "json":
        paths["K"].write_text(json.dumps({"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]}))
    else:
        np.savetxt(paths["K"], K)
    return paths


def test_predict_on_files_recovers_the_pose(tmp_path, problem):
    uv, X, K, R = problem
    paths = write_problem(tmp_path / "p", uv, X, K)
    out = tmp_path / "result.json"
    predict_main(["--points2d", str(paths["points2d"]), "--points3d", str(paths["points3d"]),
                  "--K", str(paths["K"]), "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    R_est = torch.tensor(result["R"], dtype=torch.float64)
    assert rotation_error_deg(R_est[None], R[None]).item() < 5.0
    assert result["valid"] and result["num_inliers"] >= 0.5 * len(uv)
    np.testing.assert_allclose(result["camera_center"], -R_est.numpy().T @ np.array(result["t"]))
    assert all(m["score"] > 0 for m in result["matches"])


def test_batch_mode_over_a_folder_of_problems(tmp_path, problem):
    uv, X, K, _ = problem
    write_problem(tmp_path / "in" / "a", uv, X, K, ("csv", "npy", "json"))
    write_problem(tmp_path / "in" / "b", uv[:100], X, K)
    written = predict_main(["--problems", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert [p.name for p in written] == ["a.json", "b.json"]
    assert json.loads(written[1].read_text())["num_points2d"] == 100


def test_user_mistakes_are_one_line_with_status_2(tmp_path, subprocess_env, problem):
    uv, X, K, _ = problem
    paths = write_problem(tmp_path / "p", uv, X, K)
    np.save(tmp_path / "transposed.npy", X.T)
    cases = {
        "points2d file": ["--points2d", str(tmp_path / "nope.txt"), "--points3d", str(paths["points3d"])],
        "expected an (N, 3) array": ["--points2d", str(paths["points2d"]), "--points3d",
                                     str(tmp_path / "transposed.npy"), "--K", str(paths["K"])],
        "pass --K FILE": ["--points2d", str(paths["points2d"]), "--points3d", str(paths["points3d"])],
    }  # fmt: skip
    for expected, args in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "bpnp.cli", "predict", *args, "--out", str(tmp_path / "r.json")],
            env=subprocess_env, capture_output=True, text=True, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in proc.stderr


def test_readers_check_what_they_read(tmp_path):
    bad = tmp_path / "nan.txt"
    bad.write_text("1 2\n3 4\nnan 5\n6 7\n8 9\n")
    with pytest.raises(ValueError, match="row 2 is not finite"):
        read_points(bad, 2)
    (tmp_path / "K.txt").write_text("500 0 320\n0 500 240\n0 0 2\n")
    with pytest.raises(ValueError, match="not a pinhole matrix"):
        read_intrinsics(tmp_path / "K.txt")
    (tmp_path / "K4.txt").write_text("500 510 320 240\n")
    np.testing.assert_array_equal(
        read_intrinsics(tmp_path / "K4.txt"), [[500, 0, 320], [0, 510, 240], [0, 0, 1]]
    )
    from bpnp.data.files import read_pose

    R = cv2.Rodrigues(np.array([0.1, -0.2, 0.3]))[0]
    (tmp_path / "pose.json").write_text(json.dumps({"R": R.tolist(), "t": [1, 2, 3]}))
    R2, t2 = read_pose(tmp_path / "pose.json")
    np.testing.assert_allclose(R2, R) and np.testing.assert_array_equal(t2, [1, 2, 3])
    (tmp_path / "scaled.json").write_text(json.dumps({"R": (2 * R).tolist(), "t": [1, 2, 3]}))
    with pytest.raises(ValueError, match="scaled.json: 'R' is not a rotation"):
        read_pose(tmp_path / "scaled.json")
    (tmp_path / "short.json").write_text(json.dumps({"R": R.tolist(), "t": [1, 2]}))
    with pytest.raises(ValueError, match="short.json"):
        read_pose(tmp_path / "short.json")


def test_the_shipped_network_loads_by_name():
    assert "synthetic" in PRETRAINED
    net = load_pretrained("synthetic")
    assert not net.training and net.config.view_search
    with pytest.raises(ValueError, match="shipped ones are"):
        load_pretrained("nope")
    assert (ROOT / "bpnp" / "models" / "weights" / "synthetic.pt").stat().st_size < 3e6


def test_evaluate_accepts_the_shipped_network(tmp_path):
    from bpnp.cli.evaluate import evaluate_main

    data = ["--data.options", "{num_points: 64}", "--data.test_samples", "2", "--data.num_workers", "0"]
    rows = evaluate_main(
        [*data, "--ckpt", "pretrained:synthetic", "--out", str(tmp_path), "--progress", "false"]
    )
    assert rows[0].method == "bpnp" and rows[0].summary["num_problems"] == 2


@pytest.mark.skipif(not STATUE.is_dir(), reason="needs ../shared/data")
def test_predict_a_registered_image_of_a_colmap_model(tmp_path):
    image = "14522296402_8ba47a6b27_o.jpg"
    written = predict_main(["--colmap", str(STATUE), "--image_name", image, "--out", str(tmp_path / "r.json"),
                            "--viz", str(tmp_path / "vis")])  # fmt: skip
    result = json.loads((tmp_path / "r.json").read_text())
    # the model's own pose of the image is the reference, and the error against it is reported
    ref = torch.tensor(result["reference"]["R"], dtype=torch.float64)
    est = torch.tensor(result["R"], dtype=torch.float64)
    assert result["reference"]["rotation_error_deg"] == pytest.approx(
        rotation_error_deg(est[None], ref[None]).item()
    )
    assert any(p.name.endswith("_matches_2d.png") for p in written)
    with pytest.raises(SystemExit):
        predict_main(["--colmap", str(STATUE), "--image_name", "nope.jpg", "--out", str(tmp_path / "x.json")])


def test_training_can_start_from_shipped_or_saved_weights(tmp_path):
    from bpnp.models import NetConfig
    from bpnp.models.pretrained import pretrained_state
    from bpnp.training.module import BlindPnPModule

    state = pretrained_state("synthetic")
    module = BlindPnPModule(net=NetConfig.from_dict(state["config"]), init_from="pretrained:synthetic")
    for k, v in module.net.state_dict().items():
        assert torch.equal(v, state["state_dict"][k]), k
    # a training checkpoint's net.* entries, as Lightning writes them
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"net.{k}": v * 2 for k, v in state["state_dict"].items()}}, ckpt)
    again = BlindPnPModule(net=NetConfig.from_dict(state["config"]), init_from=str(ckpt))
    w = next(iter(state["state_dict"]))
    assert torch.equal(again.net.state_dict()[w], state["state_dict"][w] * 2)
    assert "init_from" not in again.hparams  # a reload must not need the file
    with pytest.raises(ValueError, match=r"init_from pretrained:synthetic: its network does not fit"):
        BlindPnPModule(net=NetConfig(blocks=2), init_from="pretrained:synthetic")
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        BlindPnPModule(init_from=str(tmp_path / "nothing.ckpt"))


@pytest.mark.skipif(not (SCENES / "buzz_toy_shelf").is_dir(), reason="needs ../shared/data")
def test_shipped_real_scene_network_localises_an_unseen_scene(tmp_path, capsys):
    from bpnp.cli.predict import colmap_problem

    scene, image = SCENES / "buzz_toy_shelf", "images12.jpg"  # a test scene: never trained on
    predict_main(["--ckpt", "pretrained:colmap", "--colmap", str(scene), "--image_name", image,
                  "--out", str(tmp_path / "colmap.json")])  # fmt: skip
    result = json.loads((tmp_path / "colmap.json").read_text())
    assert result["reference"]["rotation_error_deg"] < 3.0  # against COLMAP's own pose of the image
    # the same problem from files, with the database image's pose as --ref_pose: the same answer
    s = colmap_problem(scene, image, "retrieval", 1)
    paths = write_problem(tmp_path / "p", s.points2d.double().numpy(), s.points3d.double().numpy(),
                          s.K.double().numpy(), kinds=("txt", "npy", "txt"))  # fmt: skip
    (tmp_path / "ref.json").write_text(json.dumps({"R": s.R_ref.tolist(), "t": s.t_ref.tolist()}))
    args = ["--ckpt", "pretrained:colmap", "--points2d", str(paths["points2d"]), "--points3d",
            str(paths["points3d"]), "--K", str(paths["K"])]  # fmt: skip
    predict_main([*args, "--ref_pose", str(tmp_path / "ref.json"), "--out", str(tmp_path / "files.json")])
    files = json.loads((tmp_path / "files.json").read_text())
    np.testing.assert_allclose(files["R"], result["R"], atol=1e-3)
    with pytest.raises(SystemExit) as e:  # without it: one line naming --ref_pose, status 2
        predict_main([*args, "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2 and "--ref_pose" in capsys.readouterr().err
