"""Overfitting a handful of problems through the whole network (encoders, Sinkhorn, RANSAC, weighted
PnP layer) proves that gradients flow end to end and that the pose stage reads the learned plan."""

import time

import torch

from bpnp.data import ObjectProtocol, SyntheticDataset, collate
from bpnp.geometry import rotation_error_deg
from bpnp.models import BlindPnPNet, NetConfig
from bpnp.training.losses import correspondence_loss, rotation_loss, translation_loss


def test_overfit_eight_problems_reaches_two_degrees_within_a_minute():
    torch.manual_seed(0)
    batch = collate(
        [SyntheticDataset(num_samples=8, seed=3, protocol=ObjectProtocol(num_points=64))[i] for i in range(8)]
    )
    net = BlindPnPNet(
        NetConfig(knn=10, blocks=2, sinkhorn_iters=50, ransac={"iterations": 200}, pnp_sparse_topk=64)
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    args = (batch.points2d, batch.points3d, batch.K, batch.mask2d, batch.mask3d)
    start, errors, step = time.monotonic(), None, 0
    while time.monotonic() - start < 60:
        with_pose = step % 10 == 9  # the pose terms every tenth step: RANSAC is the costly stage
        out = net(*args, with_pose=with_pose)
        loss = correspondence_loss(out.P, batch.match)
        if with_pose:
            errors = rotation_error_deg(out.R.detach(), batch.R)
            if errors.median() < 2.0 and out.valid.all():
                break
            loss = loss + 0.1 * (rotation_loss(out.R, batch.R) + translation_loss(out.t, batch.t)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    assert errors is not None
    # every parameter of both encoders received gradient
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert errors.median() < 2.0, f"median rotation error {errors.median():.2f} deg after {step} steps"
