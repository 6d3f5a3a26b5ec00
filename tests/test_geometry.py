import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from bpnp import geometry as G

torch.manual_seed(0)


def random_rotations(n: int, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(Rotation.random(n, random_state=0).as_matrix(), dtype=dtype)


def test_skew_vee_and_cross_product():
    v, w = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    S = G.skew(v)
    torch.testing.assert_close((S @ w[..., None]).squeeze(-1), torch.linalg.cross(v, w))
    torch.testing.assert_close(G.vee(S), v)
    torch.testing.assert_close(S, -S.transpose(-1, -2))


def test_axis_angle_known_values():
    # 90 degrees about z maps x to y.
    R = G.axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(R, expected, atol=1e-15, rtol=0)
    # 180 degrees about x.
    R = G.axis_angle_to_matrix(torch.tensor([math.pi, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(R, torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)))
    # zero vector -> identity.
    torch.testing.assert_close(G.axis_angle_to_matrix(torch.zeros(3)), torch.eye(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_axis_angle_matches_scipy(dtype):
    rv = torch.as_tensor(Rotation.random(64, random_state=1).as_rotvec(), dtype=dtype)
    R = G.axis_angle_to_matrix(rv)
    ref = torch.as_tensor(Rotation.from_rotvec(rv.double().numpy()).as_matrix(), dtype=dtype)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(R, ref, atol=tol, rtol=0)
    assert R.dtype == dtype


def test_matrix_to_axis_angle_round_trip_all_angles():
    # angles spanning 0, tiny, generic and pi - tiny
    axes = torch.nn.functional.normalize(torch.randn(7, 3, dtype=torch.float64), dim=-1)
    angles = torch.tensor([0.0, 1e-9, 1e-4, 0.5, 2.0, math.pi - 1e-4, math.pi - 1e-7], dtype=torch.float64)
    rv = axes * angles[:, None]
    R = G.axis_angle_to_matrix(rv)
    rv2 = G.matrix_to_axis_angle(R)
    torch.testing.assert_close(rv2, rv, atol=1e-7, rtol=0)
    torch.testing.assert_close(G.axis_angle_to_matrix(rv2), R, atol=1e-12, rtol=0)
    # scipy agrees on the angle for random rotations.
    Rr = random_rotations(50)
    ref = torch.as_tensor(Rotation.from_matrix(Rr.numpy()).as_rotvec())
    torch.testing.assert_close(G.matrix_to_axis_angle(Rr), ref, atol=1e-10, rtol=0)


def test_quaternion_matches_scipy():
    R = random_rotations(20)
    q = G.matrix_to_quaternion(R)
    xyzw = Rotation.from_matrix(R.numpy()).as_quat()
    ref = torch.as_tensor(np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1))
    ref = torch.where(ref[:, :1] < 0, -ref, ref)
    torch.testing.assert_close(q, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("angle", [0.0, 1e-8, 1e-3, 1.0, math.pi - 1e-3, math.pi - 1e-6, math.pi])
def test_axis_angle_to_matrix_gradcheck(angle):
    axis = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64), dim=0)
    omega = (axis * angle).requires_grad_(True)
    assert torch.autograd.gradcheck(G.axis_angle_to_matrix, (omega,), eps=1e-7, atol=1e-6)
    R = G.axis_angle_to_matrix(omega)
    (g,) = torch.autograd.grad(R.sum(), omega)
    assert torch.isfinite(g).all()


def test_exp_derivative_at_zero_is_skew_generator():
    # d/d omega exp([omega]_x) at 0 applied to e_k is [e_k]_x: a closed form.
    omega = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    J = torch.autograd.functional.jacobian(G.so3_exp, omega)  # (3, 3, 3)
    for k in range(3):
        torch.testing.assert_close(J[..., k], G.skew(torch.eye(3, dtype=torch.float64)[k]))


def test_matrix_to_axis_angle_gradcheck():
    R = random_rotations(3).requires_grad_(True)
    assert torch.autograd.gradcheck(G.matrix_to_axis_angle, (R,), eps=1e-7, atol=1e-6)


def test_rotation_error_known_values():
    I = torch.eye(3, dtype=torch.float64)
    for deg in [0.0, 1e-4, 30.0, 90.0, 179.0, 180.0]:
        R = G.axis_angle_to_matrix(torch.tensor([0.0, math.radians(deg), 0.0], dtype=torch.float64))
        err = G.rotation_error_deg(R, I)
        assert abs(err.item() - deg) < 1e-9, (deg, err.item())
    # symmetric and batched over (B, N)
    R1, R2 = random_rotations(6).view(2, 3, 3, 3), random_rotations(6).flip(0).view(2, 3, 3, 3)
    e12, e21 = G.rotation_error_deg(R1, R2), G.rotation_error_deg(R2, R1)
    assert e12.shape == (2, 3)
    torch.testing.assert_close(e12, e21)
    ref = Rotation.from_matrix(R1.reshape(-1, 3, 3).numpy()).inv() * Rotation.from_matrix(
        R2.reshape(-1, 3, 3).numpy()
    )
    torch.testing.assert_close(e12.reshape(-1), torch.as_tensor(np.degrees(ref.magnitude())))


def test_rotation_angle_gradient_finite_at_zero():
    R = random_rotations(1)[0].requires_grad_(True)
    a = G.rotation_angle(R, R.detach())
    (g,) = torch.autograd.grad(a, R)
    assert torch.isfinite(g).all()


def test_pose_compose_invert_apply():
    R1, R2 = random_rotations(4)[:2], random_rotations(4)[2:]
    t1, t2 = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    X = torch.randn(2, 10, 3, dtype=torch.float64)
    R, t = G.compose_poses(R1, t1, R2, t2)
    torch.testing.assert_close(
        G.transform_points(R, t, X), G.transform_points(R1, t1, G.transform_points(R2, t2, X))
    )
    Ri, ti = G.invert_pose(R1, t1)
    torch.testing.assert_close(G.transform_points(Ri, ti, G.transform_points(R1, t1, X)), X)
    # camera centre maps to the camera origin
    c = G.camera_center(R1, t1)
    origin = torch.zeros(2, 1, 3, dtype=torch.float64)
    torch.testing.assert_close(G.transform_points(R1, t1, c[:, None]), origin)


def test_translation_and_center_errors():
    I = torch.eye(3)
    t = torch.tensor([1.0, 2.0, 2.0])
    assert G.translation_error(t, torch.zeros(3)).item() == pytest.approx(3.0)
    # same rotation, centres differ by R^T (t1 - t2)
    Rz = G.axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2]))
    assert G.center_error(Rz, t, Rz, torch.zeros(3)).item() == pytest.approx(3.0)
    assert G.center_error(I, torch.zeros(3), I, torch.zeros(3)).item() == 0.0


