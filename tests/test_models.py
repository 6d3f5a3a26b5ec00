import io
import math

import pytest
import torch

from bpnp.data import ObjectProtocol, SyntheticDataset, collate
from bpnp.geometry import rotation_error_deg
from bpnp.models import (
    BlindPnPNet,
    NetConfig,
    NetworkOutput,
    PointEncoder,
    exact_top_pairs,
    masked_context_norm,
    normalise_cloud,
)
from bpnp.models.pretrained import load_pretrained
from bpnp.nodes import RansacOptions, SolverOptions
from bpnp.training.losses import match_matrix


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


def test_exact_top_pairs_orders_scores():
    P = torch.tensor([[[0.1, 0.5], [0.3, 0.0]]])
    rows, cols, scores = exact_top_pairs(P, 3)
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
    samples = [
        SyntheticDataset(num_samples=2, seed=1, protocol=ObjectProtocol(num_points=n))[i]
        for i, n in enumerate([20, 20])
    ]
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_geometry_and_cost_accurate(dtype):
    torch.manual_seed(0)
    net = BlindPnPNet(
        NetConfig(
            blocks=1,
            channels=16,
            feature_dim=16,
            ransac={"iterations": 50},
            pnp={"objective": "reprojection"},
        )
    )
    b = collate(
        [SyntheticDataset(num_samples=2, seed=2, protocol=ObjectProtocol(num_points=24))[i] for i in range(2)]
    )
    _, x2d_ref = net.match_cost(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d)
    f = torch.nn.functional.normalize(torch.randn(2, 24, 16), dim=-1)
    g = torch.nn.functional.normalize(f + 1e-3 * torch.randn(2, 24, 16), dim=-1)  # near matches
    cost_ref = net.cost(f, g)
    with torch.autocast("cpu", dtype=dtype):
        _, x2d = net.match_cost(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d)
        cost = net.cost(f, g)
        # The pose stage on the true matches, as the forward pass runs it.
        out = NetworkOutput(P=match_matrix(b.match, 24).float() / 24, P_full=None, M=None)
        net._pose(out, x2d, b.points3d, b.mask2d, b.mask3d)
    assert x2d.dtype == torch.float32 and cost.dtype == torch.float32
    torch.testing.assert_close(x2d, x2d_ref, rtol=0, atol=1e-7)
    assert (cost - cost_ref).abs().max() < 1e-5
    assert rotation_error_deg(out.R.double(), b.R.double()).max() < 1e-4


def test_cost_gradient_is_finite_at_identical_features():
    net = BlindPnPNet(NetConfig(blocks=1, channels=8, feature_dim=8))
    f = torch.nn.functional.normalize(torch.randn(1, 5, 8), dim=-1).requires_grad_()
    net.cost(f, f.detach()).sum().backward()
    assert torch.isfinite(f.grad).all()


def test_compiled_encoders_match_eager():
    torch.manual_seed(0)
    eager = BlindPnPNet(NetConfig(blocks=1, channels=8, feature_dim=8, knn=3))
    compiled = BlindPnPNet(NetConfig(blocks=1, channels=8, feature_dim=8, knn=3, compile_encoders=True))
    compiled.load_state_dict(eager.state_dict())
    x, mask = torch.randn(2, 10, 3), torch.ones(2, 10, dtype=torch.bool)
    torch.testing.assert_close(compiled.encoder2d(x, mask), eager.encoder2d(x, mask), atol=1e-5, rtol=1e-5)


