"""Pure batched geometry: rotations, poses, the pinhole camera. Lowest layer; imports only torch."""

from bpnp.geometry.camera import (
    bearing_angles,
    normalized_to_bearings,
    normalized_to_pixels,
    pixels_to_bearings,
    pixels_to_normalized,
    project,
    project_normalized,
    project_points,
)
from bpnp.geometry.p3p import solve_p3p
from bpnp.geometry.pose import (
    camera_center,
    center_error,
    compose_poses,
    invert_pose,
    transform_points,
    translation_error,
)
from bpnp.geometry.rotation import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    quaternion_to_axis_angle,
    rotation_angle,
    rotation_error_deg,
    skew,
    so3_exp,
    vee,
)

__all__ = [
    "axis_angle_to_matrix",
    "camera_center",
    "center_error",
    "compose_poses",
    "invert_pose",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "bearing_angles",
    "normalized_to_bearings",
    "normalized_to_pixels",
    "solve_p3p",
    "pixels_to_bearings",
    "pixels_to_normalized",
    "project",
    "project_normalized",
    "project_points",
    "quaternion_to_axis_angle",
    "rotation_angle",
    "rotation_error_deg",
    "skew",
    "so3_exp",
    "transform_points",
    "translation_error",
    "vee",
]
