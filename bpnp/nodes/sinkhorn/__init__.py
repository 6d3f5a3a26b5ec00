"""Declarative Sinkhorn layer: the entropic optimal-transport plan, implicit gradients to the costs,
the marginals and the dustbin score.

``layer`` is the API (:func:`sinkhorn`, :class:`Sinkhorn`, :class:`SinkhornNode`), ``solver`` the
forward iterations, ``backward`` the implicit vector-Jacobian product.
"""

from bpnp.nodes.sinkhorn.layer import Sinkhorn, SinkhornNode, sinkhorn
from bpnp.nodes.sinkhorn.solver import SolverInfo

__all__ = ["Sinkhorn", "SinkhornNode", "SolverInfo", "sinkhorn"]
