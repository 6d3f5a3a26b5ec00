"""Declarative layers: outputs defined as solutions of optimisation problems, gradients by implicit
differentiation. Plain torch; no Lightning."""

from bpnp.nodes.pnp import PnPResult, weighted_pnp
from bpnp.nodes.sinkhorn import Sinkhorn, sinkhorn

__all__ = ["PnPResult", "Sinkhorn", "sinkhorn", "weighted_pnp"]
