"""The dataset base class: deterministic per-item generation, shared point control, rejection of
problems with too few correspondences."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from bpnp.data.sample import Sample, sample_from_numpy
from bpnp.data.transforms import MIN_INLIERS, Correspondences, PointControl


class RejectedSample(Exception):
    """An item that cannot form a valid problem; ``reason`` is a short category for summaries."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Problem:
    """A source's problem before point control: correspondences plus camera and provenance.

    Attributes:
        corr: the 2D / 3D sets and their pairing.
        K: (3, 3); R: (3, 3); t: (3,).
        R_ref, t_ref: the pose of a reference view of the 3D set, or None (see :class:`Sample`).
    """

    corr: Correspondences
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    scene: str = ""
    id: str = ""
    image_path: str | None = None
    image_size: tuple[int, int] | None = None
    R_ref: np.ndarray | None = None
    t_ref: np.ndarray | None = None


class CorrespondenceDataset(Dataset[Sample]):
    """Base of every source: ``build(index)`` makes one :class:`Sample` from the item's own
    generator, seeded by ``(seed, stream, index, attempt)`` only, so the result does not depend on
    worker count or iteration order.

    Subclasses implement ``__len__`` and ``_problem(index, rng)``. Procedural sources set
    ``max_attempts > 1``: a draw with fewer than ``MIN_INLIERS`` correspondences is redrawn with the
    next attempt number.

    Splits are handled here for every source: ``split`` must be one of :attr:`splits`, and it picks
    the random stream. Procedural sources (``split_streams = True``) draw every problem, so each split
    has its own stream (its index in :attr:`splits`); file sources hold disjoint items per split and
    draw only point control and their own subsampling, all from stream 0.
    """

    max_attempts = 1
    #: The splits the source takes ("all": every item, for file sources).
    splits: tuple[str, ...] = ("train", "val", "test")
    #: Whether each split draws from its own random stream.
    split_streams = True

    def __init__(
        self,
        control: PointControl,
        split: str = "train",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if split not in self.splits:
            raise ValueError(f"{type(self).__name__}: split {split!r}: expected one of {self.splits}")
        self.control = control
        self.split = split
        self.seed = seed
        self.stream = self.splits.index(split) if self.split_streams else 0
        self.dtype = dtype

    def __len__(self) -> int:
        raise NotImplementedError

    def _problem(self, index: int, rng: np.random.Generator) -> Problem:
        raise NotImplementedError

    def rng(self, index: int, attempt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.stream, index, attempt])

    def build(self, index: int) -> Sample:
        """The sample of item ``index``.

        Raises:
            RejectedSample: when no attempt gives at least ``MIN_INLIERS`` correspondences or the
                source's values are not finite.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        for attempt in range(self.max_attempts):
            rng = self.rng(index, attempt)
            p = self._problem(index, rng)
            corr = self.control(p.corr, rng)
            if corr.num_inliers < MIN_INLIERS:
                continue
            try:
                return sample_from_numpy(
                    corr.points2d, p.K, corr.points3d, p.R, p.t, corr.match,
                    scene=p.scene, id=p.id, image_path=p.image_path, image_size=p.image_size,
                    R_ref=p.R_ref, t_ref=p.t_ref, dtype=self.dtype,
                )  # fmt: skip
            except ValueError as e:
                raise RejectedSample("non-finite or inconsistent values", str(e)) from e
        raise RejectedSample(
            f"fewer than {MIN_INLIERS} inliers", f"item {index} after {self.max_attempts} attempt(s)"
        )

    def __getitem__(self, index: int) -> Sample:
        # A rejected item is replaced by the next valid one, so a loader never sees it; prepared
        # caches count rejections instead (see scripts/prepare_data.py).
        for step in range(len(self)):
            j = (index + step) % len(self)
            try:
                return self.build(j)
            except RejectedSample as e:
                warnings.warn(f"{type(self).__name__}: item {j} rejected ({e}); using the next", stacklevel=2)
        raise RuntimeError(f"{type(self).__name__}: no item forms a valid problem")
