"""Point-set feature encoders.

Both branches map a set of points (B, N, C_in) with a validity mask (B, N) to unit-length features
(B, N, D). Padding never influences real points: normalisation statistics and neighbourhoods are
taken over valid points only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def masked_context_norm(x: Tensor, mask: Tensor, eps: float = 1e-5) -> Tensor:
    """Context normalisation: per sample and channel, zero mean and unit variance over the valid points
    (instance norm without affine, blind to padding).

    Args:
        x: (B, C, N).
        mask: (B, N) bool.
    Returns:
        (B, C, N), zero at padded points.
    """
    w = mask[:, None, :].to(x.dtype)
    count = w.sum(-1, keepdim=True).clamp_min(1.0)
    mean = (x * w).sum(-1, keepdim=True) / count
    var = (((x - mean) * w) ** 2).sum(-1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps) * w


class ResidualBlock(nn.Module):
    """Two 1x1 convolutions, each followed by context normalisation and ReLU, plus a skip path."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, 1)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, C, N) -> (B, C, N)."""
        y = torch.relu(masked_context_norm(self.conv1(x), mask))
        y = torch.relu(masked_context_norm(self.conv2(y), mask))
        return x + y


def knn_indices(x: Tensor, mask: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` nearest valid neighbours of every point (itself excluded when possible).

    Args:
        x: (B, N, C) coordinates.
        mask: (B, N) bool.
    Returns:
        (B, N, k) int64 (padded points and samples with fewer than k + 1 valid points repeat indices).
    """
    d = torch.cdist(x, x)
    big = torch.finfo(d.dtype).max
    d = d.masked_fill(~mask[:, None, :], big)
    d.diagonal(dim1=1, dim2=2).fill_(big / 2)  # self last among valid points
    k_eff = min(k, x.shape[1])
    return d.topk(k_eff, dim=-1, largest=False).indices


class LocalGeometry(nn.Module):
    """kNN edge features: for each point, a max over its neighbours of an MLP on
    ``[x_i, x_j - x_i]`` (EdgeConv), giving a descriptor of the local shape around it."""

    def __init__(self, in_dim: int, out_dim: int, k: int = 10):
        super().__init__()
        self.k = k
        self.mlp = nn.Sequential(nn.Linear(2 * in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, N, C_in) -> (B, N, out_dim)."""
        idx = knn_indices(x.detach(), mask, self.k)  # (B, N, k)
        B, N, k = idx.shape
        nbr = x.gather(1, idx.reshape(B, N * k, 1).expand(-1, -1, x.shape[-1])).reshape(B, N, k, -1)
        edge = torch.cat([x[:, :, None].expand(-1, -1, k, -1), nbr - x[:, :, None]], dim=-1)
        return self.mlp(edge).amax(dim=2)


class PointEncoder(nn.Module):
    """BPnPNet's per-branch encoder: 1x1 conv to ``channels``, ``blocks`` residual blocks with context
    normalisation, a 1x1 conv to ``out_dim``, L2-normalised output. With ``knn > 0`` the input is first
    enriched with kNN edge features (local shape), which makes matching learnable much sooner.

    Args:
        in_dim: input coordinates per point (3 for bearings and for 3D points).
        channels, blocks, out_dim: widths and depth.
        knn: neighbours for the local-geometry features (0: BPnPNet's purely pointwise design).
    """

    def __init__(
        self, in_dim: int = 3, channels: int = 128, blocks: int = 12, out_dim: int = 128, knn: int = 0
    ):
        super().__init__()
        self.local = LocalGeometry(in_dim, channels, knn) if knn > 0 else None
        self.inp = nn.Conv1d(in_dim + (channels if knn > 0 else 0), channels, 1)
        self.blocks = nn.ModuleList(ResidualBlock(channels) for _ in range(blocks))
        self.out = nn.Conv1d(channels, out_dim, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Points (B, N, C_in), mask (B, N) -> unit features (B, N, out_dim)."""
        if self.local is not None:
            x = torch.cat([x, self.local(x, mask)], dim=-1)
        h = self.inp(x.transpose(1, 2))
        for block in self.blocks:
            h = block(h, mask)
        f = self.out(h).transpose(1, 2)
        return nn.functional.normalize(f, dim=-1) * mask[..., None].to(f.dtype)


class CrossAttention(nn.Module):
    """Self- then cross-attention between the two sets (SuperGlue-style message passing), pre-norm
    residual layers; masks keep padding out of every softmax."""

    def __init__(self, dim: int = 128, heads: int = 4, layers: int = 2):
        super().__init__()
        self.self_attn = nn.ModuleList(
            nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(layers)
        )
        self.cross_attn = nn.ModuleList(
            nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4 * layers))

    def _attend(
        self, attn: nn.MultiheadAttention, norm: nn.LayerNorm, q: Tensor, kv: Tensor, kv_mask: Tensor
    ) -> Tensor:
        kvn = norm(kv)
        out, _ = attn(norm(q), kvn, kvn, key_padding_mask=~kv_mask, need_weights=False)
        return q + out

    def forward(self, f: Tensor, g: Tensor, mask_f: Tensor, mask_g: Tensor) -> tuple[Tensor, Tensor]:
        """Features (B, m, D), (B, n, D) -> updated features of the same shapes (not normalised)."""
        norms = iter(self.norms)
        for sa, ca in zip(self.self_attn, self.cross_attn, strict=True):
            nf, ng = next(norms), next(norms)
            f, g = self._attend(sa, nf, f, f, mask_f), self._attend(sa, ng, g, g, mask_g)
            cf, cg = next(norms), next(norms)
            f, g = self._attend(ca, cf, f, g, mask_g), self._attend(ca, cg, g, f, mask_f)
        return f, g
