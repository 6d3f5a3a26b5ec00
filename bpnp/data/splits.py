"""Deterministic train / val / test partitions of a source's items, or of its scenes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test", "all")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")


def split_items(
    n: int, split: str, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> np.ndarray:
    """Sorted indices in ``range(n)`` of one split.

    The items are permuted with ``seed`` and cut into test (first ``test_fraction``), val (next
    ``val_fraction``) and train (the rest), so the three are disjoint and cover everything; ``"all"``
    returns every index.
    """
    _check_split(split)
    if split == "all":
        return np.arange(n)
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return np.sort(parts[split])


def split_groups(
    groups: Sequence[str],
    split: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    where: str = "the data",
    instead: str = "",
) -> list[str]:
    """Sorted names of the groups (scenes) in one split, so that no group is in two splits.

    The distinct names of ``groups`` are sorted, permuted with ``seed`` and cut like
    :func:`split_items`, except that val and test get at least one group when their fraction is
    positive, and train always does: with 3 or more groups and fractions that leave train a share,
    every split is non-empty. ``"all"`` returns every name.

    Args:
        groups: group name of each item (repeats allowed), or the names themselves.
        where: what is split, for the error message (e.g. the root folder).
        instead: the alternative to suggest in the error message (e.g. ``"split_by='image'"``).

    Raises:
        ValueError: for an unknown split, or when the groups are too few for a non-empty train split
            and non-empty val / test splits of positive fraction.
    """
    _check_split(split)
    names = sorted(set(groups))
    if split == "all":
        return names
    n = len(names)
    n_test = max(int(round(n * test_fraction)), 1 if test_fraction > 0 else 0)
    n_val = max(int(round(n * val_fraction)), 1 if val_fraction > 0 else 0)
    if n - n_test - n_val < 1:
        hint = f"; pass {instead} instead" if instead else ""
        raise ValueError(
            f"a split by scene needs several scenes: {where} has {n} ({', '.join(names[:5])}"
            f"{', ...' if n > 5 else ''}), at least {n_test + n_val + 1} are needed for non-empty splits with"
            f" val_fraction={val_fraction}, test_fraction={test_fraction}{hint}"
        )
    order = [names[i] for i in np.random.default_rng([seed, 0x5CE7E]).permutation(n)]
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return sorted(parts[split])
