"""COLMAP sparse models (MegaDepth-style scenes): one problem per registered image.

The query's keypoints are the 2D set (those with a triangulated point are inliers, the rest natural
2D outliers); the 3D set holds the points observed by the query and by its most co-visible images
(by number of shared points), so points the query does not see are natural 3D outliers (GoMatch's
protocol). Keypoints are undistorted with OpenCV into the pixels of the camera's pinhole ``K``.
"""

from __future__ import annotations

import difflib
import logging
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import scipy.sparse as sp
import torch
from torch.utils.data import ConcatDataset, Dataset

from bpnp.data.base import CorrespondenceDataset, Problem
from bpnp.data.sample import Sample
from bpnp.data.splits import split_groups, split_items
from bpnp.data.transforms import MIN_INLIERS, Correspondences, PointControl, image_bounds

MODEL_FILES = "cameras, images and points3D (.bin or .txt)"
SPLIT_BY = ("scene", "image")
log = logging.getLogger(__name__)


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


def model_file(model_dir: Path, stem: str) -> Path:
    """The file pycolmap reads for ``stem``: binary when all three ``.bin`` files exist, else text."""
    binary = all((model_dir / f"{k}.bin").is_file() for k in ("cameras", "images", "points3D"))
    return model_dir / f"{stem}{'.bin' if binary else '.txt'}"


def check_cameras_bin(path: Path) -> None:
    """Check that ``cameras.bin`` holds exactly the parameters its camera models need.

    pycolmap reads a truncated ``cameras.bin`` without complaint (the missing parameters repeat the
    last one read), so its size is checked here: a uint64 count, then per camera int32 id, int32 model
    id, uint64 width and height and one float64 per parameter of the model.

    Raises:
        ValueError: naming the file, the camera id and the size expected.
    """
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"corrupt {path}: {len(data)} bytes, expected at least 8 (the camera count)")
    (count,) = struct.unpack_from("<Q", data, 0)
    end = 8
    for k in range(count):
        if end + 24 > len(data):
            raise ValueError(
                f"truncated {path}: {len(data)} bytes, expected at least {end + 24} for the header of camera"
                f" {k + 1} of {count}"
            )
        camera_id, model_id = struct.unpack_from("<ii", data, end)
        try:
            model = pycolmap.Camera.create_from_model_id(0, pycolmap.CameraModelId(model_id), 1.0, 1, 1)
        except (ValueError, TypeError) as e:
            raise ValueError(f"corrupt {path}: camera {camera_id} has unknown model id {model_id}") from e
        end += 24 + 8 * len(model.params)
        if end > len(data):
            raise ValueError(
                f"truncated {path}: camera {camera_id} ({model.model.name}, {len(model.params)} parameters)"
                f" needs {end} bytes, the file has {len(data)}"
            )
    if end != len(data):
        raise ValueError(f"corrupt {path}: {len(data)} bytes, expected {end} for its {count} camera(s)")


def check_cameras(rec: pycolmap.Reconstruction, path: Path) -> None:
    """Check every camera: finite parameters, a positive focal length, the principal point inside
    the image (a damaged camera otherwise gives silently wrong or empty problems).

    Raises:
        ValueError: naming ``path`` (the cameras file), the camera id and what was expected.
    """
    for camera_id, cam in sorted(rec.cameras.items()):
        where = f"camera {camera_id} ({cam.model.name}) in {path}"
        params = np.asarray(cam.params, dtype=np.float64)
        w, h = int(cam.width), int(cam.height)
        if not np.isfinite(params).all():
            raise ValueError(f"invalid {where}: parameters {params.tolist()}, expected all finite")
        if w <= 0 or h <= 0:
            raise ValueError(f"invalid {where}: image size {w}x{h}, expected positive")
        try:
            K, _ = camera_intrinsics(cam.model.name, params)
        except ValueError as e:
            raise ValueError(f"{e} ({where})") from e
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise ValueError(f"invalid {where}: focal length (fx, fy) = ({K[0, 0]}, {K[1, 1]}), expected > 0")
        if not (0 <= K[0, 2] <= w and 0 <= K[1, 2] <= h):
            raise ValueError(
                f"invalid {where}: principal point ({K[0, 2]}, {K[1, 2]}), expected inside the {w}x{h} image"
            )


