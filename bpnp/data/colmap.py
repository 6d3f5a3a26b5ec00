"""COLMAP sparse models (MegaDepth-style scenes): one problem per registered image.

The query's keypoints are the 2D set (those with a triangulated point are inliers, the rest natural
2D outliers); the 3D set holds the points observed by the query and by its most co-visible images
(by number of shared points), so points the query does not see are natural 3D outliers (GoMatch's
protocol). Keypoints are undistorted with OpenCV into the pixels of the camera's pinhole ``K``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pycolmap
import scipy.sparse as sp
import torch

from bpnp.data.base import CorrespondenceDataset, Problem
from bpnp.data.splits import split_items
from bpnp.data.transforms import MIN_INLIERS, Correspondences, PointControl, image_bounds

MODEL_FILES = "cameras, images and points3D (.bin or .txt)"


def camera_intrinsics(model: str, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole ``K`` (3, 3) and OpenCV distortion coefficients (4,) or (8,) of a COLMAP camera.

    Raises:
        ValueError: for a camera model outside the supported set.
    """
    p = [float(v) for v in params]
    if model == "SIMPLE_PINHOLE":
        (f, cx, cy), fy, dist = p, p[0], [0.0] * 4
    elif model == "PINHOLE":
        (f, fy, cx, cy), dist = p, [0.0] * 4
    elif model == "SIMPLE_RADIAL":
        f, cx, cy, k = p
        fy, dist = f, [k, 0.0, 0.0, 0.0]
    elif model == "RADIAL":
        f, cx, cy, k1, k2 = p
        fy, dist = f, [k1, k2, 0.0, 0.0]
    elif model == "OPENCV":
        f, fy, cx, cy, *dist = p
    elif model == "FULL_OPENCV":
        f, fy, cx, cy, k1, k2, p1, p2, k3, k4, k5, k6 = p
        dist = [k1, k2, p1, p2, k3, k4, k5, k6]
    else:
        raise ValueError(
            f"COLMAP camera model {model} is not supported "
            "(SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV are)"
        )
    K = np.array([[f, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return K, np.asarray(dist, dtype=np.float64)


def undistort_pixels(uv: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Undistorted pixels (k, 2) of distorted pixels (k, 2), in the pixel frame of the same ``K``.

    OpenCV's fixed-point inversion runs to convergence (its default 5 iterations leave pixels of
    error near the corners of strongly distorted images).
    """
    if len(uv) == 0 or not dist.any():
        return uv.astype(np.float64)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-12)
    out = cv2.undistortPoints(uv.reshape(-1, 1, 2).astype(np.float64), K, dist, P=K, criteria=criteria)
    return out.reshape(-1, 2)


def _pose(image: pycolmap.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(R (3, 3), t (3,))`` of an image; ``cam_from_world`` is a method in pycolmap 4 and a
    property before."""
    cfw = image.cam_from_world
    cfw = cfw() if callable(cfw) else cfw
    return np.asarray(cfw.rotation.matrix(), dtype=np.float64), np.asarray(cfw.translation, dtype=np.float64)


def read_model(model_dir: Path) -> pycolmap.Reconstruction:
    """The reconstruction in ``model_dir``, with errors naming the folder and the files expected."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"COLMAP model folder {model_dir} not found (expected {MODEL_FILES})")
    for stem in ("cameras", "images", "points3D"):
        if not any((model_dir / f"{stem}{ext}").is_file() for ext in (".bin", ".txt")):
            raise FileNotFoundError(f"{model_dir / stem}.bin (or .txt) not found (expected {MODEL_FILES})")
    try:
        return pycolmap.Reconstruction(str(model_dir))
    except Exception as e:  # pycolmap raises bare RuntimeErrors on malformed files
        raise ValueError(f"corrupt COLMAP model in {model_dir}: {e}") from e


def find_models(root: str | Path) -> list[Path]:
    """Model folders under ``root``: ``root`` itself when it holds a model, else every folder below
    it (up to four levels, e.g. MegaDepth's ``<scene>/sparse/manhattan/0``) that does, sorted.

    Raises:
        FileNotFoundError: naming ``root`` when it is missing or holds no model.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"COLMAP root {root} not found (expected a folder with {MODEL_FILES})")
    if any((root / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
        return [root]
    found = sorted(
        {
            f.parent
            for depth in range(1, 5)
            for ext in (".bin", ".txt")
            for f in root.glob("*/" * depth + f"cameras{ext}")
        }
    )
    if not found:
        raise FileNotFoundError(f"no COLMAP model under {root} (expected folders with {MODEL_FILES})")
    return found


class ColmapDataset(CorrespondenceDataset):
    """One blind-PnP problem per registered image of a COLMAP sparse model.

    Args:
        model_dir: folder holding ``cameras``, ``images`` and ``points3D`` (binary or text).
        split: ``"all"``, or ``"train"`` / ``"val"`` / ``"test"``: a partition of the images by
            ``seed`` with the given fractions.
        num_covisible: co-visible images whose points join the query's own in the 3D set.
        image_dir: folder of the photos, to fill ``image_path`` (else the image name is given).
        scene: scene name of the samples (None: the model folder's name).
        m_max, n_max, outlier_rate_2d, outlier_rate_3d: see :class:`PointControl` (None keeps the
            natural outliers).
        seed: seed of the split and of the point control.
    """

    def __init__(
        self,
        model_dir: str | Path,
        split: str = "all",
        num_covisible: int = 5,
        image_dir: str | None = None,
        scene: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        m_max: int | None = None,
        n_max: int | None = None,
        outlier_rate_2d: float | None = None,
        outlier_rate_3d: float | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(PointControl(m_max, n_max, outlier_rate_2d, outlier_rate_3d), seed=seed, dtype=dtype)
        self.model_dir = Path(model_dir)
        self.scene = scene or self.model_dir.name
        self.image_dir = image_dir
        self.num_covisible = num_covisible
        self._load(read_model(self.model_dir))
        # Images with too few triangulated keypoints cannot form a problem: excluded and counted.
        ok = [i for i in range(len(self.names)) if (self.kp_point[i] >= 0).sum() >= MIN_INLIERS]
        self.rejected = {f"fewer than {MIN_INLIERS} inliers": len(self.names) - len(ok)}
        chosen = split_items(len(ok), split, seed, val_fraction, test_fraction)
        self.items = [ok[i] for i in chosen]

    def _load(self, rec: pycolmap.Reconstruction) -> None:
        """Copy everything needed into numpy arrays (picklable for workers, no model kept)."""
        point_ids = np.array(sorted(rec.points3D.keys()), dtype=np.int64)
        row = {int(pid): r for r, pid in enumerate(point_ids)}
        self.xyz = np.array([rec.points3D[int(pid)].xyz for pid in point_ids], dtype=np.float64).reshape(
            -1, 3
        )
        self.names, self.K, self.R, self.t, self.size = [], [], [], [], []
        self.kp_uv, self.kp_point = [], []
        intr = {cid: camera_intrinsics(c.model.name, c.params) for cid, c in rec.cameras.items()}
        for image_id in sorted(rec.reg_image_ids()):
            im = rec.images[image_id]
            cam = rec.cameras[im.camera_id]
            K, dist = intr[im.camera_id]
            kps = im.points2D
            uv = np.array([p.xy for p in kps], dtype=np.float64).reshape(-1, 2)
            pts = np.array([row[p.point3D_id] if p.has_point3D() else -1 for p in kps], dtype=np.int64)
            R, t = _pose(im)
            self.names.append(im.name)
            self.K.append(K)
            self.R.append(R)
            self.t.append(t)
            self.size.append((int(cam.width), int(cam.height)))
            uv = undistort_pixels(uv, K, dist)
            ok = np.isfinite(uv).all(1)  # drop keypoints the inversion cannot place
            self.kp_uv.append(uv[ok])
            self.kp_point.append(pts[ok])
        self._covisibility()

    def _covisibility(self) -> None:
        """Shared-point counts between every pair of images, (I, I)."""
        rows = np.concatenate([np.full((p >= 0).sum(), i) for i, p in enumerate(self.kp_point)] + [[]])
        cols = np.concatenate([p[p >= 0] for p in self.kp_point] + [[]])
        A = sp.csr_matrix(
            (np.ones(len(rows)), (rows.astype(np.int64), cols.astype(np.int64))),
            shape=(len(self.kp_point), len(self.xyz)),
        )
        A.data[:] = 1.0  # a point observed twice in one image still counts once
        co = (A @ A.T).toarray()
        np.fill_diagonal(co, 0)
        self.covis = co

    def covisible(self, i: int) -> np.ndarray:
        """Indices of the (up to) ``num_covisible`` images sharing most points with image ``i``."""
        order = np.argsort(-self.covis[i], kind="stable")[: self.num_covisible]
        return order[self.covis[i, order] > 0]

    def __len__(self) -> int:
        return len(self.items)

    def _problem(self, index: int, rng: np.random.Generator) -> Problem:
        i = self.items[index]
        own = self.kp_point[i]
        seen = [own[own >= 0]] + [self.kp_point[j][self.kp_point[j] >= 0] for j in self.covisible(i)]
        in_set = np.zeros(len(self.xyz), dtype=bool)
        in_set[np.concatenate(seen)] = True
        ids = np.flatnonzero(in_set)  # rows of self.xyz forming the 3D set
        match = np.full(len(own), -1, dtype=np.int64)
        match[own >= 0] = np.searchsorted(ids, own[own >= 0])
        w, h = self.size[i]
        corr = Correspondences(self.kp_uv[i], self.xyz[ids], match, image_bounds(w, h))
        name = self.names[i]
        path = str(Path(self.image_dir) / name) if self.image_dir else name
        return Problem(corr, self.K[i], self.R[i], self.t[i], self.scene, name, path, (w, h))
