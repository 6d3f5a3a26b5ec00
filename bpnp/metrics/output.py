"""The interface every evaluated method implements: baselines now, the trained network later.

A method maps a padded :class:`~bpnp.data.sample.Batch` to a :class:`MethodOutput`. Only the pose
and its validity are required; the optional fields switch on the matching metrics (``pairs``),
the transport-plan picture (``plan``) and the "no PnP layer" row (``R_init`` / ``t_init``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from bpnp.data.sample import Batch


@dataclass
class MethodOutput:
    """Per-problem results of a method on a batch of B problems.

    Attributes:
        R: (B, 3, 3) and ``t`` (B, 3): estimated world-to-camera pose, ``x_cam = R X + t``.
        valid: (B,) bool; False where the method gave up (its pose is then ignored).
        pairs: (B, k, 2) int64 or None: the method's top-k 2D-3D pairs ``(i, j)``, best first,
            rows of -1 as padding.
        scores: (B, k) or None: the confidence of each pair (higher is better).
        plan: (B, M, N), or (B, M + 1, N + 1) with the dustbin as the last row and column, or None:
            the transport plan P.
        R_init: (B, 3, 3) and ``t_init`` (B, 3) or None: the RANSAC initial pose before refinement.
        valid_init: (B,) bool or None: validity of the initial pose (defaults to ``valid``).
        init_seconds: wall time the method took to reach the initial pose, or None (the "no PnP
            layer" row then shares the method's time).
    """

    R: Tensor
    t: Tensor
    valid: Tensor
    pairs: Tensor | None = None
    scores: Tensor | None = None
    plan: Tensor | None = None
    R_init: Tensor | None = None
    t_init: Tensor | None = None
    valid_init: Tensor | None = None
    init_seconds: float | None = None

    def detach_cpu(self) -> MethodOutput:
        """Copy with every tensor detached and on the CPU."""
        return MethodOutput(
            **{k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        )


@runtime_checkable
class Method(Protocol):
    """Anything with a ``name`` that turns a batch into a :class:`MethodOutput`."""

    name: str

    def __call__(self, batch: Batch) -> MethodOutput: ...


def initial_pose_output(out: MethodOutput) -> MethodOutput | None:
    """The "no PnP layer" ablation read off the same forward pass: the RANSAC initial pose as the
    answer, the matches unchanged. None when the method reports no initial pose."""
    if out.R_init is None or out.t_init is None:
        return None
    valid = out.valid_init if out.valid_init is not None else out.valid
    return MethodOutput(
        R=out.R_init, t=out.t_init, valid=valid, pairs=out.pairs, scores=out.scores, plan=out.plan
    )