def test_bearing_input_is_the_reference_camera_bearing_and_frame_free():
    from bpnp.geometry import axis_angle_to_matrix
    from bpnp.models.network import reference_bearings

    # hand-computed: the point (1, 0, 1) seen from the identity camera at t = (0, 0, 1) is at (1, 0, 2)
    X = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
    ref = (torch.eye(3)[None], torch.tensor([[0.0, 0.0, 1.0]]))
    b = reference_bearings(X, torch.tensor([[True, False]]), ref)
    torch.testing.assert_close(
        b, torch.tensor([[[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]]]) / torch.tensor([5.0**0.5, 1.0])[:, None]
    )
    with pytest.raises(ValueError, match="reference view"):
        reference_bearings(X, torch.ones(1, 2, dtype=torch.bool), None)
    with pytest.raises(ValueError, match="view_search"):
        NetConfig(input3d="bearings", view_search=True)
    with pytest.raises(ValueError, match="input3d"):
        NetConfig(input3d="coords")

    # The cost depends on the points in the reference camera only: moving the world frame (points,
    # query pose and reference pose together, by a rigid motion and a scale) changes nothing.
    torch.manual_seed(0)
    net = BlindPnPNet(NetConfig(blocks=1, channels=16, feature_dim=16, knn=4, input3d="bearings"))
    samples = [
        SyntheticDataset(
            num_samples=2, seed=1, protocol=ObjectProtocol(num_points=20, reference_view_deg=20.0)
        )[i]
        for i in range(2)
    ]
    b = collate(samples)
    M = net.match_cost(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d, ref=b.ref_view)[0]
    Q = axis_angle_to_matrix(torch.tensor([[0.3, -1.2, 0.5]])).expand(2, 3, 3)
    c, s = torch.tensor([2.0, -1.0, 5.0]), 3.0
    X2 = s * b.points3d @ Q.transpose(1, 2) + c  # X' = s Q X + c, so X = Q^T (X' - c) / s
    R2 = b.R_ref @ Q.transpose(1, 2)
    t2 = s * b.t_ref - (R2 @ c[:, None]).squeeze(-1)  # R2 X' + t2 = s (R_ref X + t_ref)
    M2 = net.match_cost(b.points2d, X2, b.K, b.mask2d, b.mask3d, ref=(R2, t2))[0]
    torch.testing.assert_close(M2, M, atol=1e-4, rtol=1e-4)
    # the world-coordinate input, by contrast, sees the rotation
    world = BlindPnPNet(NetConfig(blocks=1, channels=16, feature_dim=16, knn=4))
    Mw = world.match_cost(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d)[0]
    assert (world.match_cost(b.points2d, X2, b.K, b.mask2d, b.mask3d)[0] - Mw).abs().max() > 1e-3
    out = net(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d, ref=b.ref_view)
    assert torch.isfinite(out.R).all()
    pred = net.predict(b.points2d[0], b.points3d[0], b.K[0], ref=(b.R_ref[0], b.t_ref[0]))
    assert pred["R"].shape == (3, 3)


def test_bearing_prior_adds_the_scaled_angle_to_the_cost():
    torch.manual_seed(0)
    cfg = dict(blocks=1, channels=16, feature_dim=16, knn=4, input3d="bearings", cost_clip=100.0)
    with_prior = BlindPnPNet(NetConfig(**cfg, bearing_prior=10.0))
    plain = BlindPnPNet(NetConfig(**cfg))
    plain.load_state_dict(with_prior.state_dict(), strict=False)
    b = collate(
        [
            SyntheticDataset(
                num_samples=1, seed=2, protocol=ObjectProtocol(num_points=20, reference_view_deg=10.0)
            )[0]
        ]
    )
    M1 = with_prior.match_cost(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d, ref=b.ref_view)[0]
    M0 = plain.match_cost(b.points2d, b.points3d, b.K, b.mask2d, b.mask3d, ref=b.ref_view)[0]
    # independent: the angle between the query bearing and the reference-view bearing, in float64
    from bpnp.geometry import normalized_to_bearings, pixels_to_normalized

    q = normalized_to_bearings(pixels_to_normalized(b.points2d.double(), b.K.double()))
    X = b.points3d.double() @ b.R_ref.double().transpose(1, 2) + b.t_ref.double()[:, None]
    r = X / X.norm(dim=-1, keepdim=True)
    angle = torch.acos((q @ r.transpose(1, 2)).clamp(-1, 1))
    # float32 resolves the angle from its cosine to about 1e-4 rad near 0
    torch.testing.assert_close((M1 - M0).double(), 10.0 * angle, atol=1e-3, rtol=1e-4)
    (M1.sum()).backward()
    assert with_prior.log_prior_scale.grad is not None and with_prior.log_prior_scale.grad > 0
    with pytest.raises(ValueError, match="bearing_prior"):
        NetConfig(bearing_prior=10.0)


