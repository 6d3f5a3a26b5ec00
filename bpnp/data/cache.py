"""Prepared caches: samples stored in sharded ``.npz`` files plus an ``index.json``.

A shard concatenates its samples' variable-length arrays (``points2d``, ``points3d``, ``match``)
with per-sample counts ``m`` and ``n``; fixed-size fields are stacked. Strings are stored as
unicode arrays, so reading never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bpnp.data.base import RejectedSample
from bpnp.data.sample import Sample
from bpnp.data.transforms import MIN_INLIERS

INDEX = "index.json"


class CacheWriter:
    """Append samples and write them in shards of ``shard_size``.

    Args:
        out_dir: folder to create (existing shards and index there are overwritten).
        shard_size: samples per ``.npz`` shard.
        compress: zip-compress shards (smaller, slower to read).
    """

    def __init__(self, out_dir: str | Path, shard_size: int = 1000, compress: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for old in self.out_dir.glob("shard_*.npz"):
            old.unlink()
        self.shard_size = shard_size
        self.compress = compress
        self.pending: list[Sample] = []
        self.shards: list[dict[str, Any]] = []
        self.count = 0

    def add(self, sample: Sample) -> None:
        self.pending.append(sample)
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending samples as one shard."""
        if not self.pending:
            return
        name = f"shard_{len(self.shards):05d}.npz"
        ss = self.pending
        arrays = {
            "points2d": torch.cat([s.points2d for s in ss]).numpy(),
            "points3d": torch.cat([s.points3d for s in ss]).numpy(),
            "match": torch.cat([s.match for s in ss]).numpy(),
            "m": np.array([len(s.points2d) for s in ss], dtype=np.int64),
            "n": np.array([len(s.points3d) for s in ss], dtype=np.int64),
            "K": torch.stack([s.K for s in ss]).numpy(),
            "R": torch.stack([s.R for s in ss]).numpy(),
            "t": torch.stack([s.t for s in ss]).numpy(),
            "image_size": np.array([s.image_size or (-1, -1) for s in ss], dtype=np.int64),
            "scene": np.array([s.scene for s in ss], dtype=np.str_),
            "id": np.array([s.id for s in ss], dtype=np.str_),
            "image_path": np.array([s.image_path or "" for s in ss], dtype=np.str_),
        }
        if all(s.R_ref is not None for s in ss):  # reference views travel when every sample has one
            arrays["R_ref"] = torch.stack([s.R_ref for s in ss]).numpy()
            arrays["t_ref"] = torch.stack([s.t_ref for s in ss]).numpy()
        (np.savez_compressed if self.compress else np.savez)(self.out_dir / name, **arrays)
        self.shards.append({"file": name, "count": len(ss)})
        self.count += len(ss)
        self.pending = []

    def close(self, meta: dict[str, Any] | None = None) -> Path:
        """Write the last shard and the index (with ``meta``, e.g. the source config and rejections)."""
        self.flush()
        index = {"count": self.count, "shards": self.shards, "meta": meta or {}}
        path = self.out_dir / INDEX
        path.write_text(json.dumps(index, indent=2, default=str))
        return path


