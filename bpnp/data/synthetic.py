"""Procedural objects seen by a random camera: the built-in source, and the object protocol that the
ModelNet40 source reuses on real meshes.

A mesh is a triangle soup (T, 3, 3). Points are sampled on its surface by area, the camera gets a
uniformly random rotation and a position that keeps the whole object in front of it and inside the
image, and the 2D set is the projection of every point (``visibility="none"``, BPnPNet's ModelNet40
protocol) or of the points Open3D's hidden-point removal keeps (``"hpr"``: hidden points stay in
the 3D set as outliers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import open3d as o3d
import torch
from scipy.spatial.transform import Rotation

from bpnp.data.base import CorrespondenceDataset, Problem
from bpnp.data.transforms import Correspondences, PointControl, image_bounds

PRIMITIVES = ("box", "sphere", "cylinder", "cone", "torus")
SHAPES = (*PRIMITIVES, "composite")
VISIBILITY = ("none", "hpr")
# BPnPNet's uniform-rotation protocol as the learning benchmarks draw it: depth about 4-8 object
# radii, 0.002 normalised (1.05 px at f = 525) noise. ``ObjectProtocol(**UNIFORM_PROTOCOL, ...)``.
UNIFORM_PROTOCOL = {"max_rotation_deg": 180.0, "noise_px": 1.05, "distance_range": [1.4, 2.8]}


def mesh_triangles(mesh: o3d.geometry.TriangleMesh) -> np.ndarray:
    """Triangle soup (T, 3, 3) of an Open3D mesh."""
    return np.asarray(mesh.vertices)[np.asarray(mesh.triangles)]


def normalize_soup(tri: np.ndarray) -> np.ndarray:
    """Centre a soup (T, 3, 3) on its bounding-box centre and scale its bounding sphere to radius 1."""
    v = tri.reshape(-1, 3)
    centre = 0.5 * (v.min(0) + v.max(0))
    radius = np.linalg.norm(v - centre, axis=1).max()
    return (tri - centre) / max(radius, 1e-12)


@cache
def primitive(name: str) -> np.ndarray:
    """Normalised triangle soup (T, 3, 3) of an Open3D primitive, built once per process."""
    make = {
        "box": lambda: o3d.geometry.TriangleMesh.create_box(1.0, 1.0, 1.0),
        "sphere": lambda: o3d.geometry.TriangleMesh.create_sphere(1.0, resolution=12),
        "cylinder": lambda: o3d.geometry.TriangleMesh.create_cylinder(0.5, 2.0, resolution=24),
        "cone": lambda: o3d.geometry.TriangleMesh.create_cone(0.7, 1.5, resolution=24),
        "torus": lambda: o3d.geometry.TriangleMesh.create_torus(1.0, 0.35, 24, 12),
    }
    if name not in make:
        raise ValueError(f"unknown primitive {name!r}: expected one of {PRIMITIVES}")
    return normalize_soup(mesh_triangles(make[name]()))


def random_composite(rng: np.random.Generator, parts: tuple[int, int] = (2, 4)) -> np.ndarray:
    """Soup (T, 3, 3) of 2-4 randomly scaled, rotated and offset primitives (asymmetric in general,
    unlike a single primitive, so the pose is identifiable from the shape alone). Not normalised:
    :meth:`ObjectProtocol.problem` normalises the sampled points, which is cheaper."""
    soups = []
    for _ in range(rng.integers(parts[0], parts[1] + 1)):
        tri = primitive(PRIMITIVES[rng.integers(len(PRIMITIVES))])
        R = Rotation.random(random_state=rng).as_matrix()
        scale = rng.uniform(0.25, 0.8, size=3)
        offset = rng.uniform(-0.6, 0.6, size=3)
        soups.append((tri * scale) @ R.T + offset)
    return np.concatenate(soups)


def sample_surface(tri: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniform on the surface of a triangle soup.

    Args:
        tri: (T, 3, 3).
    Returns:
        (n, 3).
    """
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    cdf = np.cumsum(area)
    if cdf[-1] <= 0:
        raise ValueError("mesh has zero surface area")
    face = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(tri) - 1)
    r1, r2 = rng.random((2, n, 1))
    s = np.sqrt(r1)  # uniform barycentric coordinates on a triangle
    return (1 - s) * a[face] + s * (1 - r2) * b[face] + s * r2 * c[face]