def read_model(model_dir: Path) -> pycolmap.Reconstruction:
    """The reconstruction in ``model_dir``, with errors naming the folder and the files expected.

    Raises:
        FileNotFoundError: naming the folder or file missing.
        ValueError: naming the file for a malformed model or an invalid camera.
    """
    if not model_dir.is_dir():
        raise FileNotFoundError(f"COLMAP model folder {model_dir} not found (expected {MODEL_FILES})")
    for stem in ("cameras", "images", "points3D"):
        if not any((model_dir / f"{stem}{ext}").is_file() for ext in (".bin", ".txt")):
            raise FileNotFoundError(f"{model_dir / stem}.bin (or .txt) not found (expected {MODEL_FILES})")
    cameras = model_file(model_dir, "cameras")
    if cameras.suffix == ".bin":
        check_cameras_bin(cameras)
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as e:  # pycolmap raises bare RuntimeErrors on malformed files
        raise ValueError(f"corrupt COLMAP model in {model_dir}: {e}") from e
    check_cameras(rec, cameras)
    return rec


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


def top_covisible(
    kp_point: Sequence[np.ndarray], num_points: int, k: int, block_entries: int = 1 << 22
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` images sharing most 3D points with each image, from the point tracks.

    No (I, I) matrix is formed: the shared-point counts (image-point incidence times its transpose)
    are computed as sparse rows, ``block_entries // I`` images at a time, and only the top ``k`` of
    each row are kept, so a scene of 10,000 images needs memory for (I, k) arrays and one block.

    Args:
        kp_point: per image, the 3D point (index in ``[0, num_points)``, or -1: none) of each
            keypoint, (k_i,); a point observed twice by one image counts once.
        num_points: number of 3D points P.
        k: co-visible images kept per image.
        block_entries: bound on the entries of one block of sparse rows.

    Returns:
        ``index`` (I, k) int64: co-visible images by decreasing count, ties by lower index, -1 where
        fewer than ``k`` images share a point; ``count`` (I, k) int64: their shared-point counts (0 in
        the padding).
    """
    n = len(kp_point)
    index, count = np.full((n, k), -1, dtype=np.int64), np.zeros((n, k), dtype=np.int64)
    if n == 0 or k == 0:
        return index, count
    rows = np.concatenate([np.full(int((p >= 0).sum()), i, dtype=np.int64) for i, p in enumerate(kp_point)])
    cols = np.concatenate([np.asarray(p, dtype=np.int64)[p >= 0] for p in kp_point])
    A = sp.csr_matrix((np.ones(len(rows), dtype=np.int64), (rows, cols)), shape=(n, num_points))
    A.data[:] = 1  # duplicates were summed: a point seen twice by one image counts once
    At = A.T.tocsc()
    step = max(1, block_entries // n)
    for start in range(0, n, step):
        C = (A[start : start + step] @ At).tocsr()
        for r in range(C.shape[0]):
            i = start + r
            j, c = C.indices[C.indptr[r] : C.indptr[r + 1]], C.data[C.indptr[r] : C.indptr[r + 1]]
            keep = (j != i) & (c > 0)
            j, c = j[keep], c[keep]
            top = np.lexsort((j, -c))[:k]
            index[i, : len(top)], count[i, : len(top)] = j[top], c[top]
    return index, count


def _check_split_by(split_by: str) -> None:
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by {split_by!r}: expected one of {SPLIT_BY}")


def listed_scenes(
    scenes: Mapping[str, Sequence[str]], split: str, available: Sequence[str], root: Path
) -> list[str]:
    """The scenes of ``split`` from explicit lists ``{"train": [...], "val": [...], "test": [...]}``
    (``"all"``: every listed one), checked against the scenes under ``root``.

    Raises:
        ValueError: for an unknown split key, a scene listed in two splits, or a scene not under root.
    """
    unknown = set(scenes) - {"train", "val", "test"}
    if unknown:
        raise ValueError(
            f"data option 'scenes': unknown split(s) {sorted(unknown)}; expected train, val, test"
        )
    seen: dict[str, str] = {}
    for part, names in scenes.items():
        for name in names:
            if name in seen:
                raise ValueError(
                    f"data option 'scenes': scene {name!r} is in both {seen[name]!r} and {part!r}"
                )
            if name not in available:
                close = difflib.get_close_matches(name, available, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"data option 'scenes': no scene {name!r} under COLMAP root {root}{hint}")
            seen[name] = part
    if split == "all":
        return sorted(seen)
    return sorted(scenes.get(split, []))


def split_models(
    root: str | Path,
    split: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    scenes: Mapping[str, Sequence[str]] | None = None,
) -> list[Path]:
    """Model folders under ``root`` of one split by scene, sorted.

    A scene is a first-level folder of ``root`` (``<scene>/sparse/manhattan/<k>`` of MegaDepth: every
    model of a scene goes to the same split); the scenes are those listed for the split in ``scenes``
    when given, else the sorted scenes partitioned with ``seed`` as in
    :func:`~bpnp.data.splits.split_groups`.

    Raises:
        FileNotFoundError: naming ``root`` when it holds no model.
        ValueError: when ``root`` holds too few scenes for the split (one model included), or for a
            bad scene list (see :func:`listed_scenes`).
    """
    root = Path(root)
    models = find_models(root)
    scene = {d: d.relative_to(root).parts[0] if d != root else root.name for d in models}
    if scenes is not None:
        chosen = set(listed_scenes(scenes, split, sorted(set(scene.values())), root))
        return [d for d in models if scene[d] in chosen]
    chosen = set(
        split_groups(
            list(scene.values()), split, seed, val_fraction, test_fraction,
            where=f"COLMAP root {root}", instead="split_by='image' (images split inside each model)",
        )
    )  # fmt: skip
    return [d for d in models if scene[d] in chosen]


QUERY_PROTOCOLS = ("covisible", "retrieval")


def colmap_dataset(
    root: str | Path,
    split: str = "all",
    split_by: str = "scene",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    scenes: Mapping[str, Sequence[str]] | None = None,
    **options,
) -> Dataset[Sample]:
    """The problems of one split of every model under ``root`` (one :class:`ColmapDataset` per model,
    concatenated when there are several; samples are named by the model's path under ``root``).

    Args:
        root: a model folder, or a folder of them (see :func:`find_models`).
        split: ``"all"``, ``"train"``, ``"val"`` or ``"test"``.
        split_by: ``"scene"``: whole scenes per split (:func:`split_models`, needs several scenes);
            ``"image"``: the images of every model partitioned, scenes shared between splits.
        scenes: explicit scene lists per split, ``{"train": [...], "val": [...], "test": [...]}``
            (first-level folder names of ``root``; ``split_by="scene"`` only), instead of a seeded draw.
        options: further keyword arguments of :class:`ColmapDataset`.

    Raises:
        ValueError: for ``split_by="scene"`` with too few scenes, naming ``root``; for a bad scene list.
    """
    _check_split_by(split_by)
    if scenes is not None and split_by != "scene":
        raise ValueError("data option 'scenes' lists whole scenes per split: it needs split_by='scene'")
    root = Path(root)
    fractions = {"val_fraction": val_fraction, "test_fraction": test_fraction}
    if split_by == "scene":
        models, split_by_model = split_models(root, split, seed, **fractions, scenes=scenes), "all"
        if not models:
            raise ValueError(f"data option 'scenes' lists no scene for split {split!r}")
    else:
        models, split_by_model = find_models(root), split
    parts = [
        ColmapDataset(
            d, split=split_by_model, split_by="image", seed=seed,
            scene=str(d.relative_to(root)) if d != root else None, **fractions, **options,
        )
        for d in models
    ]  # fmt: skip
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


class ColmapDataset(CorrespondenceDataset):
    """One blind-PnP problem per registered image of a COLMAP sparse model.

    Args:
        model_dir: folder holding ``cameras``, ``images`` and ``points3D`` (binary or text).
        split: ``"all"``, or ``"train"`` / ``"val"`` / ``"test"``: with ``split_by="image"``, a
            partition of the images by ``seed`` with the given fractions.
        split_by: ``"scene"`` (default) refuses a train / val / test split of one model (its images
            would share the scene across splits; split a folder of models with
            :func:`colmap_dataset`); ``"image"`` partitions the model's images.
        num_covisible: co-visible images whose points form the 3D set (with the query's own).
        query_protocol: ``"covisible"`` (default): the 3D set is the query's own points plus those of
            its ``num_covisible`` most co-visible images, so every keypoint with a 3D point has its
            partner; ``"retrieval"`` (GoMatch's): only the points of the ``num_covisible`` retrieved
            images (most co-visible first, a stand-in for image retrieval), so keypoints whose point
            none of them sees become outliers too, and queries left with fewer than 4 inliers are
            excluded (counted in ``rejected``).
        image_dir: folder of the photos, to fill ``image_path`` (else the image name is given).
        scene: scene name of the samples (None: the model folder's name).
        control: outlier rates and set-size caps (:class:`PointControl`; None keeps the natural
            outliers).
        seed: seed of the split and of the point control.
    """

    splits = ("all", "train", "val", "test")
    split_streams = False  # disjoint items per split

    def __init__(
        self,
        model_dir: str | Path,
        split: str = "all",
        split_by: str = "scene",
        num_covisible: int = 5,
        query_protocol: str = "covisible",
        image_dir: str | None = None,
        scene: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        control: PointControl | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        _check_split_by(split_by)
        if query_protocol not in QUERY_PROTOCOLS:
            raise ValueError(f"query_protocol {query_protocol!r}: expected one of {QUERY_PROTOCOLS}")
        if split_by == "scene" and split != "all":
            raise ValueError(
                f"split {split!r} by scene of the single COLMAP model {model_dir}: a scene split needs"
                " several scenes (a root folder of models); pass split_by='image' to split its images"
            )
        super().__init__(control or PointControl(), split=split, seed=seed, dtype=dtype)
        self.model_dir = Path(model_dir)
        self.scene = scene or self.model_dir.name
        self.image_dir = image_dir
        self.num_covisible = num_covisible
        self.query_protocol = query_protocol
        self._load(read_model(self.model_dir))
        # Images with too few triangulated keypoints cannot form a problem: excluded and counted.
        ok = [i for i in range(len(self.names)) if (self.kp_point[i] >= 0).sum() >= MIN_INLIERS]
        self.rejected = {f"fewer than {MIN_INLIERS} inliers": len(self.names) - len(ok)}
        if query_protocol == "retrieval":
            kept = [i for i in ok if (self._match(i)[1] >= 0).sum() >= MIN_INLIERS]
            self.rejected[f"fewer than {MIN_INLIERS} inliers among the retrieved images' points"] = len(
                ok
            ) - len(kept)
            ok = kept
        chosen = split_items(len(ok), split, seed, val_fraction, test_fraction)
        self.items = [ok[i] for i in chosen]

    def _load(self, rec: pycolmap.Reconstruction) -> None:
        """Copy everything needed into numpy arrays (picklable for workers, no model kept)."""
        point_ids = np.array(sorted(rec.points3D.keys()), dtype=np.int64)
        xyz = np.array([rec.points3D[int(pid)].xyz for pid in point_ids], dtype=np.float64).reshape(-1, 3)
        finite = np.isfinite(xyz).all(1)
        if not finite.all():
            # One damaged point would otherwise reject every problem whose 3D set holds it; its
            # keypoints become untriangulated ones (natural 2D outliers).
            bad = point_ids[~finite]
            log.warning(
                "%s: dropped %d 3D point(s) with non-finite coordinates (id %s)",
                model_file(self.model_dir, "points3D"), len(bad), ", ".join(map(str, bad[:10])),
            )  # fmt: skip
            point_ids, xyz = point_ids[finite], xyz[finite]
        row = {int(pid): r for r, pid in enumerate(point_ids)}
        self.xyz = xyz
        self.names, self.K, self.R, self.t, self.size = [], [], [], [], []
        self.kp_uv, self.kp_point = [], []
        intr = {cid: camera_intrinsics(c.model.name, c.params) for cid, c in rec.cameras.items()}
        for image_id in sorted(rec.reg_image_ids()):
            im = rec.images[image_id]
            cam = rec.cameras[im.camera_id]
            K, dist = intr[im.camera_id]
            kps = im.points2D
            uv = np.array([p.xy for p in kps], dtype=np.float64).reshape(-1, 2)
            pts = np.array(
                [row.get(p.point3D_id, -1) if p.has_point3D() else -1 for p in kps], dtype=np.int64
            )
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
        self.covis_index, self.covis_count = top_covisible(self.kp_point, len(self.xyz), self.num_covisible)

    def covisible(self, i: int) -> np.ndarray:
        """Indices of the (up to) ``num_covisible`` images sharing most points with image ``i``, by
        decreasing count (ties: lower index first); images sharing none are left out."""
        return self.covis_index[i][self.covis_index[i] >= 0]

    def __len__(self) -> int:
        return len(self.items)

    def _match(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The 3D set of query ``i`` (rows of ``xyz``) and each keypoint's partner in it (or -1)."""
        own = self.kp_point[i]
        seen = [self.kp_point[j][self.kp_point[j] >= 0] for j in self.covisible(i)]
        if self.query_protocol == "covisible":
            seen.append(own[own >= 0])
        in_set = np.zeros(len(self.xyz), dtype=bool)
        if seen:
            in_set[np.concatenate(seen)] = True
        ids = np.flatnonzero(in_set)
        match = np.full(len(own), -1, dtype=np.int64)
        partner = (own >= 0) & in_set[np.maximum(own, 0)]
        match[partner] = np.searchsorted(ids, own[partner])
        return ids, match

    def _problem(self, index: int, rng: np.random.Generator) -> Problem:
        i = self.items[index]
        ids, match = self._match(i)  # ids: rows of self.xyz forming the 3D set
        w, h = self.size[i]
        corr = Correspondences(self.kp_uv[i], self.xyz[ids], match, image_bounds(w, h))
        name = self.names[i]
        path = str(Path(self.image_dir) / name) if self.image_dir else name
        # The reference view: the most co-visible database image (GoMatch's top-1 retrieval).
        covis = self.covisible(i)
        ref = (self.R[covis[0]], self.t[covis[0]]) if len(covis) else (None, None)
        return Problem(corr, self.K[i], self.R[i], self.t[i], self.scene, name, path, (w, h), *ref)
