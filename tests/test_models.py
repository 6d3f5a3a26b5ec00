import math

import pytest
import torch

from bpnp.data import SyntheticDataset, collate
from bpnp.models import (
    BlindPnPNet,
    NetConfig,
    PointEncoder,
    masked_context_norm,
    normalise_cloud,
    topk_matches,
)


def test_masked_context_norm_equals_instance_norm_on_valid_points():
    x = torch.randn(2, 5, 9, dtype=torch.float64)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    y = masked_context_norm(x, mask, eps=0.0)
    ref0 = torch.nn.functional.instance_norm(x[:1], eps=0.0)
    ref1 = torch.nn.functional.instance_norm(x[1:, :, :6], eps=0.0)
    torch.testing.assert_close(y[:1], ref0)
    torch.testing.assert_close(y[1:, :, :6], ref1)
    assert (y[1, :, 6:] == 0).all()


@pytest.mark.parametrize("knn", [0, 4])
def test_encoder_ignores_padding_and_outputs_unit_features(knn):
    torch.manual_seed(0)
    enc = PointEncoder(3, channels=16, blocks=2, out_dim=8, knn=knn).double()
    x = torch.randn(1, 12, 3, dtype=torch.float64)
    padded = torch.cat([x, 100 * torch.randn(1, 5, 3, dtype=torch.float64)], dim=1)
    mask = torch.tensor([[True] * 12 + [False] * 5])
    f_alone = enc(x, torch.ones(1, 12, dtype=torch.bool))
    f_pad = enc(padded, mask)
    torch.testing.assert_close(f_pad[:, :12], f_alone)
    torch.testing.assert_close(f_alone.norm(dim=-1), torch.ones(1, 12, dtype=torch.float64))
    assert (f_pad[:, 12:] == 0).all()


def test_normalise_cloud_centres_and_scales():
    pts = torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0], [0, 3.0, 0], [50.0, 50, 50]]]) + 2.0
    mask = torch.tensor([[True, True, True, False]])
    p, centre, scale = normalise_cloud(pts, mask)
    torch.testing.assert_close(centre, torch.tensor([[2.0, 3.0, 2.0]]))
    expected = math.sqrt((2 + 2 + 4) / 3)  # RMS distance to the centre (0, 1, 0) + 2
    assert scale.item() == pytest.approx(expected)
    assert (p[0, 3] == 0).all()


def test_topk_matches_orders_scores():
    P = torch.tensor([[[0.1, 0.5], [0.3, 0.0]]])
    rows, cols, scores = topk_matches(P, 3)
    assert rows.tolist() == [[0, 1, 0]] and cols.tolist() == [[1, 0, 0]]
    torch.testing.assert_close(scores, torch.tensor([[0.5, 0.3, 0.1]]))


@pytest.mark.parametrize(
    "cfg",
    [
        NetConfig(blocks=1, channels=16, feature_dim=16),
        NetConfig(
            blocks=1,
            channels=16,
            feature_dim=16,
            knn=4,
            attention_layers=1,
            dustbin=True,
            learn_temperature=True,
            use_pnp=False,
        ),
    ],
)
def test_network_forward_backward_and_predict(cfg):
    torch.manual_seed(0)
    net = BlindPnPNet(cfg)
    samples = [SyntheticDataset(num_samples=2, num_points=n, seed=1)[i] for i, n in enumerate([20, 20])]
    samples[1].points2d, samples[1].match = samples[1].points2d[:15], samples[1].match[:15]
    b = collate(samples)
    out = net(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d)
    assert out.P.shape == (2, 20, 20)
    if cfg.dustbin:
        assert out.P_full.shape == (2, 21, 21)
    # padded rows carry no mass, and the plan is a joint distribution over real pairs (+ dustbin)
    assert (out.P[1, 15:] == 0).all()
    torch.testing.assert_close(out.P_full.sum((1, 2)), torch.ones(2))
    assert out.R.shape == (2, 3, 3) and out.valid.shape == (2,)
    out.P.sum().backward()
    grads = [p.grad for p in net.encoder2d.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    pred = net.predict(b.points2d[0], b.points3d[0], b.K[0])
    assert pred["R"].shape == (3, 3) and pred["matches"].shape[-1] == 2 and pred["P"].shape == (20, 20)
    with torch.inference_mode():
        assert torch.isfinite(net(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d, with_pose=False).P).all()


def test_autocast_keeps_the_geometric_layers_in_float32():
    torch.manual_seed(0)
    net = BlindPnPNet(NetConfig(blocks=1, channels=16, feature_dim=16, ransac_iterations=50))
    b = collate([SyntheticDataset(num_samples=2, num_points=24, seed=2)[i] for i in range(2)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d)
    assert out.M.dtype == torch.bfloat16  # the encoders and the cost ran in bfloat16
    assert out.P.dtype == torch.float32 and out.R.dtype == torch.float32
    torch.testing.assert_close(out.P.sum((1, 2)), torch.ones(2))
    assert torch.isfinite(out.R).all() and torch.isfinite(out.t).all()


def test_compiled_encoders_match_eager():
    torch.manual_seed(0)
    eager = BlindPnPNet(NetConfig(blocks=1, channels=8, feature_dim=8, knn=3))
    compiled = BlindPnPNet(NetConfig(blocks=1, channels=8, feature_dim=8, knn=3, compile_encoders=True))
    compiled.load_state_dict(eager.state_dict())
    x, mask = torch.randn(2, 10, 3), torch.ones(2, 10, dtype=torch.bool)
    torch.testing.assert_close(compiled.encoder2d(x, mask), eager.encoder2d(x, mask), atol=1e-5, rtol=1e-5)
