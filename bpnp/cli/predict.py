"""``bpnp predict`` on one's own files: 2D keypoints (pixels), a 3D point cloud and K -> the camera
pose, the 2D-3D matches and their scores, as JSON.

    bpnp predict --points2d kp.txt --points3d cloud.ply --K K.txt --out result.json
    bpnp predict --problems DIR --out RESULTS_DIR     # every DIR/<name>/ with points2d.*, points3d.*, K.*
    bpnp predict --colmap MODEL --image_name NAME --out result.json --viz DIR
    bpnp predict --ckpt pretrained:colmap --points2d kp.txt --points3d map.npy --K K.txt --ref_pose db.json

Networks with bearing input (``pretrained:colmap``) also need a reference view of the 3D set, the
pose of a database image that sees it: ``--ref_pose`` (problem folders: ``ref_pose.json``); with
``--colmap`` it is the model's most co-visible image.

``--ckpt`` takes a checkpoint path or ``pretrained:NAME`` (default ``pretrained:synthetic``). User
mistakes (a missing file, a malformed array, a bad option) print one line and exit with status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from jsonargparse import ArgumentParser
from tqdm import tqdm

from bpnp.data.files import POINT_SUFFIXES, intrinsics_matrix, read_intrinsics, read_points, read_pose
from bpnp.geometry import rotation_error_deg
from bpnp.models import BlindPnPNet
from bpnp.models.pretrained import pretrained_name


def load_network(ref: str, device: str = "cpu") -> BlindPnPNet:
    """A network from ``pretrained:NAME`` or a Lightning checkpoint path."""
    name = pretrained_name(ref)
    if name is not None:
        from bpnp.models.pretrained import load_pretrained

        return load_pretrained(name, device)
    if not Path(ref).is_file():
        raise FileNotFoundError(f"checkpoint {ref} not found (or pass pretrained:NAME)")
    from bpnp.evaluation.network_method import load_module

    return load_module(ref, device).net


def predict_problem(
    net: BlindPnPNet,
    uv: np.ndarray,
    X: np.ndarray,
    K: np.ndarray,
    inlier_px: float = 4.0,
    ref: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The network's answer on one problem, as plain JSON-ready values.

    Args:
        uv: (m, 2) pixels; X: (n, 3) world points; K: (3, 3).
        inlier_px: a match is an inlier when its 3D point projects within this many pixels.
        ref: ``(R (3, 3), t (3,))`` of a reference view of the 3D set (a map's database image), which
            networks with bearing input need.
    Raises:
        ValueError: when the network needs a reference view and none is given.
    """
    if net.config.input3d == "bearings" and ref is None:
        raise ValueError(
            "this network reads the 3D points as bearings in a reference view: pass --ref_pose FILE "
            "(JSON with R and t, world to camera, of a database image that sees them) or use --colmap"
        )
    device = next(net.parameters()).device
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    start = time.perf_counter()
    with torch.no_grad():
        ref_t = None if ref is None else (as_t(ref[0]), as_t(ref[1]))
        out = net.predict(as_t(uv), as_t(X), as_t(K), ref=ref_t)
    seconds = time.perf_counter() - start
    R, t = out["R"].double().cpu().numpy(), out["t"].double().cpu().numpy()
    matches, scores = out["matches"].cpu().numpy(), out["scores"].double().cpu().numpy()
    keep = scores > 0
    matches, scores = matches[keep], scores[keep]
    Xc = X[matches[:, 1]] @ R.T + t
    z = np.where(Xc[:, 2] > 1e-12, Xc[:, 2], np.nan)
    proj = (Xc[:, :2] / z[:, None]) @ K[:2, :2].T + K[:2, 2]
    err = np.linalg.norm(proj - uv[matches[:, 0]], axis=1)
    inlier = np.nan_to_num(err, nan=np.inf) <= inlier_px
    return {
        "R": R.tolist(),
        "t": t.tolist(),
        "camera_center": (-R.T @ t).tolist(),
        "valid": bool(out["valid"]),
        "num_points2d": len(uv),
        "num_points3d": len(X),
        "num_inliers": int(inlier.sum()),
        "inlier_threshold_px": inlier_px,
        "matches": [
            {
                "point2d": int(i),
                "point3d": int(j),
                "score": float(s),
                "reprojection_px": float(e),
                "inlier": bool(k),
            }
            for (i, j), s, e, k in zip(matches, scores, np.nan_to_num(err, nan=np.inf), inlier, strict=True)
        ],
        "seconds": seconds,
    }


