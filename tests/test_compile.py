"""The layers under ``torch.compile``: same plan, pose and gradients as eager.

``aot_eager`` traces the graph with TorchDynamo and AOTAutograd (the steps inductor builds on) without
generating code, so the test runs in seconds on any CPU; ``tests/test_models.py`` compiles the
encoders with the default backend.
"""

import torch

from bpnp.geometry import axis_angle_to_matrix
from bpnp.nodes import sinkhorn, weighted_pnp

F64 = torch.float64


def test_both_layers_compile_and_match_eager_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    B, n = 2, 30
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=F64))
    t = torch.tensor([0.0, 0.0, 6.0], dtype=F64).expand(B, 3)
    X = torch.rand(B, n, 3, generator=g, dtype=F64) * 2 - 1
    Xc = X @ R.mT + t[:, None]
    x = Xc[..., :2] / Xc[..., 2:]
    M0 = torch.rand(B, n, n, generator=g, dtype=F64) + 2.0 * (1 - torch.eye(n, dtype=F64))

    def layers(M):
        P = sinkhorn(M, gamma=5.0, max_iter=100)
        res = weighted_pnp(x, X, P, pose_init=(R, t))
        return P, res.R, res.t

    def run(fn):
        M = M0.clone().requires_grad_()
        P, R_out, t_out = fn(M)
        (R_out.sum() + t_out.sum() + (P**2).sum()).backward()
        return P.detach(), R_out.detach(), t_out.detach(), M.grad

    torch._dynamo.reset()
    compiled = run(torch.compile(layers, backend="aot_eager"))
    for c, e in zip(compiled, run(layers), strict=True):
        torch.testing.assert_close(c, e, atol=1e-12, rtol=0)
    assert compiled[3].abs().sum() > 0  # gradients reach the cost through both layers
