"""Re-targeting a dataset's outlier rate for the outlier sweep.

Every source of ``bpnp.data`` passes its problems through a ``PointControl`` (attribute
``control``) whose ``outlier_rate_2d`` / ``outlier_rate_3d`` set the fraction of points without a
partner. Items are generated from ``(seed, index)`` alone, so a copy with another rate yields the
same problems (same object or image, same pose, same inliers before any cap) with more or fewer
outliers.
"""

from __future__ import annotations

import copy
import dataclasses

from torch.utils.data import ConcatDataset, Dataset, Subset


def with_outlier_rate(dataset: Dataset, rate: float | None) -> Dataset:
    """A shallow copy of ``dataset`` whose 2D and 3D outlier rates are both ``rate``.

    ``rate=None`` returns the dataset unchanged (the source's own outliers). ``Subset`` and
    ``ConcatDataset`` wrappers are copied through.

    Raises:
        TypeError: when the dataset has no ``control`` with outlier-rate fields.
    """
    if rate is None:
        return dataset
    if isinstance(dataset, Subset):
        return Subset(with_outlier_rate(dataset.dataset, rate), dataset.indices)
    if isinstance(dataset, ConcatDataset):
        return ConcatDataset([with_outlier_rate(d, rate) for d in dataset.datasets])
    control = getattr(dataset, "control", None)
    if control is None or not hasattr(control, "outlier_rate_2d"):
        raise TypeError(
            f"{type(dataset).__name__} has no outlier-rate control (a 'control' attribute with "
            "outlier_rate_2d / outlier_rate_3d); cannot sweep outlier rates on it"
        )
    out = copy.copy(dataset)
    out.control = dataclasses.replace(control, outlier_rate_2d=rate, outlier_rate_3d=rate)
    return out
