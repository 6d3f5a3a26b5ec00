"""Declarative layers: outputs defined as solutions of optimisation problems, gradients by implicit
differentiation. Plain torch; no Lightning."""

from bpnp.nodes.pnp import PnPResult, RansacOptions, SolverOptions, weighted_pnp

# ``bpnp.nodes.sinkhorn`` is the function, not the subpackage of the same name: reach the subpackage's
# modules with ``from bpnp.nodes.sinkhorn.solver import ...`` (from-imports look the module up by name).
from bpnp.nodes.sinkhorn import Sinkhorn, sinkhorn

__all__ = ["PnPResult", "RansacOptions", "Sinkhorn", "SolverOptions", "sinkhorn", "weighted_pnp"]
