"""Typed options of :func:`~bpnp.nodes.pnp.layer.weighted_pnp`: what is solved and how
(:class:`SolverOptions`), and how the initial pose is found when none is given (:class:`RansacOptions`).

Both are frozen dataclasses with plain-typed fields, so a config file (jsonargparse) builds and
validates them, and a network configuration nests them whole. Bad values are a ``ValueError`` that
names the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from bpnp.nodes.pnp.objectives import Objective, objective_named
from bpnp.nodes.pnp.robust import RobustKernel, robust_kernel

# RANSAC back ends: "auto" is OpenCV for CPU tensors and the batched torch one elsewhere.
INITS = ("auto", "opencv", "torch")


def _positive(owner: str, name: str, value: float | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}: '{name}' must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class SolverOptions:
    """The objective and its solver.

    Attributes:
        objective: "angular" ``1 - b . normalise(X)`` or "reprojection" ``|pi(X) - x|^2`` (or an
            :class:`~bpnp.nodes.pnp.objectives.Objective`).
        robust: robust kernel ("huber", "cauchy", "tanh", "geman_mcclure", a
            :class:`~bpnp.nodes.pnp.robust.RobustKernel`) or None; the paired form only.
        robust_scale: residual scale of the kernel (normalised image units; radians for "angular").
        max_iter: Levenberg-Marquardt iterations at most (0: the initial pose, refined not at all).
        tol: relative step tolerance (None: 1e-12 in float64, 1e-6 otherwise).
        noise_level: expected RMS residual of a true pair, or None. Given, a converged sample whose
            weighted mean pair error is above that of a ``3 * noise_level`` residual is flagged invalid
            ("objective far above the noise level"): a wrong local minimum such as a planar scene's
            mirror pose. Meaningful when the weights sit on true pairs.
    """

    objective: Literal["angular", "reprojection"] | Objective = "angular"
    robust: Literal["huber", "cauchy", "tanh", "geman_mcclure"] | RobustKernel | None = None
    robust_scale: float = 0.01
    max_iter: int = 50
    tol: float | None = None
    noise_level: float | None = None

    def __post_init__(self) -> None:
        objective_named(self.objective)
        robust_kernel(self.robust)
        _positive("SolverOptions", "robust_scale", self.robust_scale)
        if not (isinstance(self.max_iter, int) and self.max_iter >= 0):
            raise ValueError(f"SolverOptions: 'max_iter' must be an integer >= 0, got {self.max_iter!r}")
        if self.tol is not None and not (math.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"SolverOptions: 'tol' must be a finite number >= 0 or None, got {self.tol!r}")
        _positive("SolverOptions", "noise_level", self.noise_level, allow_none=True)

    @property
    def objective_fn(self) -> Objective:
        return objective_named(self.objective)

    @property
    def kernel(self) -> RobustKernel:
        return robust_kernel(self.robust)


@dataclass(frozen=True)
class RansacOptions:
    """The RANSAC initialisation (P3P hypotheses on the top weighted pairs; 4 positive pairs needed).

    Attributes:
        backend: "opencv" (``solvePnPRansac`` per sample on the CPU; both IPPE poses also scored on
            planar scenes), "torch" (batched Lambda Twist P3P RANSAC on the tensors' device,
            :func:`~bpnp.nodes.pnp.ransac.torch_ransac`), or "auto": OpenCV for CPU tensors, torch
            otherwise.
        topk: pairs given to RANSAC (None: ``min(1000, 1.5 m)`` dense, all pairs paired).
        threshold: inlier threshold in normalised image units.
        iterations: minimal samples per problem at most (both back ends stop early by the adaptive
            bound at confidence 0.999).
    """

    backend: Literal["auto", "opencv", "torch"] = "auto"
    topk: int | None = None
    threshold: float = 0.01
    iterations: int = 1000

    def __post_init__(self) -> None:
        if self.backend not in INITS:
            raise ValueError(
                f"RansacOptions: 'backend', the RANSAC init must be one of {INITS}, got {self.backend!r}"
            )
        if self.topk is not None and not (isinstance(self.topk, int) and self.topk >= 1):
            raise ValueError(f"RansacOptions: 'topk' must be a positive integer or None, got {self.topk!r}")
        _positive("RansacOptions", "threshold", self.threshold)
        if not (isinstance(self.iterations, int) and self.iterations >= 1):
            raise ValueError(f"RansacOptions: 'iterations' must be an integer >= 1, got {self.iterations!r}")
