"""BPnPNet's published preprocessed archive, so models can train and test on the paper's data.

Layout: ``<root>/<dataset>_{train,test}/preprocessed/{p2d,p3d,R_gt,t_gt,W_gt,num_points_2d,
num_points_3d}.pkl``, each a list of per-sample values or a dict keyed by the sample index
``0..N-1`` (BPnPNet writes dicts). Per sample, with ``m = num_points_2d`` and ``n = num_points_3d``
(arrays of one integer):

* ``p2d`` (M, 2), ``M >= m``: 2D points normalised by the intrinsics (so ``K = I``), one per row;
* ``p3d`` (N, 3), ``N >= n``: 3D points, one per row;
* ``R_gt`` (3, 3), a rotation, and ``t_gt`` (3,) or (3, 1), with ``x_cam = R X + t``;
* ``W_gt`` (N,) integers: ``W_gt[j]`` is the 2D index of 3D point ``j``'s partner, in ``[0, m)``;
  any other value in ``[-1, M]`` (usually ``m``) means none. For ``data61_2d3d`` it is inverted,
  (M,) with ``W_gt[i]`` the 3D partner of 2D point ``i`` (``[0, n)``, else none, in ``[-1, N]``).

Rows beyond ``m`` / ``n`` repeat earlier ones (BPnPNet pads to a fixed size) and are dropped. Every
sample is checked when the dataset is built: shapes (a transposed array is refused), finite values,
a proper rotation, index ranges without a 2D point paired twice, and a pose that fits the pairs
(median reprojection error at most ``max_reprojection``). Pickles execute code when read: load only
trusted archives.
"""

from __future__ import annotations

import numbers
import pickle
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from bpnp.data.base import CorrespondenceDataset, Problem
from bpnp.data.splits import split_items
from bpnp.data.transforms import MIN_INLIERS, Correspondences, PointControl, box_bounds

FIELDS = ("p2d", "p3d", "R_gt", "t_gt", "W_gt", "num_points_2d", "num_points_3d")
INVERTED_W = ("data61_2d3d",)
ROTATION_ATOL = 1e-3  # stored as float32 by some writers


def _as_list(obj: object, path: Path) -> list:
    """A pickled per-sample container as a list: a list / tuple / array, or a dict keyed 0..N-1.

    Raises:
        ValueError: naming ``path`` for another type, or a dict with keys other than 0..N-1 (string
            keys would sort as "0", "1", "10", ... and misalign the files).
    """
    if isinstance(obj, dict):
        bad = [k for k in obj if isinstance(k, bool) or not isinstance(k, numbers.Integral)]
        if bad:
            raise ValueError(
                f"corrupt archive file {path}: key {bad[0]!r} ({type(bad[0]).__name__}) is not a sample"
                " index (expected a list, or a dict keyed by the integers 0..N-1)"
            )
        keys = sorted(int(k) for k in obj)
        if keys != list(range(len(keys))):
            missing = sorted(set(range(len(keys))) - set(keys))[:5]
            raise ValueError(
                f"corrupt archive file {path}: dict keys are not 0..{len(keys) - 1} (missing {missing},"
                f" largest {keys[-1]}); expected one entry per sample index"
            )
        return [obj[k] for k in sorted(obj)]
    if isinstance(obj, list | tuple | np.ndarray):
        return list(obj)
    raise ValueError(
        f"corrupt archive file {path}: expected a list of per-sample arrays, got {type(obj).__name__}"
    )


