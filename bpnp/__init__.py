"""bpnp: blind Perspective-n-Point with declarative Sinkhorn and PnP layers."""

__version__ = "0.1.0"