def test_reference_initialisation_picks_the_pose_with_more_inliers():
    torch.manual_seed(0)
    net = BlindPnPNet(
        NetConfig(blocks=1, channels=16, feature_dim=16, reference_init=True, ransac={"iterations": 200})
    )
    s = SyntheticDataset(num_samples=1, seed=3, protocol=ObjectProtocol(num_points=60, noise_px=0.5))[0]
    b = collate([s])
    from bpnp.geometry import pixels_to_normalized
    from bpnp.geometry.view_search import perturb_rotation

    x2d = pixels_to_normalized(b.points2d, b.K)
    truth = match_matrix(b.match, b.points3d.shape[1]).float()  # the true pairs: RANSAC finds the pose
    far = (
        perturb_rotation(b.R, 1.0, torch.Generator().manual_seed(0))
        @ b.R.new_tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
        b.t,
    )  # 90 degrees off: no inlier
    R, t = net._reference_or_ransac(truth, x2d, b.points3d, b.mask2d, b.mask3d, far)
    assert rotation_error_deg(R, b.R).item() < 1.0
    # 10 true pairs among 60: too few for RANSAC, enough for the reference pose (here the truth)
    few = truth.clone()
    rows = torch.nonzero(b.match[0] >= 0).squeeze(1)[10:]
    few[0, rows] = torch.roll(truth[0, rows], 7, dims=1)
    R, t = net._reference_or_ransac(few, x2d, b.points3d, b.mask2d, b.mask3d, (b.R, b.t))
    assert torch.equal(R, b.R) and torch.equal(t, b.t)
    # with a far reference, the one-to-one assignment of a cost that knows the pairs wins
    cost = 1.0 - truth
    R, t = net._reference_or_ransac(few, x2d, b.points3d, b.mask2d, b.mask3d, far, cost)
    assert rotation_error_deg(R, b.R).item() > 5.0  # without hungarian_init the cost is not used
    net.set_pose_stage(hungarian_init=True)
    R, t = net._reference_or_ransac(few, x2d, b.points3d, b.mask2d, b.mask3d, far, cost)
    assert rotation_error_deg(R, b.R).item() < 1.0
    with pytest.raises(ValueError, match="pose-stage settings"):
        net.set_pose_stage(blocks=3)
    net.set_pose_stage(reference_init=False)
    assert not net.config.reference_init


def test_candidates_count_support_on_the_one_to_one_assignment_when_asked():
    torch.manual_seed(0)
    net = BlindPnPNet(
        NetConfig(blocks=1, channels=16, feature_dim=16, reference_init=True, hungarian_init=True,
                  ransac={"iterations": 200})
    )  # fmt: skip
    b = collate(
        [SyntheticDataset(num_samples=1, seed=3, protocol=ObjectProtocol(num_points=60, noise_px=0.5))[0]]
    )
    from bpnp.geometry import pixels_to_normalized, project_normalized
    from bpnp.geometry.view_search import perturb_rotation

    x2d = pixels_to_normalized(b.points2d, b.K)
    far = (
        perturb_rotation(b.R, 1.0, torch.Generator().manual_seed(0))
        @ b.R.new_tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
        b.t,
    )  # 90 degrees off the truth
    # Ghost keypoints: three exact images under the far pose of each of 30 points in front of it.
    front = torch.nonzero((b.points3d[0] @ far[0][0].T + far[1][0])[:, 2] > 0).squeeze(1)[:30]
    ghosts = project_normalized(b.points3d[:, front] @ far[0].mT + far[1][:, None]).repeat(1, 3, 1)
    x = torch.cat([x2d, ghosts], 1)
    m, n = x.shape[1], b.points3d.shape[1]
    # The plan: every keypoint's top pair, the true ones and the ghosts' (which repeat 3D points).
    P = torch.zeros(1, m, n)
    truth = match_matrix(b.match, n)[0].float()
    P[0, :60] = 0.5 * truth
    P[0, 60 + torch.arange(90), front.repeat(3)] = 1.0
    # The cost knows the true pairs; the one-to-one assignment cannot use a 3D point twice.
    cost = torch.ones(1, m, n)
    cost[0, :60] = 1.0 - truth
    masks = torch.ones(1, m, dtype=torch.bool), b.mask3d
    R, t = net._reference_or_ransac(P, x, b.points3d, *masks, far, cost)
    assert rotation_error_deg(R, far[0]).item() < 1.0  # 90 ghost inliers against 60 true pairs
    net.set_pose_stage(candidate_support="one_to_one")
    R, t = net._reference_or_ransac(P, x, b.points3d, *masks, far, cost)
    assert rotation_error_deg(R, b.R).item() < 1.0
    with pytest.raises(ValueError, match="candidate_support"):
        NetConfig(candidate_support="plan")