def read_archive(folder: Path) -> dict[str, list]:
    """The seven per-sample lists of one ``<dataset>_<split>/preprocessed`` folder.

    Raises:
        FileNotFoundError: naming the missing folder or file.
        ValueError: naming a file that does not unpickle or is not a per-sample container, or the
            folder when lengths disagree.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"archive folder {folder} not found (expected {', '.join(FIELDS)} as .pkl)")
    data = {}
    for name in FIELDS:
        path = folder / f"{name}.pkl"
        if not path.is_file():
            raise FileNotFoundError(f"archive file {path} not found (expected a pickled list of arrays)")
        try:
            with path.open("rb") as f:
                obj = pickle.load(f, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
            raise ValueError(f"corrupt archive file {path}: {e}") from e
        data[name] = _as_list(obj, path)
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"corrupt archive in {folder}: per-file sample counts differ {lengths}")
    return data


def _fail(folder: Path, field: str, i: int, message: str) -> NoReturn:
    raise ValueError(f"corrupt archive sample {i} in {folder / f'{field}.pkl'}: {message}")


def _array(value: object) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError):  # ragged nested lists
        return np.asarray(None, dtype=object)


def _numeric(value: object) -> np.ndarray:
    a = _array(value)
    return a if a.dtype.kind in "iuf" else np.zeros((0, 0))  # strings, objects: no valid shape


def _count(data: dict[str, list], field: str, i: int, folder: Path) -> int:
    v = _numeric(data[field][i]).reshape(-1)
    if v.size != 1 or not np.isfinite(v[0]) or v[0] < 0 or v[0] != int(v[0]):
        _fail(folder, field, i, f"{field} is {data[field][i]!r}, expected one non-negative integer")
    return int(v[0])


def _points(
    data: dict[str, list], field: str, dim: int, k: int, i: int, folder: Path
) -> tuple[np.ndarray, int]:
    """The first ``k`` rows (k, dim) of a points field and its stored row count."""
    a = _numeric(data[field][i])
    if a.ndim != 2 or a.shape[1] != dim or a.shape[0] < k:
        raw = _array(data[field][i])
        hint = " (transposed?)" if raw.ndim == 2 and raw.shape[0] == dim and raw.shape[1] != dim else ""
        _fail(
            folder, field, i,
            f"{field} has shape {raw.shape} ({raw.dtype}), expected (rows, {dim}) numbers with rows >="
            f" num_points_{dim}d = {k}, one point per row{hint}",
        )  # fmt: skip
    if not np.isfinite(a[:k]).all():
        _fail(folder, field, i, f"{field} has non-finite values in its first {k} rows")
    return a[:k].astype(np.float64), a.shape[0]


def _indices(data: dict[str, list], i: int, folder: Path, need: int, top: int) -> np.ndarray:
    """The first ``need`` entries of ``W_gt``, integers in ``[-1, top]``."""
    raw = _array(data["W_gt"][i])
    w = raw.reshape(-1) if raw.ndim == 2 and 1 in raw.shape else raw
    if w.ndim != 1 or len(w) < need:
        _fail(
            folder,
            "W_gt",
            i,
            f"W_gt has shape {raw.shape}, expected ({need},) or longer (one index per point)",
        )
    w = w[:need]
    integral = w.dtype.kind in "iu" or (
        w.dtype.kind == "f" and np.isfinite(w).all() and (w == np.round(w)).all()
    )
    if not integral:
        _fail(folder, "W_gt", i, f"W_gt holds non-integer values (dtype {w.dtype}), expected point indices")
    w = w.astype(np.int64)
    if len(w) and (w.min() < -1 or w.max() > top):
        _fail(folder, "W_gt", i, f"W_gt values span [{w.min()}, {w.max()}], expected indices in [-1, {top}]")
    return w


def _pose(data: dict[str, list], i: int, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """``R_gt`` (3, 3), a rotation, and ``t_gt`` (3,) of sample ``i``, finite."""
    R = _numeric(data["R_gt"][i])
    if R.shape != (3, 3) or not np.isfinite(R).all():
        _fail(
            folder,
            "R_gt",
            i,
            f"R_gt is {_array(data['R_gt'][i]).shape}, expected a finite (3, 3) rotation",
        )
    R = R.astype(np.float64)
    orth, det = np.abs(R @ R.T - np.eye(3)).max(), np.linalg.det(R)
    if orth > ROTATION_ATOL or abs(det - 1.0) > ROTATION_ATOL:
        _fail(
            folder, "R_gt", i,
            f"R_gt is not a rotation: max |R R^T - I| = {orth:.3g}, det = {det:.4g} (expected orthonormal"
            f" with det +1 within {ROTATION_ATOL})",
        )  # fmt: skip
    t = _numeric(data["t_gt"][i])
    if t.shape not in ((3,), (3, 1), (1, 3)) or not np.isfinite(t).all():
        _fail(folder, "t_gt", i, f"t_gt is {_array(data['t_gt'][i]).shape}, expected finite (3,) or (3, 1)")
    return R, t.reshape(3).astype(np.float64)


def _match(
    data: dict[str, list], i: int, folder: Path, m: int, n: int, rows2: int, rows3: int, w_gt_per_2d: bool
) -> np.ndarray:
    """``match`` (m,): the 3D partner of each 2D point (-1 for none), from ``W_gt`` indexed by 3D point
    (or by 2D point with ``w_gt_per_2d``), each point in one pair at most."""
    if w_gt_per_2d:
        w = _indices(data, i, folder, m, rows3)
        match = np.where(w < n, w, -1)
    else:
        w = _indices(data, i, folder, n, rows2)
        match = np.full(m, -1, dtype=np.int64)
        has = (w >= 0) & (w < m)
        match[w[has]] = np.flatnonzero(has)
    partners = w[(w >= 0) & (w < (n if w_gt_per_2d else m))]
    if len(np.unique(partners)) != len(partners):
        twice = int(np.flatnonzero(np.bincount(partners) > 1)[0])
        side = "3D" if w_gt_per_2d else "2D"
        _fail(
            folder,
            "W_gt",
            i,
            f"W_gt pairs {side} point {twice} twice, expected each point in one pair at most",
        )
    return match


def _check_fit(
    p2: np.ndarray, p3: np.ndarray, match: np.ndarray, R: np.ndarray, t: np.ndarray, i: int, folder: Path,
    max_reprojection: float,
) -> None:  # fmt: skip
    """The pose fits the pairs: their median reprojection error is at most ``max_reprojection``."""
    pairs = match >= 0
    if not pairs.any():
        return
    xc = p3[match[pairs]] @ R.T + t
    z = xc[:, 2]
    err = np.where(
        z > 0, np.linalg.norm(xc[:, :2] / np.where(z > 0, z, 1.0)[:, None] - p2[pairs], axis=1), np.inf
    )
    median = float(np.median(err))
    if not median <= max_reprojection:
        _fail(
            folder, "R_gt", i,
            f"the pose (R_gt, t_gt) does not fit the pairs: median reprojection error {median:.3g}"
            f" (normalised units), expected <= max_reprojection = {max_reprojection} (R_gt transposed,"
            " or p2d / p3d rows out of order?)",
        )  # fmt: skip


def sample_arrays(
    data: dict[str, list], i: int, folder: Path, w_gt_per_2d: bool, max_reprojection: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``points2d (m, 2)``, ``points3d (n, 3)``, ``match (m,)``, ``R (3, 3)`` and ``t (3,)`` of
    archive sample ``i``, after checking it (see the module docstring).

    Raises:
        ValueError: naming the file of the faulty field, the sample index and what was expected.
    """
    m, n = _count(data, "num_points_2d", i, folder), _count(data, "num_points_3d", i, folder)
    p2, rows2 = _points(data, "p2d", 2, m, i, folder)
    p3, rows3 = _points(data, "p3d", 3, n, i, folder)
    R, t = _pose(data, i, folder)
    match = _match(data, i, folder, m, n, rows2, rows3, w_gt_per_2d)
    if max_reprojection is not None:
        _check_fit(p2, p3, match, R, t, i, folder, max_reprojection)
    return p2, p3, match, R, t


