import cv2
import numpy as np
import pytest
import torch

from bpnp.data import ObjectProtocol, PointControl, SyntheticDataset
from bpnp.data.synthetic import primitive, sample_surface


def cv2_project(s) -> np.ndarray:
    """Independent projection of a sample's 3D points with OpenCV, (n, 2)."""
    rvec, _ = cv2.Rodrigues(s.R.double().numpy())
    uv, _ = cv2.projectPoints(
        s.points3d.double().numpy(), rvec, s.t.double().numpy(), s.K.double().numpy(), None
    )
    return uv.reshape(-1, 2)


@pytest.mark.parametrize("shapes", [("composite",), ("box", "sphere", "cylinder", "cone", "torus")])
def test_projections_match_opencv_and_stay_in_the_image(shapes):
    ds = SyntheticDataset(
        num_samples=20, shapes=shapes, dtype=torch.float64, protocol=ObjectProtocol(num_points=300)
    )
    for i in range(len(ds)):
        s = ds[i]
        assert s.points2d.shape == (300, 2) and s.points3d.shape == (300, 3) and s.num_inliers == 300
        assert sorted(s.match.tolist()) == list(range(300))  # a permutation: m = n, all paired
        uv = cv2_project(s)
        np.testing.assert_allclose(s.points2d.numpy(), uv[s.match.numpy()], atol=1e-7)
        z = (s.points3d @ s.R.T + s.t)[:, 2]
        assert (z > 0).all()
        w, h = s.image_size
        assert (uv >= 0).all() and (uv[:, 0] <= w).all() and (uv[:, 1] <= h).all()
        torch.testing.assert_close(s.R @ s.R.T, torch.eye(3, dtype=torch.float64))
        assert torch.det(s.R) > 0


def test_2d_set_is_shuffled():
    s = SyntheticDataset(num_samples=1, protocol=ObjectProtocol(num_points=200))[0]
    assert not torch.equal(s.match, torch.arange(200))


def test_deterministic_per_seed_and_index_and_split():
    protocol = ObjectProtocol(num_points=100, noise_px=1.0)

    def make(seed: int, **kw) -> SyntheticDataset:
        return SyntheticDataset(num_samples=10, seed=seed, protocol=protocol, **kw)

    a = make(5, control=PointControl(outlier_rate_2d=0.2))
    b = make(5, control=PointControl(outlier_rate_2d=0.2))
    for i in (7, 2, 7):  # any access order
        torch.testing.assert_close(a[i].points2d, b[i].points2d)
        torch.testing.assert_close(a[i].points3d, b[i].points3d)
        assert torch.equal(a[i].match, b[i].match)
    other_seed = make(6, control=PointControl(outlier_rate_2d=0.2))
    other_split = make(5, split="val")
    assert not torch.equal(a[3].points3d, other_seed[3].points3d)
    assert not torch.equal(a[3].points3d, other_split[3].points3d)
    assert not torch.equal(a[3].points3d, a[4].points3d)


def test_pixel_noise_has_the_requested_spread():
    ds = SyntheticDataset(
        num_samples=3, dtype=torch.float64, protocol=ObjectProtocol(num_points=500, noise_px=2.0)
    )
    res = []
    for i in range(len(ds)):
        s = ds[i]
        res.append(s.points2d.numpy() - cv2_project(s)[s.match.numpy()])
    std = np.concatenate(res).std(0)
    assert np.all(np.abs(std - 2.0) < 0.15)


def test_outlier_rates_are_achieved():
    ds = SyntheticDataset(
        num_samples=5,
        control=PointControl(outlier_rate_2d=0.5, outlier_rate_3d=0.25),
        protocol=ObjectProtocol(num_points=400),
    )
    for i in range(len(ds)):
        s = ds[i]
        assert s.num_inliers == 400
        assert abs(1 - 400 / len(s.points2d) - 0.5) < 0.01
        assert abs(1 - 400 / len(s.points3d) - 0.25) < 0.01
        w, h = s.image_size
        out = s.points2d[s.match < 0]
        assert (out[:, 0] >= 0).all() and (out[:, 0] <= w).all() and (out[:, 1] <= h).all()


def test_hpr_hides_the_far_side_of_a_sphere():
    ds = SyntheticDataset(
        num_samples=4,
        shapes=["sphere"],
        dtype=torch.float64,
        protocol=ObjectProtocol(visibility="hpr", num_points=600, scale_range=(1, 1)),
    )
    for i in range(len(ds)):
        s = ds[i]
        seen = np.zeros(600, dtype=bool)
        seen[s.match[s.match >= 0].numpy()] = True
        assert 0.2 < seen.mean() < 0.6  # occluded points stay in the 3D set as outliers
        X = s.points3d.numpy()
        C = -s.R.numpy().T @ s.t.numpy()
        # On a sphere around the origin the normal is X: the cosine between it and the view ray says
        # which side a point is on. HPR is approximate at the silhouette, so only clear cases count.
        cos = ((C - X) * X).sum(1) / np.linalg.norm(C - X, axis=1)
        assert seen[cos > 0.1].mean() > 0.97
        assert not seen[cos < -0.3].any()


def test_cap_and_min_inliers():
    ds = SyntheticDataset(
        num_samples=10,
        control=PointControl(m_max=50, n_max=80),
        protocol=ObjectProtocol(visibility="hpr", num_points=300),
    )
    for i in range(len(ds)):
        s = ds[i]
        assert len(s.points2d) <= 50 and len(s.points3d) <= 80 and s.num_inliers >= 4


def test_surface_sampling_is_uniform_by_area():
    # Box faces have equal areas: each of the 6 axis-aligned faces gets about 1/6 of the points.
    X = sample_surface(primitive("box"), 6000, np.random.default_rng(0))
    face = np.argmax(np.abs(X), axis=1) * 2 + (X[np.arange(len(X)), np.argmax(np.abs(X), axis=1)] > 0)
    counts = np.bincount(face, minlength=6)
    assert np.all(np.abs(counts - 1000) < 120)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="shapes"):
        SyntheticDataset(shapes=["teapot"])
    with pytest.raises(ValueError, match="visibility"):
        SyntheticDataset(protocol=ObjectProtocol(visibility="zbuffer"))
    with pytest.raises(ValueError, match="split"):
        SyntheticDataset(split="training")


def test_reference_view_is_a_nearby_camera_and_leaves_the_problem_unchanged():
    from bpnp.geometry import rotation_error_deg

    plain = SyntheticDataset(num_samples=20, seed=4, protocol=ObjectProtocol(num_points=50))
    ref = SyntheticDataset(
        num_samples=20, seed=4, protocol=ObjectProtocol(num_points=50, reference_view_deg=25.0)
    )
    angles = []
    for i in range(20):
        a, b = plain[i], ref[i]
        assert a.R_ref is None and torch.equal(a.points2d, b.points2d) and torch.equal(a.points3d, b.points3d)
        angles.append(rotation_error_deg(b.R_ref[None], b.R[None]).item())
        # the object's centre stays where the query camera sees it: same distance, same t
        torch.testing.assert_close(b.t_ref, b.t)
        torch.testing.assert_close(b.R_ref @ b.R_ref.T, torch.eye(3), atol=1e-5, rtol=0)
    assert max(angles) <= 25.0 + 1e-3 and max(angles) > 10.0
    with pytest.raises(ValueError, match="reference_view_deg"):
        SyntheticDataset(num_samples=2, protocol=ObjectProtocol(reference_view_deg=200.0))
