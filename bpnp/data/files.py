"""Reading one's own problem from files: 2D keypoints, a 3D point cloud and the camera intrinsics.

Every reader checks what it reads and names the file and what was expected when it is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

POINT_SUFFIXES = (".npy", ".txt", ".csv", ".ply", ".pcd")


def _exists(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} not found")
    return path


def _text_table(path: Path) -> np.ndarray:
    """Numbers of a .txt / .csv table (comma, semicolon or whitespace separated; '#' comments and a
    non-numeric header line are skipped)."""
    rows = []
    for k, line in enumerate(path.read_text().splitlines()):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.replace(",", " ").replace(";", " ").split()
        try:
            rows.append([float(x) for x in fields])
        except ValueError:
            if rows or k > 0:
                raise ValueError(f"{path}: line {k + 1} is not numbers: {line[:60]!r}") from None
            continue  # a header line
    if not rows:
        return np.zeros((0, 0))
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"{path}: rows have different numbers of columns {sorted(widths)}")
    return np.asarray(rows, dtype=np.float64)


def read_points(path: str | Path, dim: int, what: str = "points") -> np.ndarray:
    """An (N, dim) float64 array of points from ``.npy``, ``.txt``, ``.csv`` or (3D) ``.ply`` / ``.pcd``.

    Text tables may have extra columns after the first ``dim`` (e.g. colours or descriptors' ids):
    only the first ``dim`` are read; ``.npy`` arrays must be exactly (N, dim).

    Raises:
        FileNotFoundError: no such file. ValueError: an unknown suffix, a shape other than (N, >= dim),
            fewer than 4 points, or non-finite coordinates.
    """
    path = _exists(path, what)
    suffix = path.suffix.lower()
    if suffix not in POINT_SUFFIXES or (dim == 2 and suffix in (".ply", ".pcd")):
        allowed = POINT_SUFFIXES if dim == 3 else POINT_SUFFIXES[:3]
        raise ValueError(f"{what} file {path}: expected one of {allowed}, got {suffix!r}")
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False).astype(np.float64)
    elif suffix in (".ply", ".pcd"):
        import open3d as o3d

        arr = np.asarray(o3d.io.read_point_cloud(str(path)).points, dtype=np.float64)
    else:
        arr = _text_table(path)
    extra_columns = suffix in (".txt", ".csv")  # a table may carry more columns (colours, ids, ...)
    if arr.ndim != 2 or arr.shape[1] < dim or (arr.shape[1] != dim and not extra_columns):
        hint = " (transposed?)" if arr.ndim == 2 and arr.shape[0] == dim else ""
        raise ValueError(f"{what} file {path}: expected an (N, {dim}) array, got shape {arr.shape}{hint}")
    arr = arr[:, :dim]
    if len(arr) < 4:
        raise ValueError(f"{what} file {path}: {len(arr)} points, a pose needs at least 4")
    bad = ~np.isfinite(arr).all(1)
    if bad.any():
        raise ValueError(f"{what} file {path}: row {int(np.flatnonzero(bad)[0])} is not finite")
    return arr


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """The (3, 3) pinhole matrix; focal lengths must be finite and positive."""
    values = np.array([fx, fy, cx, cy], dtype=np.float64)
    if not np.isfinite(values).all() or fx <= 0 or fy <= 0:
        raise ValueError(f"intrinsics: need finite fx, fy > 0 and finite cx, cy, got {values.tolist()}")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def read_intrinsics(path: str | Path) -> np.ndarray:
    """K (3, 3) from a text file (3 x 3 numbers, or one line ``fx fy cx cy``) or JSON (``{"K": [[..]]}``
    or ``{"fx": .., "fy": .., "cx": .., "cy": ..}``).

    Raises:
        FileNotFoundError: no such file. ValueError: anything else than a pinhole K.
    """
    path = _exists(path, "intrinsics")
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "K" in data:
            K = np.asarray(data["K"], dtype=np.float64)
        elif isinstance(data, dict) and {"fx", "fy", "cx", "cy"} <= set(data):
            return intrinsics_matrix(data["fx"], data["fy"], data["cx"], data["cy"])
        else:
            raise ValueError(f"intrinsics file {path}: expected keys 'K' or 'fx', 'fy', 'cx', 'cy'")
    else:
        table = _text_table(path)
        if table.size == 4:
            return intrinsics_matrix(*table.ravel())
        K = table
    if K.shape != (3, 3):
        raise ValueError(
            f"intrinsics file {path}: expected a 3 x 3 matrix or fx fy cx cy, got shape {K.shape}"
        )
    if (
        not np.isfinite(K).all()
        or not np.allclose(K[2], [0, 0, 1])
        or K[1, 0] != 0
        or K[0, 0] <= 0
        or K[1, 1] <= 0
    ):
        raise ValueError(
            f"intrinsics file {path}: not a pinhole matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]]"
        )
    return K


def read_pose(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(R (3, 3), t (3,))``, world to camera, from JSON ``{"R": [[..]], "t": [..]}``.

    Raises:
        FileNotFoundError: no such file. ValueError: not a rotation and a finite translation.
    """
    path = _exists(path, "pose")
    try:
        data = json.loads(path.read_text())
        R, t = np.asarray(data["R"], dtype=np.float64), np.asarray(data["t"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"pose file {path}: expected JSON with 'R' (3 x 3) and 't' (3), ({e})") from e
    if R.shape != (3, 3) or t.shape != (3,) or not (np.isfinite(R).all() and np.isfinite(t).all()):
        raise ValueError(
            f"pose file {path}: expected finite 'R' (3 x 3) and 't' (3,), got {R.shape}, {t.shape}"
        )
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
        raise ValueError(f"pose file {path}: 'R' is not a rotation matrix")
    return R, t
