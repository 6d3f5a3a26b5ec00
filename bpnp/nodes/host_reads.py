"""Counting the host reads of tensor values: each is a device sync on an accelerator.

``torch.cuda.set_sync_debug_mode`` reports syncs on CUDA only; this counter sees the same reads on
any device, so the layers' sync budget (docs/design.md, section 7) is tested on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# Every way a tensor's value reaches Python.
READS = ("__bool__", "__int__", "__float__", "item", "tolist", "nonzero", "numpy")


@dataclass
class HostReads:
    """The number of reads counted so far (``n``)."""

    n: int = 0


@contextmanager
def count_host_reads() -> Iterator[HostReads]:
    """Count tensor-to-host reads (``bool(t)``, ``int``, ``float``, ``item``, ``tolist``,
    ``nonzero``, ``numpy``) in every thread, the autograd engine's included, while active.

    Not re-entrant, and not for concurrent use: it patches ``torch.Tensor`` for its duration.
    """
    counter = HostReads()
    saved = {name: getattr(torch.Tensor, name) for name in READS}
    saved_nonzero = torch.nonzero

    def counted(fn):
        def wrapper(*args, **kwargs):
            counter.n += 1
            return fn(*args, **kwargs)

        return wrapper

    try:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, counted(fn))
        torch.nonzero = counted(saved_nonzero)
        yield counter
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.nonzero = saved_nonzero
