"""RGB-D frames (NYU-style): 3D points back-projected from a depth map, 2D points the same pixels.

Two layouts are read:

* a folder of colour / depth PNG pairs (TUM RGB-D, Redwood): either subfolders ``rgb|color|colour|
  image`` and ``depth`` paired by file stem (or, for TUM's timestamp names, by nearest timestamp),
  or files in one folder whose names differ only by ``color|rgb`` vs ``depth``
  (``TUM_color.png`` / ``TUM_depth.png``). Intrinsics come from the ``intrinsics`` argument or an
  ``intrinsics.json`` (Open3D's ``PinholeCameraIntrinsic`` format) / ``intrinsics.txt``
  (``fx fy cx cy`` or a 3x3 matrix) in the folder; ``depth_m = png_value / depth_scale``.
* NYU Depth v2's labelled ``.mat`` file (HDF5): ``depths`` (N, W, H) in metres, MATLAB's transposed
  layout, with the toolbox's colour intrinsics by default.

The world frame is a random rigid transform of the camera frame, so the pose is not the identity.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from bpnp.data.base import CorrespondenceDataset, Problem, RejectedSample
from bpnp.data.splits import split_items
from bpnp.data.transforms import MIN_INLIERS, Correspondences, PointControl, image_bounds

# NYU Depth v2 toolbox (camera_params.m): colour camera of the labelled set.
NYU_INTRINSICS = (518.857901, 519.469611, 325.582449, 253.736166)
COLOR_DIRS = ("rgb", "color", "colour", "image", "images")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".ppm")
FOLDER_LAYOUT = "rgb|color/ + depth/ subfolders, or *color*.png / *depth*.png pairs"


def pair_folder(root: Path) -> list[tuple[Path, Path]]:
    """Colour / depth file pairs of a folder, sorted by colour name.

    Raises:
        FileNotFoundError: naming ``root`` when it is missing or holds no pair.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"RGB-D folder {root} not found (expected {FOLDER_LAYOUT})")
    color_dir = next((root / d for d in COLOR_DIRS if (root / d).is_dir()), None)
    if color_dir is not None and (root / "depth").is_dir():
        colors = sorted(f for f in color_dir.iterdir() if f.suffix.lower() in IMAGE_EXT)
        depths = sorted(f for f in (root / "depth").iterdir() if f.suffix.lower() == ".png")
        pairs = _pair_by_stem(colors, depths)
    else:
        pairs = []
        for f in sorted(root.iterdir()):
            partner = re.sub(r"colou?r|rgb", "depth", f.name, count=1, flags=re.IGNORECASE)
            if partner != f.name and f.suffix.lower() in IMAGE_EXT and (root / partner).is_file():
                pairs.append((f, root / partner))
    if not pairs:
        raise FileNotFoundError(f"no colour/depth pairs in {root} (expected {FOLDER_LAYOUT})")
    return pairs


def _pair_by_stem(colors: list[Path], depths: list[Path], max_dt: float = 0.02) -> list[tuple[Path, Path]]:
    """Pairs with equal stems, or else (TUM: stems are timestamps) nearest timestamps within ``max_dt``."""
    by_stem = {d.stem: d for d in depths}
    pairs = [(c, by_stem[c.stem]) for c in colors if c.stem in by_stem]
    if pairs or not depths:
        return pairs
    try:
        ts = np.array([float(d.stem) for d in depths])
        for c in colors:
            j = int(np.argmin(np.abs(ts - float(c.stem))))
            if abs(ts[j] - float(c.stem)) <= max_dt:
                pairs.append((c, depths[j]))
    except ValueError:  # stems are not timestamps
        return []
    return pairs