def intrinsics(focal: float, image_size: tuple[int, int]) -> np.ndarray:
    """(3, 3) pinhole with square pixels and the principal point at the image centre."""
    w, h = image_size
    return np.array([[focal, 0.0, w / 2.0], [0.0, focal, h / 2.0], [0.0, 0.0, 1.0]])


def visible_points(points: np.ndarray, camera_centre: np.ndarray, radius_factor: float = 100.0) -> np.ndarray:
    """Sorted indices of the points (n, 3) Open3D's hidden-point removal keeps from ``camera_centre``."""
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    diameter = np.linalg.norm(points.max(0) - points.min(0))
    _, idx = pcd.hidden_point_removal(camera_centre, radius_factor * max(diameter, 1e-9))
    return np.sort(np.asarray(idx, dtype=np.int64))


@dataclass(frozen=True)
class ObjectProtocol:
    """How a problem is made from an object mesh.

    Attributes:
        num_points: points sampled on the surface (the 3D set before outliers).
        visibility: ``"none"`` (every point projected, m = n) or ``"hpr"`` (hidden points removed
            from the 2D set; they remain in the 3D set as outliers).
        noise_px: standard deviation of Gaussian pixel noise on the 2D points.
        image_size: (width, height) in pixels.
        focal: focal length in pixels (principal point at the image centre).
        scale_range: per-axis random scale of the unit-radius mesh (anisotropic).
        distance_range: camera distance as a multiple of the smallest distance at which the object
            fits in the image; 1 fills the image's inscribed circle.
        max_rotation_deg: 180 draws the camera rotation uniformly on SO(3); below that, a uniform
            random axis and an angle uniform in [0, max_rotation_deg] away from the identity (a
            limited range of viewpoints, an easier problem that a network learns much sooner).
        reference_view_deg: None, or give each problem a reference view (``R_ref``, ``t_ref``): a
            second camera at the same distance whose viewpoint on the object differs from the
            query's by a random rotation of up to this angle (a nearby database image of a map).
    """

    num_points: int = 1000
    visibility: str = "none"
    noise_px: float = 0.0
    image_size: tuple[int, int] = (640, 480)
    focal: float = 525.0
    scale_range: tuple[float, float] = (0.5, 1.5)
    distance_range: tuple[float, float] = (1.0, 2.5)
    max_rotation_deg: float = 180.0
    reference_view_deg: float | None = None

    def __post_init__(self) -> None:
        # A config gives lists; the protocol is hashable and compares equal either way.
        for name in ("image_size", "scale_range", "distance_range"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.visibility not in VISIBILITY:
            raise ValueError(f"visibility {self.visibility!r}: expected one of {VISIBILITY}")
        if self.num_points < 4:
            raise ValueError(f"num_points={self.num_points}: need at least 4")
        if not 0.0 <= self.max_rotation_deg <= 180.0:
            raise ValueError(f"max_rotation_deg={self.max_rotation_deg}: expected a value in [0, 180]")
        if self.reference_view_deg is not None and not 0.0 <= self.reference_view_deg <= 180.0:
            raise ValueError(
                f"reference_view_deg={self.reference_view_deg}: expected None or a value in [0, 180]"
            )
        if self.distance_range[0] < 1.0:
            raise ValueError(f"distance_range {self.distance_range}: below 1 the object leaves the image")

    def camera(self, radius: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Random pose ``(R (3, 3), t (3,))`` seeing a ball of ``radius`` at the origin whole.

        The ball's angular radius plus its centre's angle off the optical axis stays below the half
        field of view of the image's inscribed circle (less a margin for pixel noise), so every
        surface point lies in front of the camera and inside the image.
        """
        half = 0.5 * min(self.image_size) - 1.0 - 3.0 * self.noise_px
        half_fov = np.arctan(half / self.focal)
        d = radius / np.sin(half_fov) * rng.uniform(*self.distance_range)
        off_axis = max(half_fov - np.arcsin(radius / d), 0.0) * np.sqrt(rng.random())
        phi = 2 * np.pi * rng.random()
        centre = d * np.array(
            [np.sin(off_axis) * np.cos(phi), np.sin(off_axis) * np.sin(phi), np.cos(off_axis)]
        )
        if self.max_rotation_deg >= 180.0:
            R = Rotation.random(random_state=rng).as_matrix()
        else:
            axis = rng.normal(size=3)
            angle = np.deg2rad(self.max_rotation_deg) * rng.random()
            R = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
        return R, centre  # the object's origin lands at ``centre`` in the camera frame: t = centre

    def problem(self, tri: np.ndarray, rng: np.random.Generator) -> Problem:
        """A problem from a soup (T, 3, 3). World frame: the points' bounding-box centre is the
        origin, and their farthest point from it is at distance 1 before the random scaling."""
        X = sample_surface(tri, self.num_points, rng)
        X = X - 0.5 * (X.min(0) + X.max(0))
        X = X / max(np.sqrt((X * X).sum(1).max()), 1e-12) * rng.uniform(*self.scale_range, size=3)
        R, t = self.camera(float(np.linalg.norm(X, axis=1).max()), rng)
        K = intrinsics(self.focal, self.image_size)
        if self.visibility == "hpr":
            idx = visible_points(X, -R.T @ t)
        else:
            idx = np.arange(len(X))
        x_cam = X[idx] @ R.T + t
        uv = x_cam[:, :2] / x_cam[:, 2:] * self.focal + K[:2, 2]
        if self.noise_px > 0:
            uv = uv + rng.normal(scale=self.noise_px, size=uv.shape)
        corr = Correspondences(uv, X, idx, image_bounds(*self.image_size))
        ref = (None, None)
        if self.reference_view_deg is not None:
            # From a spawned stream: the item's own draws (here and in point control) do not change.
            child = rng.spawn(1)[0]
            axis = child.normal(size=3)
            angle = np.deg2rad(self.reference_view_deg) * child.random()
            ref = (R @ Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix(), t)
        return Problem(corr, K, R, t, image_size=self.image_size, R_ref=ref[0], t_ref=ref[1])


class SyntheticDataset(CorrespondenceDataset):
    """Procedural objects (Open3D primitives and random compositions of them), generated on the
    fly; item ``i`` of a split is a function of ``(seed, split, i)`` only.

    Args:
        num_samples: length of the dataset.
        split: ``"train"``, ``"val"`` or ``"test"``: independent random streams.
        shapes: drawn uniformly per item from ``box, sphere, cylinder, cone, torus, composite``. The
            single primitives are symmetric, so their pose is ambiguous without correspondences;
            the default uses compositions only.
        protocol: how a problem is made from an object (:class:`ObjectProtocol`; None:
            :attr:`default_protocol`, 1000 points, uniform rotations, no noise).
        control: outlier rates and set-size caps (:class:`PointControl`; None: none).
        seed: base seed.
    """

    max_attempts = 20
    default_protocol = ObjectProtocol()

    def __init__(
        self,
        num_samples: int = 10000,
        split: str = "train",
        shapes: tuple[str, ...] | list[str] = ("composite",),
        protocol: ObjectProtocol | None = None,
        control: PointControl | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(control or PointControl(), split=split, seed=seed, dtype=dtype)
        unknown = set(shapes) - set(SHAPES)
        if unknown or not shapes:
            raise ValueError(f"shapes {list(shapes)}: expected a non-empty subset of {SHAPES}")
        self.num_samples = num_samples
        self.shapes = tuple(shapes)
        self.protocol = self.default_protocol if protocol is None else protocol

    def __len__(self) -> int:
        return self.num_samples

    def _problem(self, index: int, rng: np.random.Generator) -> Problem:
        shape = self.shapes[rng.integers(len(self.shapes))]
        tri = random_composite(rng) if shape == "composite" else primitive(shape)
        p = self.protocol.problem(tri, rng)
        p.scene, p.id = shape, f"{self.split}/{index:07d}"
        return p
