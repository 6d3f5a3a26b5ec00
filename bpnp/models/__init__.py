"""Encoders, cost head and the blind-PnP network."""

from bpnp.models.encoders import CrossAttention, PointEncoder, masked_context_norm
from bpnp.models.network import BlindPnPNet, NetConfig, NetworkOutput, normalise_cloud, topk_matches
from bpnp.models.pretrained import PRETRAINED, load_pretrained

__all__ = [
    "BlindPnPNet",
    "CrossAttention",
    "NetConfig",
    "NetworkOutput",
    "PRETRAINED",
    "PointEncoder",
    "load_pretrained",
    "masked_context_norm",
    "normalise_cloud",
    "topk_matches",
]