def read_intrinsics(root: Path) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` from ``intrinsics.json`` / ``camera_intrinsic.json`` / ``intrinsics.txt``.

    Raises:
        FileNotFoundError: when none exists, naming the folder.
        ValueError: naming the file when it cannot be parsed.
    """
    for name in ("intrinsics.json", "camera_intrinsic.json"):
        f = root / name
        if f.is_file():
            try:
                K = np.asarray(json.loads(f.read_text())["intrinsic_matrix"], dtype=float).reshape(3, 3).T
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"corrupt intrinsics file {f}: expected 'intrinsic_matrix' (9 numbers)"
                ) from e
            return K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    f = root / "intrinsics.txt"
    if f.is_file():
        try:
            v = np.asarray(f.read_text().split(), dtype=float)
        except ValueError as e:
            raise ValueError(f"corrupt intrinsics file {f}: expected 'fx fy cx cy' or a 3x3 matrix") from e
        if v.size == 4:
            return tuple(v)  # type: ignore[return-value]
        if v.size == 9:
            return v[0], v[4], v[2], v[5]
        raise ValueError(f"corrupt intrinsics file {f}: expected 'fx fy cx cy' or a 3x3 matrix")
    raise FileNotFoundError(
        f"no intrinsics for {root}: pass intrinsics=(fx, fy, cx, cy) or add intrinsics.json / intrinsics.txt"
    )


def read_depth_png(path: Path, depth_scale: float) -> np.ndarray:
    """Depth (H, W) in metres of a 16-bit PNG (0 = missing).

    Raises:
        ValueError: naming the file when it is not a single-channel image.
    """
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2:
        raise ValueError(f"corrupt depth image {path}: expected a single-channel 16-bit PNG")
    return raw.astype(np.float32) / depth_scale


def backproject(uv: np.ndarray, depth: np.ndarray, intr: tuple[float, float, float, float]) -> np.ndarray:
    """Camera-frame points (k, 3) of pixels (k, 2) at depths (k,)."""
    fx, fy, cx, cy = intr
    return np.stack([(uv[:, 0] - cx) / fx * depth, (uv[:, 1] - cy) / fy * depth, depth], axis=1)


class RGBDDataset(CorrespondenceDataset):
    """Blind-PnP problems from RGB-D frames.

    Args:
        root: a folder of colour / depth pairs, or an NYU Depth v2 labelled ``.mat`` file.
        split: ``"all"`` or ``"train"`` / ``"val"`` / ``"test"`` (frames partitioned by ``seed``).
        num_points: pixels sampled among those with valid depth (the 2D and 3D sets before outliers).
        samples_per_frame: problems per frame, each with its own pixels and world frame.
        intrinsics: ``(fx, fy, cx, cy)``; None reads the folder's intrinsics file, or uses NYU's.
        depth_scale: PNG value per metre (TUM 5000, Redwood 1000); ignored for ``.mat`` (metres).
        max_depth: depths beyond this (metres) count as invalid.
        noise_px: Gaussian pixel noise on the 2D points.
        depth_key: ``"depths"`` (in-painted) or ``"rawDepths"`` for the ``.mat`` file.
        m_max, n_max, outlier_rate_2d, outlier_rate_3d: see :class:`PointControl`.
        seed: base seed.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        num_points: int = 1000,
        samples_per_frame: int = 1,
        intrinsics: tuple[float, float, float, float] | None = None,
        depth_scale: float = 5000.0,
        max_depth: float = 10.0,
        noise_px: float = 0.0,
        depth_key: str = "depths",
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
        self.root = Path(root)
        self.is_mat = self.root.suffix.lower() in (".mat", ".h5", ".hdf5")
        self.depth_key = depth_key
        if self.is_mat:
            frames: list = list(range(self._open_mat_layout()))
            self.intrinsics = tuple(intrinsics) if intrinsics else NYU_INTRINSICS
        else:
            frames = pair_folder(self.root)
            self.intrinsics = tuple(intrinsics) if intrinsics else read_intrinsics(self.root)
        self.frames = [frames[i] for i in split_items(len(frames), split, seed, val_fraction, test_fraction)]
        self.num_points = num_points
        self.samples_per_frame = samples_per_frame
        self.depth_scale = depth_scale
        self.max_depth = max_depth
        self.noise_px = noise_px
        self._h5: tuple[int, h5py.File] | None = None
        self._valid: dict[int, tuple[np.ndarray, np.ndarray, tuple[int, int]]] = {}

    def __getstate__(self) -> dict:
        # An open HDF5 handle cannot be pickled (spawned workers); each process reopens its own.
        return {**self.__dict__, "_h5": None}

    def _open_mat_layout(self) -> int:
        """Number of frames of the ``.mat`` file, after checking its layout."""
        if not self.root.is_file():
            raise FileNotFoundError(f"NYU Depth v2 file {self.root} not found (expected the labelled .mat)")
        try:
            with h5py.File(self.root, "r") as f:
                d = f[self.depth_key]
                if d.ndim != 3:
                    raise ValueError(f"dataset '{self.depth_key}' has shape {d.shape}")
                return int(d.shape[0])
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(
                f"corrupt NYU file {self.root}: expected HDF5 with '{self.depth_key}' (N, W, H) ({e})"
            ) from e

    def _depth(self, frame) -> np.ndarray:
        """Depth map (H, W) in metres of one frame."""
        if not self.is_mat:
            return read_depth_png(frame[1], self.depth_scale)
        # One handle per process: h5py handles do not survive a fork into loader workers.
        if self._h5 is None or self._h5[0] != os.getpid():
            self._h5 = (os.getpid(), h5py.File(self.root, "r"))
        return np.asarray(self._h5[1][self.depth_key][frame], dtype=np.float32).T

    def _valid_pixels(self, k: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Pixels (v, 2) as (u, v) with valid depth, their depths (v,) and the image size of frame
        ``k``; the last few frames are kept decoded (several problems per frame)."""
        if k not in self._valid:
            depth = self._depth(self.frames[k])
            ok = np.isfinite(depth) & (depth > 0) & (depth <= self.max_depth)
            rows, cols = np.nonzero(ok)
            if len(self._valid) >= 4:
                self._valid.pop(next(iter(self._valid)))
            self._valid[k] = (np.stack([cols, rows], 1), depth[rows, cols], (depth.shape[1], depth.shape[0]))
        return self._valid[k]

    def __len__(self) -> int:
        return len(self.frames) * self.samples_per_frame

    def _problem(self, index: int, rng: np.random.Generator) -> Problem:
        k = index // self.samples_per_frame
        pix, depth, (w, h) = self._valid_pixels(k)
        if len(pix) < MIN_INLIERS:
            raise RejectedSample(f"fewer than {MIN_INLIERS} valid depth pixels", f"frame {k} of {self.root}")
        pick = np.sort(rng.choice(len(pix), size=min(self.num_points, len(pix)), replace=False))
        uv = pix[pick].astype(np.float64)
        x_cam = backproject(uv, depth[pick].astype(np.float64), self.intrinsics)
        R = Rotation.random(random_state=rng).as_matrix()
        t = rng.normal(size=3)
        X = (x_cam - t) @ R  # world points with x_cam = R X + t
        if self.noise_px > 0:
            uv = uv + rng.normal(scale=self.noise_px, size=uv.shape)
        fx, fy, cx, cy = self.intrinsics
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        corr = Correspondences(uv, X, np.arange(len(uv)), image_bounds(w, h))
        frame = self.frames[k]
        if self.is_mat:
            scene, fid, path = self.root.stem, f"{frame:05d}", None
        else:
            scene, fid, path = self.root.name, frame[0].stem, str(frame[0])
        return Problem(corr, K, R, t, scene, f"{fid}/{index % self.samples_per_frame}", path, (w, h))
