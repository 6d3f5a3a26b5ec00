"""Declarative weighted PnP layer: batched solver, implicit gradients to weights and points."""

from bpnp.nodes.pnp.layer import PnPResult, weighted_pnp
from bpnp.nodes.pnp.options import RansacOptions, SolverOptions

__all__ = ["PnPResult", "RansacOptions", "SolverOptions", "weighted_pnp"]
