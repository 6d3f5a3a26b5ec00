"""Declarative weighted PnP layer: batched solver, implicit gradients to weights and points."""

from bpnp.nodes.pnp.layer import PnPResult, weighted_pnp

__all__ = ["PnPResult", "weighted_pnp"]
