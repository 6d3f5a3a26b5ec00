"""The layers, the network and a training run on every available device (``device`` fixture: the
CPU, and CUDA where present), against float64 CPU answers."""

import pytest
import torch
from training_utils import CONFIGS, TINY, write_config

from bpnp.cli.train import cli_main
from bpnp.data import ObjectProtocol, SyntheticDataset, collate
from bpnp.geometry import axis_angle_to_matrix, rotation_error_deg
from bpnp.models import BlindPnPNet, NetConfig
from bpnp.nodes import sinkhorn, weighted_pnp

pytestmark = pytest.mark.usefixtures("isolated")
F64 = torch.float64


def _problem(B: int = 3, n: int = 40):
    g = torch.Generator().manual_seed(0)
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=F64))
    t = torch.tensor([0.0, 0.0, 6.0], dtype=F64) + 0.1 * torch.randn(B, 3, generator=g, dtype=F64)
    X = torch.rand(B, n, 3, generator=g, dtype=F64) * 2 - 1
    Xc = X @ R.mT + t[:, None]
    x = Xc[..., :2] / Xc[..., 2:]
    M = torch.rand(B, n, n, generator=g, dtype=F64) + 2.0 * (1 - torch.eye(n, dtype=F64))
    return x, X, M, R, t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layers_on_the_device_match_the_cpu_in_float64(device, dtype):
    x, X, M, R, t = _problem()

    def run(dev, dt):
        Md = M.to(dev, dt).requires_grad_()
        P = sinkhorn(Md, gamma=5.0, max_iter=100)
        res = weighted_pnp(x.to(dev, dt), X.to(dev, dt), P, pose_init=(R.to(dev, dt), t.to(dev, dt)))
        (res.R.sum() + res.t.sum() + (P**2).sum()).backward()
        return [v.detach().to("cpu", F64) for v in (P, res.R, res.t, Md.grad)] + [res.valid.cpu()]

    *ours, valid = run(device, dtype)
    *ref, valid_ref = run("cpu", F64)
    tol = 1e-9 if dtype == F64 else 2e-3
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=tol * max(1.0, b.abs().max().item()), rtol=0)
    assert torch.equal(valid, valid_ref) and valid.all()
    assert rotation_error_deg(ours[1], R).max() < 0.5  # near the truth (the plan is nearly diagonal)


def test_network_forward_on_the_device_matches_the_cpu(device):
    torch.manual_seed(0)
    net = BlindPnPNet(
        NetConfig(blocks=1, channels=16, feature_dim=16, knn=4, ransac={"iterations": 100})
    ).double()
    data = SyntheticDataset(num_samples=2, seed=1, protocol=ObjectProtocol(num_points=40))
    b = collate([data[i] for i in range(len(data))])
    ref = net(b.points2d.double(), b.points3d.double(), b.K.double())
    out = net.to(device)(b.points2d.to(device, F64), b.points3d.to(device, F64), b.K.to(device, F64))
    torch.testing.assert_close(out.P.cpu(), ref.P, atol=1e-9, rtol=0)
    torch.testing.assert_close(out.R.cpu(), ref.R, atol=1e-6, rtol=0)


def test_training_runs_in_bf16_mixed_precision_on_the_device(device, tmp_path):
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    preset = write_config(tmp_path / "trainer.yaml", tmp_path, fast_dev_run=True)
    cli = cli_main([
        "fit", "--config", str(CONFIGS / "synthetic.yaml"), "--config", str(preset), *TINY,
        "--trainer.accelerator", accelerator, "--trainer.precision", "bf16-mixed",
    ])  # fmt: skip
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/rotation_error_deg/q50"])
