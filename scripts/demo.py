"""A short tour of the geometry core: a random camera sees random points; we project them, lift the
pixels back to bearings and check the round trip. Prints one line per check."""

from __future__ import annotations

import torch

from bpnp import geometry as G


def main() -> None:
    torch.manual_seed(0)
    K = torch.tensor([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    R = G.axis_angle_to_matrix(torch.randn(3, dtype=torch.float64))
    X = torch.randn(100, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 0.0, 6.0], dtype=torch.float64)
    uv = G.project_points(X, R, t, K)
    bearings = G.pixels_to_bearings(uv, K)
    Xc = G.transform_points(R, t, X)
    cos = (bearings * Xc / Xc.norm(dim=-1, keepdim=True)).sum(-1)
    worst = torch.rad2deg(cos.clamp(max=1).acos()).max()
    print(f"projected {len(X)} points; bearing round-trip max angle {worst:.2e} deg")
    omega = G.matrix_to_axis_angle(R)
    print(f"axis-angle round trip error {G.rotation_error_deg(G.axis_angle_to_matrix(omega), R):.2e} deg")


if __name__ == "__main__":
    main()
