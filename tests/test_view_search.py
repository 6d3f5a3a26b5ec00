import math

import torch

from bpnp.data import ObjectProtocol, SyntheticDataset, collate
from bpnp.geometry import normalized_to_bearings, pixels_to_normalized, rotation_angle
from bpnp.geometry.view_search import (
    canonical_camera,
    dense_points,
    perturb_rotation,
    rotation_grid,
    view_search,
)


def _random_rotations(n: int, seed: int) -> torch.Tensor:
    q = torch.nn.functional.normalize(
        torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)), dim=-1
    )
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
         2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
         2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1
    ).reshape(n, 3, 3)  # fmt: skip


def test_canonical_camera_puts_the_mean_bearing_on_the_optical_axis():
    b = torch.nn.functional.normalize(torch.randn(3, 20, 3) + torch.tensor([0.5, -0.3, 2.0]), dim=-1)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 15:] = False
    R = canonical_camera(b, mask)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-6, rtol=0)
    for i in range(3):
        mean = torch.nn.functional.normalize(b[i][mask[i]].mean(0), dim=0)
        torch.testing.assert_close(R[i] @ mean, torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)


def test_rotation_grid_covers_so3():
    grid = rotation_grid(100, 24, torch.float64)
    assert grid.shape == (2400, 3, 3)
    torch.testing.assert_close(torch.linalg.det(grid), torch.ones(2400, dtype=torch.float64))
    R = _random_rotations(300, 0).double()
    nearest = rotation_angle(R[:, None], grid[None]).amin(1)
    # 2400 rotations: every rotation lies within about 25 degrees of one of them.
    assert math.degrees(nearest.max()) < 25.0


def test_perturb_rotation_stays_within_its_angle():
    R = _random_rotations(500, 1)
    Rp = perturb_rotation(R, 30.0, torch.Generator().manual_seed(0))
    angle = torch.rad2deg(rotation_angle(Rp.double(), R.double()))
    assert angle.max() <= 30.0 + 1e-3 and angle.min() < 3.0 and angle.mean() > 10.0


def test_dense_points_drop_uniform_clutter():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(1, 200, generator=g) * 2 * math.pi
    circle = torch.stack([0.1 * t.cos(), 0.1 * t.sin()], -1)
    clutter = torch.rand(1, 60, 2, generator=g) * 4 - 2
    x = torch.cat([circle, clutter], 1)
    keep = dense_points(x, torch.ones(1, 260, dtype=torch.bool))
    assert keep[0, :200].all()
    assert keep[0, 200:].float().mean() < 0.1


def test_view_search_finds_the_camera_rotation_up_to_a_few_degrees():
    ds = SyntheticDataset(
        num_samples=8,
        split="test",
        seed=3,
        protocol=ObjectProtocol(num_points=256, distance_range=(1.4, 2.8)),
    )
    b = collate([ds[i] for i in range(8)])
    bearings = normalized_to_bearings(pixels_to_normalized(b.points2d, b.K))
    R_view, R_c = view_search(
        bearings, b.points3d, b.mask2d, b.mask3d, generator=torch.Generator().manual_seed(0)
    )
    err = torch.rad2deg(rotation_angle(R_c.transpose(1, 2) @ R_view, b.R))
    # Uniformly random rotations: a random guess is within 10 degrees about 0.2 % of the time.
    assert (err < 10.0).sum() >= 5, err
