"""BPnPNet's published preprocessed archive, so models can train and test on the paper's data.

Layout: ``<root>/<dataset>_{train,test}/preprocessed/{p2d,p3d,R_gt,t_gt,W_gt,num_points_2d,
num_points_3d}.pkl``, each a list (or int-keyed dict) of per-sample arrays. Points are already
normalised by the intrinsics, so ``K = I``. ``W_gt[j]`` is the 2D index of 3D point ``j``'s partner
(any value outside ``[0, m)``, usually ``m``, meaning none); for ``data61_2d3d`` it is inverted
(``W_gt[i]`` is the 3D partner of 2D point ``i``). Arrays may be padded by repetition beyond
``num_points_*``; the padding is dropped. Pickles execute code when read: load only trusted archives.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from bpnp.data.base import CorrespondenceDataset, Problem
from bpnp.data.splits import split_items
from bpnp.data.transforms import MIN_INLIERS, Correspondences, PointControl, box_bounds

FIELDS = ("p2d", "p3d", "R_gt", "t_gt", "W_gt", "num_points_2d", "num_points_3d")
INVERTED_W = ("data61_2d3d",)


def _as_list(obj: object, path: Path) -> list:
    """A pickled per-sample container as a list (BPnPNet wrote lists, or dicts keyed 0..N-1)."""
    if isinstance(obj, dict):
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
        ValueError: naming a file that does not unpickle, or the folder when lengths disagree.
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
                data[name] = _as_list(pickle.load(f, encoding="latin1"), path)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
            raise ValueError(f"corrupt archive file {path}: {e}") from e
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"corrupt archive in {folder}: per-file sample counts differ {lengths}")
    return data


def _count(x: object) -> int:
    return int(np.asarray(x).reshape(-1)[0])


class BPnPNetArchiveDataset(CorrespondenceDataset):
    """Samples of BPnPNet's preprocessed archive.

    Args:
        root: folder holding ``<dataset>_train`` and ``<dataset>_test``.
        dataset: ``modelnet40``, ``nyurgbd``, ``megadepth``, ``data61_2d3d``, ...
        split: ``"train"`` / ``"val"`` (hold-out of the train folder) / ``"test"``.
        val_fraction: share of the train folder held out as val.
        w_gt_per_2d: ``W_gt`` indexed by 2D point instead of 3D point (None: only for data61_2d3d).
        m_max, n_max, outlier_rate_2d, outlier_rate_3d: see :class:`PointControl`; 2D outliers are
            drawn in the 2D points' bounding box (there is no image).
        seed: seed of the val hold-out and of the point control.
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str = "modelnet40",
        split: str = "train",
        val_fraction: float = 0.1,
        w_gt_per_2d: bool | None = None,
        m_max: int | None = None,
        n_max: int | None = None,
        outlier_rate_2d: float | None = None,
        outlier_rate_3d: float | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split {split!r}: expected 'train', 'val' or 'test'")
        super().__init__(PointControl(m_max, n_max, outlier_rate_2d, outlier_rate_3d), seed=seed, dtype=dtype)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"archive root {self.root} not found (expected {dataset}_{{train,test}}/)"
            )
        folder = self.root / f"{dataset}_{'test' if split == 'test' else 'train'}" / "preprocessed"
        self.data = read_archive(folder)
        self.dataset = dataset
        self.w_gt_per_2d = dataset in INVERTED_W if w_gt_per_2d is None else w_gt_per_2d
        n = len(self.data["p2d"])
        items = np.arange(n) if split == "test" else split_items(n, split, seed, val_fraction, 0.0)
        # Samples with too few pairs cannot form a problem: excluded and counted.
        ok = [int(i) for i in items if (self._arrays(int(i))[2] >= 0).sum() >= MIN_INLIERS]
        self.rejected = {f"fewer than {MIN_INLIERS} inliers": len(items) - len(ok)}
        self.items = ok
        self.split = split

    def _arrays(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``points2d (m, 2)``, ``points3d (n, 3)`` and ``match (m,)`` of archive sample ``i``."""
        d = self.data
        m, n = _count(d["num_points_2d"][i]), _count(d["num_points_3d"][i])
        p2 = np.asarray(d["p2d"][i], dtype=np.float64).reshape(-1, 2)[:m]
        p3 = np.asarray(d["p3d"][i], dtype=np.float64).reshape(-1, 3)[:n]
        w = np.asarray(d["W_gt"][i]).reshape(-1).astype(np.int64)
        if self.w_gt_per_2d:
            w = w[:m]
            match = np.where((w >= 0) & (w < n), w, -1)
        else:
            w = w[:n]
            match = np.full(m, -1, dtype=np.int64)
            has = (w >= 0) & (w < m)
            match[w[has]] = np.flatnonzero(has)
        return p2, p3, match

    def __len__(self) -> int:
        return len(self.items)

    def _problem(self, index: int, rng: np.random.Generator) -> Problem:
        i = self.items[index]
        p2, p3, match = self._arrays(i)
        R = np.asarray(self.data["R_gt"][i], dtype=np.float64).reshape(3, 3)
        t = np.asarray(self.data["t_gt"][i], dtype=np.float64).reshape(3)
        corr = Correspondences(p2, p3, match, box_bounds(p2))
        return Problem(corr, np.eye(3), R, t, self.dataset, f"{self.split}/{i:06d}")