def test_camera_round_trips_and_projection():
    K = torch.tensor([[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    uv = torch.rand(2, 3, 50, 2, dtype=torch.float64) * 600
    x = G.pixels_to_normalized(uv, K)
    torch.testing.assert_close(x[..., 0], (uv[..., 0] - 320) / 500)
    torch.testing.assert_close(x[..., 1], (uv[..., 1] - 240) / 480)
    torch.testing.assert_close(G.normalized_to_pixels(x, K), uv)
    b = G.pixels_to_bearings(uv, K)
    torch.testing.assert_close(b.norm(dim=-1), torch.ones(2, 3, 50, dtype=torch.float64))
    torch.testing.assert_close(b[..., :2] / b[..., 2:], x)
    # a point at depth 2 on the ray of uv projects back onto uv
    X_cam = 2.0 * torch.cat([x, torch.ones_like(x[..., :1])], -1)
    torch.testing.assert_close(G.project(X_cam, K), uv)


def test_project_points_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    K = np.array([[700.0, 0, 300], [0, 710.0, 200], [0, 0, 1]])
    rv, t = np.array([0.1, -0.2, 0.3]), np.array([0.2, -0.1, 5.0])
    X = np.random.default_rng(0).normal(size=(20, 3))
    ref, _ = cv2.projectPoints(X, rv, t, K, None)
    Rt = G.axis_angle_to_matrix(torch.as_tensor(rv))
    ours = G.project_points(torch.as_tensor(X), Rt, torch.as_tensor(t), torch.as_tensor(K))
    np.testing.assert_allclose(ours.numpy(), ref[:, 0], atol=1e-9)


def test_broadcasting_batched_K():
    K = torch.eye(3).repeat(4, 1, 1)
    K[:, 0, 0] = torch.arange(1, 5)
    uv = torch.ones(4, 7, 2)
    x = G.pixels_to_normalized(uv, K)
    assert x.shape == (4, 7, 2)
    torch.testing.assert_close(x[:, 0, 0], 1.0 / torch.arange(1, 5).float())


def test_bearing_angles_match_acos_of_the_dot_product():
    from bpnp.geometry import bearing_angles

    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(2, 5, 3, generator=g, dtype=torch.float64), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(2, 7, 3, generator=g, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(bearing_angles(a, b), torch.acos((a @ b.transpose(1, 2)).clamp(-1, 1)))
    assert bearing_angles(a, torch.zeros(2, 1, 3, dtype=torch.float64)).sub(torch.pi / 2).abs().max() < 1e-12
