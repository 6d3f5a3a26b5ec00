"""Declarative layers: outputs defined as solutions of optimisation problems, gradients by implicit
differentiation. Plain torch; no Lightning."""

from bpnp.nodes.sinkhorn import Sinkhorn, sinkhorn

__all__ = ["Sinkhorn", "sinkhorn"]