def draw_result(image: Path, uv: np.ndarray, X: np.ndarray, K: np.ndarray, result: dict, out: Path) -> Path:
    """The keypoints (grey) and, for every inlier match, its 3D point's projection (green) on the photo."""
    img = cv2.imread(str(image))
    if img is None:
        raise FileNotFoundError(f"image {image} not found or not readable")
    R, t = np.asarray(result["R"]), np.asarray(result["t"])
    for p in uv:
        cv2.circle(img, (int(round(p[0])), int(round(p[1]))), 2, (150, 150, 150), -1, cv2.LINE_AA)
    for m in result["matches"]:
        if not m["inlier"]:
            continue
        Xc = R @ X[m["point3d"]] + t
        q = K[:2, :2] @ (Xc[:2] / Xc[2]) + K[:2, 2]
        p = uv[m["point2d"]]
        cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), (60, 180, 60), 1, cv2.LINE_AA)
        cv2.circle(img, (int(round(q[0])), int(round(q[1]))), 3, (60, 180, 60), 1, cv2.LINE_AA)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), img)
    return out


def _find(folder: Path, stem: str, suffixes: Sequence[str]) -> Path:
    for s in suffixes:
        if (folder / f"{stem}{s}").is_file():
            return folder / f"{stem}{s}"
    raise FileNotFoundError(f"problem folder {folder}: no {stem}{{{','.join(suffixes)}}}")


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="bpnp predict", description=__doc__.split("\n\n")[0], default_env=False)
    p.add_argument(
        "--ckpt", type=str, default="pretrained:synthetic", help="checkpoint path or pretrained:NAME"
    )
    p.add_argument(
        "--points2d", type=str | None, default=None, help="2D keypoints in pixels (.npy, .txt, .csv)"
    )
    p.add_argument(
        "--points3d", type=str | None, default=None, help="3D points (.npy, .txt, .csv, .ply, .pcd)"
    )
    p.add_argument(
        "--K", type=str | None, default=None, help="intrinsics file (3 x 3 text, fx fy cx cy, or JSON)"
    )
    for name in ("fx", "fy", "cx", "cy"):
        p.add_argument(f"--{name}", type=float | None, default=None, help="intrinsics, instead of --K")
    p.add_argument("--problems", type=str | None, default=None, help="folder of problem folders (batch mode)")
    p.add_argument(
        "--colmap", type=str | None, default=None, help="a COLMAP model folder (with --image_name)"
    )
    p.add_argument("--image_name", type=str | None, default=None, help="the registered image to localise")
    p.add_argument(
        "--viz", type=str | None, default=None, help="COLMAP input: write the 2D and 3D pictures here"
    )
    p.add_argument("--image", type=str | None, default=None, help="the photo, to draw the matches on")
    p.add_argument(
        "--ref_pose",
        type=str | None,
        default=None,
        help="JSON {R, t} of a reference view of the 3D set (networks with bearing input, e.g. colmap)",
    )
    p.add_argument("--out", type=str, default="prediction.json", help="result JSON (batch mode: a folder)")
    p.add_argument("--inlier_px", type=float, default=4.0, help="reprojection threshold of an inlier match")
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--debug", type=bool, default=False, help="show tracebacks")
    return p


def _intrinsics(cfg) -> np.ndarray:
    flags = [cfg.fx, cfg.fy, cfg.cx, cfg.cy]
    if cfg.K is not None:
        return read_intrinsics(cfg.K)
    if all(v is not None for v in flags):
        return intrinsics_matrix(*flags)
    raise ValueError("intrinsics: pass --K FILE or all of --fx --fy --cx --cy")


def colmap_problem(
    model: str | Path, image_name: str, query_protocol: str = "covisible", num_covisible: int = 5
):
    """The problem of a registered image of a COLMAP model: its keypoints (undistorted pixels), the
    points of its co-visible images and its own (the COLMAP source's default query protocol; or
    GoMatch's ``"retrieval"``: only what the ``num_covisible`` retrieved images see), K, the model's
    pose of the image, and the most co-visible image as the reference view.

    Raises:
        ValueError: naming the image when the model does not hold it (or it has too few points).
    """
    from bpnp.data.colmap import ColmapDataset

    ds = ColmapDataset(
        model, split="all", split_by="image", query_protocol=query_protocol, num_covisible=num_covisible
    )
    names = [ds.names[i] for i in ds.items]
    if image_name not in names:
        close = difflib.get_close_matches(image_name, names, n=3)
        raise ValueError(
            f"COLMAP model {model}: no usable registered image {image_name!r}"
            + (f" (closest: {close})" if close else f" ({len(names)} images, e.g. {names[:3]})")
        )
    return ds[names.index(image_name)]