def test_rematching_uses_the_previous_pose_as_the_reference_view():
    torch.manual_seed(0)
    cfg = dict(blocks=1, channels=16, feature_dim=16, knn=4, input3d="bearings", bearing_prior=10.0,
               reference_init=True, ransac={"iterations": 100})  # fmt: skip
    one, two = BlindPnPNet(NetConfig(**cfg)), BlindPnPNet(NetConfig(**cfg, rematch_passes=1))
    two.load_state_dict(one.state_dict())
    ds = SyntheticDataset(
        num_samples=2, seed=6, protocol=ObjectProtocol(num_points=30, reference_view_deg=10.0, noise_px=0.5)
    )
    b = collate([ds[0], ds[1]])
    args = (b.points2d, b.points3d, b.K, b.mask2d, b.mask3d)
    with torch.no_grad():
        first = one(*args, ref=b.ref_view)
        out = two(*args, ref=b.ref_view)
        # the second pass matched against the first pass's refined pose
        torch.testing.assert_close(out.ref[0], first.R)
        torch.testing.assert_close(out.ref[1], first.t)
        again = two(*args, ref=b.ref_view, refine=False)
        two.refine_pose(again, b.points3d, b.mask2d, b.mask3d)
    torch.testing.assert_close(again.R, out.R)  # two stages timed apart: the same answer
    torch.testing.assert_close(again.t, out.t)


def test_one_to_one_pairs_hand_computed():
    from bpnp.models.network import one_to_one_pairs

    # rows prefer column 0, but the cheapest one-to-one assignment is (0, 1), (1, 0): 0.2 + 0.1
    M = torch.tensor([[[0.1, 0.2, 9.0], [0.1, 5.0, 9.0]]])
    rows, cols, w = one_to_one_pairs(
        M, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool), 5.0
    )
    pairs = {(int(r), int(c)) for r, c, k in zip(rows[0], cols[0], w[0], strict=True) if k > 0}
    assert pairs == {(0, 1), (1, 0)}
    # a padded column is never assigned, and a pair at the clip is dropped
    mask3d = torch.tensor([[False, True, True]])
    rows, cols, w = one_to_one_pairs(M, torch.ones(1, 2, dtype=torch.bool), mask3d, 5.0)
    pairs = {(int(r), int(c)) for r, c, k in zip(rows[0], cols[0], w[0], strict=True) if k > 0}
    assert pairs == {(0, 1)}  # row 1 gets column 2, at 9.0: beyond the clip


LEGACY = {
    "blocks": 1, "pnp_objective": "reprojection", "pnp_robust": "tanh", "pnp_robust_scale": 0.003,
    "pnp_sparse_topk": 64, "ransac_init": "opencv", "ransac_threshold": 0.004, "ransac_iterations": 200,
}  # fmt: skip


def test_older_flat_settings_load_into_the_nested_options():
    """Configs and checkpoints of older versions name the PnP and RANSAC settings flat (pnp_*,
    ransac_*): a dict, a pickled config object and pose-stage overrides all read them."""
    cfg = NetConfig.from_dict(LEGACY)
    assert cfg.pnp == SolverOptions(objective="reprojection", robust="tanh", robust_scale=0.003, max_iter=30)
    assert cfg.ransac == RansacOptions(backend="opencv", threshold=0.004, iterations=200)
    assert cfg.pnp_sparse_topk == 64 and cfg.blocks == 1
    # A config object pickled with the old fields (its state is the old field dict).
    old = NetConfig.__new__(NetConfig)
    old.__dict__.update({**NetConfig.from_dict({"blocks": 1}).__dict__, **LEGACY})
    del old.__dict__["pnp"], old.__dict__["ransac"]
    buf = io.BytesIO()
    torch.save({"net": old}, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([NetConfig, SolverOptions, RansacOptions]):
        loaded = torch.load(buf, weights_only=True)["net"]
    assert loaded == cfg
    net = BlindPnPNet(NetConfig(blocks=1, channels=16, feature_dim=16))
    net.set_pose_stage(ransac_threshold=0.02, pnp={"max_iter": 5})
    assert net.config.ransac.threshold == 0.02 and net.config.ransac.iterations == 1000
    assert net.config.pnp == SolverOptions(max_iter=5)
    with pytest.raises(ValueError, match="net.ransac: unknown settings"):
        net.set_pose_stage(ransac={"treshold": 0.02})
    with pytest.raises(ValueError, match="net.ransac.topk"):
        NetConfig(ransac={"topk": 10})
    # The shipped real-scene network stored its settings flat.
    colmap = load_pretrained("colmap").config
    assert colmap.ransac.threshold == 0.004 and colmap.pnp.robust == "tanh"
