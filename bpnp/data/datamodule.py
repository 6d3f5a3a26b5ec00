"""The Lightning data module: one configurable entry point to every source and to prepared caches."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from bpnp.data.bpnpnet_archive import BPnPNetArchiveDataset
from bpnp.data.cache import CachedDataset
from bpnp.data.colmap import ColmapDataset, colmap_dataset
from bpnp.data.modelnet import ModelNet40Dataset
from bpnp.data.rgbd import RGBDDataset
from bpnp.data.sample import Batch, Sample, collate
from bpnp.data.synthetic import ObjectProtocol, SyntheticDataset
from bpnp.data.transforms import PointControl

SOURCES = ("synthetic", "modelnet40", "colmap", "rgbd", "bpnpnet_archive")
POINT_CONTROL = ("m_max", "n_max", "outlier_rate_2d", "outlier_rate_3d")
PROTOCOL_KEYS = tuple(f.name for f in dataclasses.fields(ObjectProtocol))
CLASSES = {"synthetic": SyntheticDataset, "modelnet40": ModelNet40Dataset, "colmap": ColmapDataset,
           "rgbd": RGBDDataset, "bpnpnet_archive": BPnPNetArchiveDataset}  # fmt: skip
# Sources that make problems from object meshes, configured by an ObjectProtocol.
OBJECT_SOURCES = (SyntheticDataset, ModelNet40Dataset)

log = logging.getLogger(__name__)


def build_dataset(
    source: str, split: str, root: str | Path | None = None, seed: int = 0, **options: Any
) -> Dataset[Sample]:
    """The dataset of one source and split (``"train"``, ``"val"`` or ``"test"``).

    ``options`` are keyword arguments of the source's class (for ``synthetic``, ``num_samples`` among
    them); the point-control keys ``m_max``, ``n_max``, ``outlier_rate_2d`` and ``outlier_rate_3d``
    become its :class:`~bpnp.data.transforms.PointControl`, and for the object sources (synthetic,
    ModelNet40) the fields of :class:`~bpnp.data.synthetic.ObjectProtocol` (``num_points``,
    ``noise_px``, ...) update the source's default protocol. A COLMAP ``root`` holding several models
    (MegaDepth's scenes) gives their concatenation, split by scene unless ``split_by="image"`` (see
    :func:`~bpnp.data.colmap.colmap_dataset`).

    Raises:
        ValueError: for an unknown source, a missing ``root`` where the source needs one, a ``root``
            where it has none (synthetic), or an option the source does not have (closest named).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}: expected one of {SOURCES}")
    if source == "synthetic" and root is not None:
        raise ValueError(
            f"data source 'synthetic' reads no root (got root={root!r}); pick a source that does"
        )
    if source != "synthetic" and root is None:
        raise ValueError(f"data source {source!r} needs a root folder")
    cls, options = CLASSES[source], source_options(source, options)
    if source == "synthetic":
        return SyntheticDataset(split=split, seed=seed, **options)
    if source == "colmap":
        return colmap_dataset(root, split=split, seed=seed, **options)
    return cls(root, split=split, seed=seed, **options)


def source_options(source: str, options: dict[str, Any]) -> dict[str, Any]:
    """A config's options of ``source`` as its class's keyword arguments: names checked (the closest
    named), flat point-control and protocol keys gathered into ``control`` and ``protocol``, whose
    values are checked as they are built.

    Raises:
        ValueError: an option the source does not have, or a bad value of one of those keys.
    """
    cls = CLASSES[source]
    protocol = PROTOCOL_KEYS if cls in OBJECT_SOURCES else ()
    _check_options(cls, options, source, extra=("scenes",) * (source == "colmap") + POINT_CONTROL + protocol)
    options = _gather(options, POINT_CONTROL, "control", PointControl())
    if protocol:
        options = _gather(options, PROTOCOL_KEYS, "protocol", cls.default_protocol)
    return options


