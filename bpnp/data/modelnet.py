"""ModelNet40 meshes under the synthetic object protocol.

Layout: ``<root>/<class>/{train,test}/*.off`` (the official archive). The val split is a
deterministic hold-out of the train folder.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import open3d as o3d
import torch

from bpnp.data.base import CorrespondenceDataset, Problem
from bpnp.data.splits import split_items
from bpnp.data.synthetic import ObjectProtocol, normalize_soup
from bpnp.data.transforms import PointControl

LAYOUT = "<root>/<class>/{train,test}/*.off"


def _parse_fused_header(path: Path) -> np.ndarray:
    """Triangle soup of an OFF file whose first line fuses the keyword and counts (``OFF490 518 0``,
    as in part of ModelNet40), which Open3D rejects. Polygons are fanned into triangles."""
    tokens = path.read_text().split()
    head = tokens[0]
    if not head.startswith("OFF") or len(head) == 3:
        raise ValueError("not an OFF header")
    nv, nf = int(head[3:]), int(tokens[1])
    vals = tokens[3:]
    verts = np.asarray(vals[: 3 * nv], dtype=np.float64).reshape(nv, 3)
    tris, pos = [], 3 * nv
    for _ in range(nf):
        k = int(vals[pos])
        poly = [int(v) for v in vals[pos + 1 : pos + 1 + k]]
        tris += [[poly[0], poly[i], poly[i + 1]] for i in range(1, k - 1)]
        pos += 1 + k
    return verts[np.asarray(tris, dtype=np.int64)]


@lru_cache(maxsize=128)
def load_off(path: str) -> np.ndarray:
    """Normalised triangle soup (T, 3, 3) of an OFF file, cached per process.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file when it cannot be parsed or has no surface.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"mesh file {p} not found (expected an OFF mesh)")
    with p.open("rb") as f:
        fused = f.readline().strip()[3:].strip() != b""  # "OFF490 518 0": Open3D rejects it
    try:
        if fused:
            tri = _parse_fused_header(p)
        else:
            mesh = o3d.io.read_triangle_mesh(str(p))
            tri = np.asarray(mesh.vertices)[np.asarray(mesh.triangles, dtype=np.int64).reshape(-1, 3)]
    except (ValueError, IndexError) as e:
        raise ValueError(f"corrupt mesh file {p}: not a readable OFF mesh with triangles") from e
    if len(tri) == 0 or not np.isfinite(tri).all():
        raise ValueError(f"corrupt mesh file {p}: no finite triangles")
    return normalize_soup(tri)


def find_meshes(root: Path, folder: str, classes: list[str] | None) -> list[Path]:
    """Sorted OFF files of one folder (``train`` or ``test``) over the chosen classes."""
    if not root.is_dir():
        raise FileNotFoundError(f"ModelNet40 root {root} not found (expected {LAYOUT})")
    names = classes or sorted(d.name for d in root.iterdir() if d.is_dir())
    missing = [c for c in names if not (root / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"ModelNet40 classes {missing} not found under {root} (expected {LAYOUT})")
    files = sorted(f for c in names for f in (root / c / folder).glob("*.off"))
    if not files:
        raise FileNotFoundError(f"no OFF files in {root}/<class>/{folder}/ (expected {LAYOUT})")
    return files


class ModelNet40Dataset(CorrespondenceDataset):
    """ModelNet40 objects with points sampled on each mesh and a random camera (see
    :class:`~bpnp.data.synthetic.ObjectProtocol`).

    Args:
        root: folder holding one subfolder per class.
        split: ``"train"`` / ``"val"`` (hold-out of the train folder) / ``"test"``.
        classes: class subfolders to use (None: all).
        samples_per_mesh: problems per mesh, each with its own points and camera.
        val_fraction: share of the train folder held out as val.
        protocol: the object protocol (None: :attr:`default_protocol`, BPnPNet's: 1000 points,
            ``visibility="none"``, no noise, unscaled meshes).
        control: outlier rates and set-size caps (:class:`PointControl`; None: none).
        seed: base seed.
    """

    max_attempts = 20
    default_protocol = ObjectProtocol(scale_range=(1.0, 1.0))

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        classes: list[str] | None = None,
        samples_per_mesh: int = 1,
        val_fraction: float = 0.1,
        protocol: ObjectProtocol | None = None,
        control: PointControl | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(control or PointControl(), split=split, seed=seed, dtype=dtype)
        self.root = Path(root)
        files = find_meshes(self.root, "test" if split == "test" else "train", classes)
        if split != "test":
            files = [files[i] for i in split_items(len(files), split, seed, val_fraction, 0.0)]
        self.files = files
        self.samples_per_mesh = samples_per_mesh
        self.protocol = self.default_protocol if protocol is None else protocol

    def __len__(self) -> int:
        return len(self.files) * self.samples_per_mesh

    def _problem(self, index: int, rng: np.random.Generator) -> Problem:
        f = self.files[index // self.samples_per_mesh]
        p = self.protocol.problem(load_off(str(f)), rng)
        p.scene = f.parent.parent.name
        p.id = f"{f.stem}/{index % self.samples_per_mesh}"
        return p
