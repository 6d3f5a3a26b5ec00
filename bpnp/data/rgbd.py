"""RGB-D frames (NYU-style): 3D points back-projected from a depth map, 2D points the same pixels.

Two layouts are read:

* a folder of colour / depth PNG pairs (TUM RGB-D, Redwood): either subfolders ``rgb|color|colour|
  image`` and ``depth`` paired by file stem (or, for TUM's timestamp names, by nearest timestamp),
  or files in one folder whose names differ only by ``color|rgb`` vs ``depth``
  (``TUM_color.png`` / ``TUM_depth.png``). Intrinsics come from the ``intrinsics`` argument or an
  ``intrinsics.json`` (Open3D's ``PinholeCameraIntrinsic`` format) / ``intrinsics.txt``
  (``fx fy cx cy`` or a 3x3 matrix) in the folder; ``depth_m = png_value / depth_scale``.
* NYU Depth v2's labelled ``.mat`` file (HDF5): ``depths`` (N, W, H) in metres, MATLAB's transposed
  layout, with the toolbox's colour intrinsics by default; ``scenes`` (a cell array of N names such
  as ``kitchen_0028a``) gives each frame's scene.

Splits are by scene by default: frames of one room never land in two splits. A scene is the ``.mat``
file's ``scenes`` entry, or for folders the NYU-style prefix of the colour file's name
(``<room type>_<4 digits>[letter]`` then ``_``, ``-`` or ``.``: ``kitchen_0028a_00012_color.png``),
else the folder itself. The letter that tells NYU's recording sessions of one room apart is ignored
when splitting (``kitchen_0028a`` and ``kitchen_0028b`` go together). ``split_by="frame"`` partitions
the frames instead.

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
from bpnp.data.splits import split_groups, split_items
from bpnp.data.transforms import MIN_INLIERS, Correspondences, PointControl, image_bounds

# NYU Depth v2 toolbox (camera_params.m): colour camera of the labelled set.
NYU_INTRINSICS = (518.857901, 519.469611, 325.582449, 253.736166)
COLOR_DIRS = ("rgb", "color", "colour", "image", "images")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".ppm")
FOLDER_LAYOUT = "rgb|color/ + depth/ subfolders, or *color*.png / *depth*.png pairs"
SPLIT_BY = ("scene", "frame")
NYU_SCENE = re.compile(r"^([a-z]+(?:_[a-z]+)*_\d{4})([a-z]?)[_.-]", re.IGNORECASE)


def scene_of_name(name: str) -> str | None:
    """NYU scene of a frame's file name (``kitchen_0028a_00012_color.png`` -> ``kitchen_0028a``), or
    None when the name does not start with one."""
    m = NYU_SCENE.match(name)
    return m.group(1) + m.group(2) if m else None


def room_of(scene: str) -> str:
    """The room of an NYU scene name: without the letter of its recording session
    (``kitchen_0028a`` -> ``kitchen_0028``); other names unchanged."""
    return re.sub(r"(_\d+)[a-z]$", r"\1", scene, flags=re.IGNORECASE)


def read_mat_scenes(f: h5py.File, path: Path, n: int) -> list[str] | None:
    """Scene name of each of the ``n`` frames of an NYU ``.mat`` file (its ``scenes`` cell array:
    references to uint16 character arrays), or None when the file has no ``scenes``.

    Raises:
        ValueError: naming the file when ``scenes`` does not hold one name per frame.
    """
    if "scenes" not in f:
        return None
    refs = np.asarray(f["scenes"]).reshape(-1)
    if len(refs) != n:
        raise ValueError(
            f"corrupt NYU file {path}: 'scenes' has {len(refs)} entries, expected {n} (one per frame)"
        )
    names = []
    for k, ref in enumerate(refs):
        try:
            value = np.asarray(f[ref]).reshape(-1) if isinstance(ref, h5py.Reference) else ref
            if isinstance(value, bytes):
                value = value.decode()
            names.append(value if isinstance(value, str) else "".join(map(chr, value)))
        except (TypeError, ValueError, KeyError, OSError) as e:
            raise ValueError(
                f"corrupt NYU file {path}: 'scenes' entry {k} is not a name"
                " (expected a reference to a character array)"
            ) from e
    return names


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
        split: ``"all"`` or ``"train"`` / ``"val"`` / ``"test"`` (partitioned by ``seed``).
        split_by: ``"scene"`` (default): whole rooms per split, which needs several (see the module
            docstring); ``"frame"``: the frames partitioned, rooms shared between splits.
        num_points: pixels sampled among those with valid depth (the 2D and 3D sets before outliers).
        samples_per_frame: problems per frame, each with its own pixels and world frame.
        intrinsics: ``(fx, fy, cx, cy)``; None reads the folder's intrinsics file, or uses NYU's.
        depth_scale: PNG value per metre (TUM 5000, Redwood 1000); ignored for ``.mat`` (metres).
        max_depth: depths beyond this (metres) count as invalid.
        noise_px: Gaussian pixel noise on the 2D points.
        depth_key: ``"depths"`` (in-painted) or ``"rawDepths"`` for the ``.mat`` file.
        control: outlier rates and set-size caps (:class:`PointControl`; None: none).
        seed: base seed.
    """

    splits = ("all", "train", "val", "test")
    split_streams = False  # disjoint items per split

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        split_by: str = "scene",
        num_points: int = 1000,
        samples_per_frame: int = 1,
        intrinsics: tuple[float, float, float, float] | None = None,
        depth_scale: float = 5000.0,
        max_depth: float = 10.0,
        noise_px: float = 0.0,
        depth_key: str = "depths",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        control: PointControl | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(control or PointControl(), split=split, seed=seed, dtype=dtype)
        self.root = Path(root)
        self.is_mat = self.root.suffix.lower() in (".mat", ".h5", ".hdf5")
        self.depth_key = depth_key
        if split_by not in SPLIT_BY:
            raise ValueError(f"split_by {split_by!r}: expected one of {SPLIT_BY}")
        frames, scenes, self.intrinsics = self._frames(intrinsics, split, split_by)
        chosen = self._split(scenes, split, split_by, seed, val_fraction, test_fraction)
        self.frames = [frames[i] for i in chosen]
        self.frame_scenes = [scenes[i] for i in chosen]
        self.num_points = num_points
        self.samples_per_frame = samples_per_frame
        self.depth_scale = depth_scale
        self.max_depth = max_depth
        self.noise_px = noise_px
        self._h5: tuple[int, h5py.File] | None = None
        self._valid: dict[int, tuple[np.ndarray, np.ndarray, tuple[int, int]]] = {}

    def _frames(
        self, intrinsics: tuple[float, float, float, float] | None, split: str, split_by: str
    ) -> tuple[list, list[str], tuple[float, float, float, float]]:
        """Every frame of the source (an index into the ``.mat`` file, or a colour / depth pair), its
        scene, and the intrinsics (given, the folder's, or NYU's)."""
        if not self.is_mat:
            frames = pair_folder(self.root)
            intr = tuple(intrinsics) if intrinsics else read_intrinsics(self.root)
            return frames, [scene_of_name(c.name) or self.root.name for c, _ in frames], intr
        n, mat_scenes = self._open_mat_layout()
        intr = tuple(intrinsics) if intrinsics else NYU_INTRINSICS
        if mat_scenes is None and split_by == "scene" and split != "all":
            raise ValueError(
                f"no 'scenes' in NYU file {self.root}: a split by scene needs each frame's scene;"
                " pass split_by='frame' to split the frames instead"
            )
        return list(range(n)), mat_scenes or [self.root.stem] * n, intr

    def _split(
        self,
        scenes: list[str],
        split: str,
        split_by: str,
        seed: int,
        val_fraction: float,
        test_fraction: float,
    ) -> list[int]:
        """Indices of the frames in ``split``: frames partitioned, or whole rooms (``split_by="scene"``)."""
        if split_by == "frame":
            return split_items(len(scenes), split, seed, val_fraction, test_fraction).tolist()
        rooms = [room_of(name) for name in scenes]
        keep = set(
            split_groups(
                rooms, split, seed, val_fraction, test_fraction, where=f"RGB-D source {self.root}",
                instead="split_by='frame' (frames split inside each scene)",
            )
        )  # fmt: skip
        return [i for i, room in enumerate(rooms) if room in keep]

    def __getstate__(self) -> dict:
        # An open HDF5 handle cannot be pickled (spawned workers); each process reopens its own.
        return {**self.__dict__, "_h5": None}

    def _open_mat_layout(self) -> tuple[int, list[str] | None]:
        """Number of frames of the ``.mat`` file, after checking its layout, and their scenes."""
        if not self.root.is_file():
            raise FileNotFoundError(f"NYU Depth v2 file {self.root} not found (expected the labelled .mat)")
        try:
            f = h5py.File(self.root, "r")
        except OSError as e:
            raise ValueError(
                f"corrupt NYU file {self.root}: expected HDF5 with '{self.depth_key}' (N, W, H) ({e})"
            ) from e
        with f:
            d = f.get(self.depth_key)
            if not isinstance(d, h5py.Dataset) or d.ndim != 3:
                found = "none" if d is None else f"shape {getattr(d, 'shape', None)}"
                raise ValueError(
                    f"corrupt NYU file {self.root}: expected HDF5 with '{self.depth_key}' (N, W, H),"
                    f" found {found}"
                )
            n = int(d.shape[0])
            return n, read_mat_scenes(f, self.root, n)

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
        scene = self.frame_scenes[k]
        if self.is_mat:
            fid, path = f"{frame:05d}", None
        else:
            fid, path = frame[0].stem, str(frame[0])
        return Problem(corr, K, R, t, scene, f"{fid}/{index % self.samples_per_frame}", path, (w, h))