def _predict_colmap(net, cfg) -> list[Path]:
    # A bearing network was trained on GoMatch's protocol with the top-1 retrieved image: ask it that.
    protocol = ("retrieval", 1) if net.config.input3d == "bearings" else ("covisible", 5)
    sample = colmap_problem(cfg.colmap, cfg.image_name, *protocol)
    uv, X, K = (v.double().numpy() for v in (sample.points2d, sample.points3d, sample.K))
    # The model's most co-visible other image is the reference view.
    ref = None if sample.R_ref is None else (sample.R_ref.double().numpy(), sample.t_ref.double().numpy())
    result = predict_problem(net, uv, X, K, cfg.inlier_px, ref)
    R_ref = sample.R.double()
    R_est = torch.tensor(result["R"], dtype=torch.float64)
    result["reference"] = {
        "R": sample.R.tolist(), "t": sample.t.tolist(),
        "rotation_error_deg": float(rotation_error_deg(R_est[None], R_ref[None])[0]),
    }  # fmt: skip
    written = [_write(Path(cfg.out), result)]
    if cfg.viz is not None:
        from bpnp.data import collate
        from bpnp.metrics import MethodOutput
        from bpnp.viz import save_problem_images

        batch = collate([sample])
        pairs = torch.tensor(
            [[m["point2d"], m["point3d"]] for m in result["matches"]], dtype=torch.long
        ).reshape(-1, 2)
        out = MethodOutput(R=R_est[None].float(), t=torch.tensor(result["t"])[None].float(),
                           valid=torch.tensor([True]), pairs=pairs[None])  # fmt: skip
        written += save_problem_images(batch, out, 0, cfg.viz, Path(cfg.image_name).stem)
    return written


def run(cfg) -> list[Path]:
    """Predict one problem or a folder of them; returns the result files written."""
    net = load_network(cfg.ckpt, cfg.device)
    out = Path(cfg.out)
    if cfg.colmap is not None:
        if cfg.image_name is None:
            raise ValueError("--colmap needs --image_name (the registered image to localise)")
        return _predict_colmap(net, cfg)
    if cfg.problems is not None:
        root = Path(cfg.problems)
        if not root.is_dir():
            raise FileNotFoundError(f"problems folder {root} not found")
        folders = sorted(d for d in root.iterdir() if d.is_dir())
        if not folders:
            raise ValueError(f"problems folder {root}: no problem folders in it")
        written = []
        for d in tqdm(folders, desc="predict", unit="problem"):
            uv = read_points(_find(d, "points2d", POINT_SUFFIXES[:3]), 2, "points2d")
            X = read_points(_find(d, "points3d", POINT_SUFFIXES), 3, "points3d")
            K = read_intrinsics(_find(d, "K", (".txt", ".json")))
            ref = read_pose(d / "ref_pose.json") if (d / "ref_pose.json").is_file() else None
            written.append(_write(out / f"{d.name}.json", predict_problem(net, uv, X, K, cfg.inlier_px, ref)))
        return written
    if cfg.points2d is None or cfg.points3d is None:
        raise ValueError(
            "pass --points2d and --points3d (or --problems DIR, or --colmap MODEL --image_name NAME)"
        )
    uv = read_points(cfg.points2d, 2, "points2d")
    X = read_points(cfg.points3d, 3, "points3d")
    K = _intrinsics(cfg)
    ref = None if cfg.ref_pose is None else read_pose(cfg.ref_pose)
    result = predict_problem(net, uv, X, K, cfg.inlier_px, ref)
    written = [_write(out, result)]
    if cfg.image is not None:
        written.append(draw_result(Path(cfg.image), uv, X, K, result, out.with_suffix(".png")))
    return written


def _write(path: Path, result: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path


def predict_main(argv: Sequence[str] | None = None) -> list[Path]:
    p = parser()
    cfg = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        written = run(cfg)
    except (FileNotFoundError, ValueError) as e:
        if cfg.debug:
            raise
        print(f"bpnp predict: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for path in written:
        print(path)
    return written