def _gather(options: dict[str, Any], keys: tuple[str, ...], name: str, default: Any) -> dict[str, Any]:
    """``options`` with the flat keys ``keys`` of a config gathered into the option ``name``: the
    dataclass ``default`` with those fields replaced (the sources' ``control`` and ``protocol``)."""
    flat = {k: options[k] for k in keys if k in options}
    if not flat:
        return options
    if options.get(name) is not None:
        raise ValueError(f"data options {sorted(flat)} and {name!r} both set the {name}: give one")
    rest = {k: v for k, v in options.items() if k not in keys}
    return {**rest, name: dataclasses.replace(default, **flat)}


def _check_options(cls: type, options: dict[str, Any], source: str, extra: tuple[str, ...] = ()) -> None:
    """Name an option the source's dataset class does not take (nor ``extra``), and the closest one."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    own = ("self", "root", "split", "seed", "model_dir", "scene")
    valid = sorted([k for k in params if k not in own] + list(extra))
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"data option {key!r} is not an option of source {source!r}{hint}; valid: {valid}"
            )


def seed_worker(worker_id: int) -> None:
    """Seed the global generators of a loader worker from its torch seed and keep it single-threaded.

    The datasets draw only from per-item generators, so samples do not depend on the number of
    workers; this covers any third-party code that uses the global ones, and stops workers from
    oversubscribing the CPU with intra-op threads.
    """
    s = torch.initial_seed() % 2**32
    np.random.seed(s)  # noqa: NPY002 (the legacy global state is what third-party code draws from)
    random.seed(s)
    torch.set_num_threads(1)


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A permutation that depends on ``(seed, epoch)`` only, so a run resumed from a checkpoint sees
    the same data order as one that never stopped (Lightning calls :meth:`set_epoch`). ``skip``
    drops the first indices of the next pass only (a run resumed in the middle of an epoch)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch, self.skip = size, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()[self.skip :]
        self.skip = 0
        return iter(order)

    def __len__(self) -> int:
        return self.size


# Sources whose scenes can be in metres: RGB-D always, a COLMAP model when it was made metric.
METRIC_CAPABLE = ("rgbd", "colmap")


class UnpaddedDistributedSampler(DistributedSampler):
    """Every rank takes every ``world_size``-th index, without the repeats that ``DistributedSampler``
    pads with: each evaluation problem is counted exactly once across processes (ranks may get one
    batch less; evaluation logs reduce at the epoch's end, so that does not stall)."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))


class BlindPnPDataModule(pl.LightningDataModule):
    """Train / val / test loaders of one source, or of a cache written by ``scripts/prepare_data.py``.

    Args:
        source: ``synthetic`` (default, no download), ``modelnet40``, ``colmap``, ``rgbd`` or
            ``bpnpnet_archive``.
        root: the source's folder or file (not used by ``synthetic``).
        cache_dir: a prepared cache with ``train/``, ``val/``, ``test/`` subfolders; when set it is
            read instead of ``source``.
        options: further keyword arguments of the source's dataset class (e.g. ``visibility``,
            ``noise_px``, ``num_covisible``, ``split_by``, ``intrinsics``, ``dataset``).
        m_max, n_max: caps on the 2D / 3D set sizes per sample.
        outlier_rate_2d, outlier_rate_3d: target outlier fractions (None: the source's own).
        train_samples, val_samples, test_samples: split sizes of the synthetic source.
        batch_size: training batch size; ``eval_batch_size`` for val / test (None: the same).
        num_workers: loader processes.
        pin_memory: pin host memory (None: when CUDA is available).
        seed: seed of the data (splits, sampling) and of the training shuffle order.
        metric_units: are the scene's units metres? None: the source's own answer (RGB-D yes; the
            others no: synthetic, ModelNet and the archive are unitless, and a COLMAP model has an
            arbitrary scale unless the user says otherwise with True). Metric recalls (5 cm, ...)
            are reported only when True.
    """

    def __init__(
        self,
        source: str = "synthetic",
        root: str | None = None,
        cache_dir: str | None = None,
        options: dict[str, Any] | None = None,
        m_max: int | None = None,
        n_max: int | None = None,
        outlier_rate_2d: float | None = None,
        outlier_rate_3d: float | None = None,
        train_samples: int = 10000,
        val_samples: int = 500,
        test_samples: int = 1000,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        seed: int = 0,
        metric_units: bool | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"unknown data source {source!r}: expected one of {SOURCES}")
        reserved = {"split", "seed", "root", "model_dir"} & set(options or {})
        if reserved:
            raise ValueError(f"options {sorted(reserved)} are set by the data module; use its own arguments")
        self.save_hyperparameters()
        self.source = source
        self.root = root
        self.cache_dir = cache_dir
        self.options = dict(options or {})
        self.control = {"m_max": m_max, "n_max": n_max, "outlier_rate_2d": outlier_rate_2d,
                        "outlier_rate_3d": outlier_rate_3d}  # fmt: skip
        if cache_dir is None:  # a bad option or value is named now, not when a loader is first built
            source_options(source, self._flat_options())
        self.sizes = {"train": train_samples, "val": val_samples, "test": test_samples}
        for split, size in self.sizes.items():
            if size < 0:
                raise ValueError(f"{split}_samples={size}: must be at least 0")
        if cache_dir is not None and (source != "synthetic" or root is not None):
            log.warning("cache_dir %s is read; source %r and root %s are not used", cache_dir, source, root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.seed = seed
        if metric_units and source not in METRIC_CAPABLE and cache_dir is None:
            raise ValueError(
                f"metric_units=True: source {source!r} has no metric scale (only {METRIC_CAPABLE} can)"
            )
        self.metric_units = source == "rgbd" if metric_units is None else bool(metric_units)
        self.datasets: dict[str, Dataset[Sample]] = {}
        self._train_sampler: EpochShuffleSampler | None = None
        self._resume: dict[str, int] | None = None

    def _flat_options(self) -> dict[str, Any]:
        """The source's options as a config gives them, the module's point control over ``options``."""
        return {**self.options, **{k: v for k, v in self.control.items() if v is not None}}

    def dataset(self, split: str) -> Dataset[Sample]:
        """The dataset of ``split``, built on first use."""
        if split not in self.datasets:
            if self.cache_dir is not None:
                self.datasets[split] = CachedDataset(Path(self.cache_dir) / split)
            else:
                opts = self._flat_options()
                if self.source == "synthetic":
                    opts.setdefault("num_samples", self.sizes[split])
                self.datasets[split] = build_dataset(self.source, split, self.root, self.seed, **opts)
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage or "", ("train", "val", "test")):
            self.dataset(split)

    def _describe(self) -> str:
        """The data read, for messages: the cache folder, or the source and its root."""
        if self.cache_dir is not None:
            return f"cache {self.cache_dir}"
        return f"source {self.source!r}" + (f" at root {self.root}" if self.root is not None else "")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        if split == "train" and len(dataset) == 0:
            # Lightning would skip every epoch ("No training batches") and still exit with status 0.
            raise ValueError(
                f"empty training set: split 'train' of {self._describe()} has no samples (expected at least"
                " one; check the root, the split fractions and the rejected-sample counts)"
            )
        if shuffle:
            sampler = EpochShuffleSampler(len(dataset), self.seed)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning leaves a DistributedSampler in place (its own would pad with repeats).
            sampler = UnpaddedDistributedSampler(dataset)
        else:
            sampler = None
        if shuffle:
            self._train_sampler = sampler
            if self._resume is not None:
                # Resuming: Lightning makes the epoch's iterator before it sets the sampler's epoch.
                sampler.set_epoch(self._resume["epoch"])
                sampler.skip = self._resume["batches"] * self.batch_size
                self._resume = None
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            worker_init_fn=seed_worker,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def state_dict(self) -> dict[str, int]:
        """Where training is in its data: the epoch and the batches of it already trained on (saved in
        checkpoints, so a run resumed in the middle of an epoch continues with its next batch)."""
        sampler, trainer = self._train_sampler, getattr(self, "trainer", None)
        if sampler is None or trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        per_epoch = -(-sampler.size // self.batch_size)
        if done >= per_epoch:  # a checkpoint at the end of an epoch: the next one starts afresh
            return {"epoch": sampler.epoch + 1, "batches": 0}
        return {"epoch": sampler.epoch, "batches": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # Lightning restores the data module before it builds the training loader.
        self._resume = dict(state) if state else None

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, Batch):
            return batch.to(device, non_blocking=self.pin_memory)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
