"""Encoders, cost head and the blind-PnP network."""

from bpnp.models.encoders import CrossAttention, PointEncoder, masked_context_norm
from bpnp.models.network import BlindPnPNet, NetConfig, NetworkOutput, exact_top_pairs, normalise_cloud
from bpnp.models.pretrained import PRETRAINED, load_pretrained

__all__ = [
    "BlindPnPNet",
    "CrossAttention",
    "NetConfig",
    "NetworkOutput",
    "PRETRAINED",
    "PointEncoder",
    "exact_top_pairs",
    "load_pretrained",
    "masked_context_norm",
    "normalise_cloud",
]