class CachedDataset(Dataset[Sample]):
    """Samples of a prepared cache folder (one split), loaded shard by shard.

    Raises:
        FileNotFoundError: naming the folder when it has no ``index.json``.
        ValueError: naming the index or a shard that cannot be read.
    """

    def __init__(self, cache_dir: str | Path, dtype: torch.dtype = torch.float32) -> None:
        self.cache_dir = Path(cache_dir)
        path = self.cache_dir / INDEX
        if not path.is_file():
            raise FileNotFoundError(
                f"cache index {path} not found (expected a folder written by scripts/prepare_data.py)"
            )
        try:
            index = json.loads(path.read_text())
            self.shards = [(self.cache_dir / s["file"], int(s["count"])) for s in index["shards"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"corrupt cache index {path}: {e}") from e
        self.meta = index.get("meta", {})
        self.starts = np.cumsum([0] + [c for _, c in self.shards])
        self.dtype = dtype
        self._loaded: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _shard(self, k: int) -> dict[str, np.ndarray]:
        if k not in self._loaded:
            path = self.shards[k][0]
            try:
                with np.load(path, allow_pickle=False) as z:
                    data = {key: z[key] for key in z.files}
                data["off2"] = np.concatenate([[0], np.cumsum(data["m"])])
                data["off3"] = np.concatenate([[0], np.cumsum(data["n"])])
            except (OSError, ValueError, KeyError) as e:
                raise ValueError(f"corrupt cache shard {path}: {e}") from e
            if len(self._loaded) >= 2:  # keep memory bounded; access is mostly shard-local
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[k] = data
        return self._loaded[k]

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a cache of {len(self)} samples")
        k = int(np.searchsorted(self.starts, index, side="right") - 1)
        d, j = self._shard(k), index - int(self.starts[k])
        a2, b2, a3, b3 = d["off2"][j], d["off2"][j + 1], d["off3"][j], d["off3"][j + 1]
        as_t = lambda a: torch.from_numpy(np.array(a)).to(self.dtype)  # noqa: E731
        size = tuple(int(v) for v in d["image_size"][j])
        return Sample(
            points2d=as_t(d["points2d"][a2:b2]),
            K=as_t(d["K"][j]),
            points3d=as_t(d["points3d"][a3:b3]),
            R=as_t(d["R"][j]),
            t=as_t(d["t"][j]),
            match=torch.from_numpy(np.array(d["match"][a2:b2], dtype=np.int64)),
            scene=str(d["scene"][j]),
            id=str(d["id"][j]),
            image_path=str(d["image_path"][j]) or None,
            image_size=size if size[0] >= 0 else None,  # type: ignore[arg-type]
            R_ref=as_t(d["R_ref"][j]) if "R_ref" in d else None,
            t_ref=as_t(d["t_ref"][j]) if "t_ref" in d else None,
        )


class _Attempt(Dataset):
    """Wraps a source so loader workers return ``(sample, None)`` or ``(None, rejection reason)``."""

    def __init__(self, dataset: Dataset[Sample]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Sample | None, str | None]:
        build = getattr(self.dataset, "build", self.dataset.__getitem__)
        try:
            sample = build(index)
        except RejectedSample as e:
            return None, e.reason
        if sample.num_inliers < MIN_INLIERS or not all(
            torch.isfinite(x).all() for x in (sample.points2d, sample.points3d, sample.K, sample.R, sample.t)
        ):
            return None, f"fewer than {MIN_INLIERS} inliers or non-finite values"
        return sample, None


def _identity(x: Any) -> Any:
    return x


def source_rejections(dataset: Dataset) -> dict[str, int]:
    """Items a source excluded when it was built (``rejected`` counts), summed over concatenations."""
    out: dict[str, int] = {}
    for part in getattr(dataset, "datasets", [dataset]):
        for reason, count in getattr(part, "rejected", {}).items():
            out[reason] = out.get(reason, 0) + count
    return out


def write_cache(
    dataset: Dataset[Sample],
    out_dir: str | Path,
    shard_size: int = 1000,
    num_workers: int = 0,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write every valid sample of ``dataset`` to a cache folder and return a summary.

    Items a source rejects (fewer than 4 inliers, non-finite values) are counted by reason, never
    written; so are items the source excluded when it was built.

    Returns:
        ``{"written": int, "rejected": {reason: count}, "index": path of index.json}``.
    """
    writer = CacheWriter(out_dir, shard_size)
    rejected = source_rejections(dataset)
    loader = DataLoader(_Attempt(dataset), batch_size=None, num_workers=num_workers, collate_fn=_identity)
    for sample, reason in tqdm(loader, total=len(loader), desc=str(out_dir), disable=not progress):
        if sample is None:
            rejected[reason] = rejected.get(reason, 0) + 1
        else:
            writer.add(sample)
    writer.flush()
    summary = {"written": writer.count, "rejected": rejected}
    path = writer.close({**(meta or {}), **summary})
    return {**summary, "index": str(path)}
