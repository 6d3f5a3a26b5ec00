"""Encoders, cost head and the blind-PnP network."""

from bpnp.models.encoders import CrossAttention, PointEncoder, masked_context_norm
from bpnp.models.network import BlindPnPNet, NetConfig, NetworkOutput, normalise_cloud, topk_matches

__all__ = [
    "BlindPnPNet",
    "CrossAttention",
    "NetConfig",
    "NetworkOutput",
    "PointEncoder",
    "masked_context_norm",
    "normalise_cloud",
    "topk_matches",
]
