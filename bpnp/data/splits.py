"""Deterministic train / val / test partitions of a source's items."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test", "all")


def split_items(
    n: int, split: str, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> np.ndarray:
    """Sorted indices in ``range(n)`` of one split.

    The items are permuted with ``seed`` and cut into test (first ``test_fraction``), val (next
    ``val_fraction``) and train (the rest), so the three are disjoint and cover everything; ``"all"``
    returns every index.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    if split == "all":
        return np.arange(n)
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return np.sort(parts[split])