class BPnPNetArchiveDataset(CorrespondenceDataset):
    """Samples of BPnPNet's preprocessed archive.

    Args:
        root: folder holding ``<dataset>_train`` and ``<dataset>_test``.
        dataset: ``modelnet40``, ``nyurgbd``, ``megadepth``, ``data61_2d3d``, ...
        split: ``"train"`` / ``"val"`` (hold-out of the train folder) / ``"test"``.
        val_fraction: share of the train folder held out as val.
        w_gt_per_2d: ``W_gt`` indexed by 2D point instead of 3D point (None: only for data61_2d3d).
        max_reprojection: largest median reprojection error (normalised image units) of a sample's
            pairs under its pose; None skips the check.
        control: outlier rates and set-size caps (:class:`PointControl`); 2D outliers are drawn in
            the 2D points' bounding box (there is no image).
        seed: seed of the val hold-out and of the point control.

    Raises:
        FileNotFoundError: naming a missing folder or file.
        ValueError: naming the file and sample index of a malformed sample (every sample of the
            folder is checked).
    """

    split_streams = False  # disjoint items per split

    def __init__(
        self,
        root: str | Path,
        dataset: str = "modelnet40",
        split: str = "train",
        val_fraction: float = 0.1,
        w_gt_per_2d: bool | None = None,
        max_reprojection: float | None = 0.05,
        control: PointControl | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(control or PointControl(), split=split, seed=seed, dtype=dtype)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"archive root {self.root} not found (expected {dataset}_{{train,test}}/)"
            )
        self.folder = self.root / f"{dataset}_{'test' if split == 'test' else 'train'}" / "preprocessed"
        self.data = read_archive(self.folder)
        self.dataset = dataset
        self.w_gt_per_2d = dataset in INVERTED_W if w_gt_per_2d is None else w_gt_per_2d
        self.max_reprojection = max_reprojection
        n = len(self.data["p2d"])
        # Every sample is checked, so a damaged one is reported whichever split is built.
        pairs = [int((self._arrays(i)[2] >= 0).sum()) for i in range(n)]
        items = np.arange(n) if split == "test" else split_items(n, split, seed, val_fraction, 0.0)
        # Samples with too few pairs cannot form a problem: excluded and counted.
        ok = [int(i) for i in items if pairs[int(i)] >= MIN_INLIERS]
        self.rejected = {f"fewer than {MIN_INLIERS} inliers": len(items) - len(ok)}
        self.items = ok

    def _arrays(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return sample_arrays(self.data, i, self.folder, self.w_gt_per_2d, self.max_reprojection)

    def __len__(self) -> int:
        return len(self.items)

    def _problem(self, index: int, rng: np.random.Generator) -> Problem:
        i = self.items[index]
        p2, p3, match, R, t = self._arrays(i)
        corr = Correspondences(p2, p3, match, box_bounds(p2))
        return Problem(corr, np.eye(3), R, t, self.dataset, f"{self.split}/{i:06d}")
