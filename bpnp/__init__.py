"""bpnp: blind Perspective-n-Point with declarative Sinkhorn and PnP layers."""

__version__ = "0.1.0"


def load_pretrained(name: str, device: str = "cpu"):
    """A network shipped with the package, ready for ``net.predict`` (see :mod:`bpnp.models.pretrained`)."""
    from bpnp.models.pretrained import load_pretrained as load

    return load(name, device)
