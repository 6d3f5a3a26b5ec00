"""The pose loss reaches the encoders through the PnP and Sinkhorn layers, on its own schedule."""

import pytest
import torch

from bpnp.data import ObjectProtocol, SyntheticDataset, collate
from bpnp.models import NetConfig
from bpnp.training import BlindPnPModule
from bpnp.training.losses import inlier_mass

NET = NetConfig(
    blocks=1, channels=16, feature_dim=16, knn=4, pnp_sparse_topk=16, ransac={"iterations": 100},
    pnp={"objective": "reprojection", "robust": "tanh", "robust_scale": 0.01},
)  # fmt: skip


def _batch():
    ds = SyntheticDataset(
        num_samples=4, seed=1, protocol=ObjectProtocol(num_points=32, max_rotation_deg=45.0)
    )
    return collate([ds[i] for i in range(4)])


def test_pose_loss_alone_moves_both_encoders():
    torch.manual_seed(0)
    module = BlindPnPModule(net=NET, pose_loss_start_epoch=0, pose_loss_ramp_epochs=1)
    batch = _batch()
    out = module(batch, with_pose=True)
    assert out.valid.any()
    terms = module.losses(batch, out, 1.0)
    (terms["loss_rot"] + terms["loss_trans"]).backward()
    for encoder in (module.net.encoder2d, module.net.encoder3d):
        grads = [p.grad for p in encoder.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    before = [p.detach().clone() for p in module.net.encoder2d.parameters()]
    torch.optim.SGD(module.parameters(), lr=1e-2).step()
    moved = [(p - b).abs().max() for p, b in zip(module.net.encoder2d.parameters(), before, strict=True)]
    assert max(moved) > 0


def test_translation_loss_is_scale_free():
    torch.manual_seed(0)
    module = BlindPnPModule(net=NET, pose_loss_start_epoch=0, pose_loss_ramp_epochs=1)
    batch = _batch()
    out = module(batch, with_pose=True)
    # The same absolute error in a scene ten times larger is ten times smaller.
    small = module.losses(batch, type(out)(**{**out.__dict__, "t": batch.t + 0.3}), 1.0)["loss_trans"]
    batch.points3d, batch.t = batch.points3d * 10, batch.t * 10
    big = module.losses(batch, type(out)(**{**out.__dict__, "t": batch.t + 0.3}), 1.0)["loss_trans"]
    ref = module.losses(batch, type(out)(**{**out.__dict__, "t": batch.t + 3.0}), 1.0)["loss_trans"]
    assert 0 < big < small
    torch.testing.assert_close(ref, small, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("unit", "epoch", "step", "expected"), [
    ("epoch", 2, 10_000, 0.5), ("step", 3, 100, 0.0), ("step", 0, 249, 0.5), ("step", 0, 5000, 1.0),
])  # fmt: skip
def test_pose_weight_follows_its_unit(unit, epoch, step, expected, monkeypatch):
    start, ramp = (2, 2) if unit == "epoch" else (200, 100)
    module = BlindPnPModule(
        net=NET, pose_loss_start_epoch=start, pose_loss_ramp_epochs=ramp, pose_loss_unit=unit
    )
    monkeypatch.setattr(BlindPnPModule, "current_epoch", property(lambda self: epoch))
    monkeypatch.setattr(BlindPnPModule, "global_step", property(lambda self: step))
    assert module.current_pose_weight() == pytest.approx(expected)


def test_switching_the_pose_loss_on_keeps_the_matching():
    torch.manual_seed(0)
    module = BlindPnPModule(net=NET, lr=3e-3)
    train = SyntheticDataset(
        num_samples=64, seed=4, protocol=ObjectProtocol(num_points=32, max_rotation_deg=45.0)
    )
    val_set = SyntheticDataset(
        num_samples=16, split="val", seed=4, protocol=ObjectProtocol(num_points=32, max_rotation_deg=45.0)
    )
    val = collate([val_set[i] for i in range(16)])
    batches = [collate([train[i] for i in range(k, k + 8)]) for k in range(0, 64, 8)]
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)

    def run(steps: int, w_pose: float) -> float:
        for step in range(steps):
            batch = batches[step % len(batches)]
            loss = module.losses(batch, module(batch, with_pose=w_pose > 0), w_pose)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float(inlier_mass(module(val, with_pose=False).P, val.match).mean())

    before = run(80, 0.0)
    assert before > 4 / 32  # well above chance (1/32): the matching was learned
    after = run(24, 0.1)
    assert after >= 0.9 * before, (before, after)


def test_validation_metrics_get_the_pairs_not_the_plan(monkeypatch):
    # the (B, m + 1, n + 1) plan is not needed by the metrics: it must not be copied to the CPU per batch
    module = BlindPnPModule(net=NET).eval()
    seen = []
    monkeypatch.setattr(module.val_metrics, "update", lambda batch, out: seen.append(out))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    with torch.no_grad():
        module._eval_step(_batch(), module.val_metrics, "val")
    (out,) = seen
    assert out.plan is None and out.pairs is not None and out.pairs.shape[0] == 4
    assert module.method_output(module(_batch())).plan is not None  # prediction still has it
