"""The 3D picture of one problem: points coloured inlier / outlier, the true and estimated camera
frustums, and rays from the estimated camera to the 3D points of the top pairs.

Rendered headless with Open3D's ``OffscreenRenderer`` (Filament; EGL or a software Vulkan device);
where that is unavailable, with a hidden legacy ``Visualizer``; where that fails too, with
matplotlib's 3D axes. A log line names the backend used. ``BPNP_RENDER_BACKEND`` =
``open3d`` / ``legacy`` / ``matplotlib`` forces one.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import cv2
import numpy as np

from bpnp.viz.problem import ProblemView

log = logging.getLogger(__name__)

BACKENDS = ("open3d", "legacy", "matplotlib")

# RGB in [0, 1].
INLIER = (0.15, 0.65, 0.2)
OUTLIER = (0.6, 0.6, 0.6)
GT_CAMERA = (0.1, 0.35, 0.9)
EST_CAMERA = (0.95, 0.55, 0.0)
CORRECT = (0.2, 0.75, 0.2)
WRONG = (0.85, 0.15, 0.15)


@dataclass
class Scene3D:
    """What to draw, backend-independent.

    Attributes:
        points: (n, 3) and ``colors`` (n, 3) in [0, 1].
        segments: (s, 2, 3) line segments and ``segment_colors`` (s, 3).
        center: (3,) look-at point; ``eye`` (3,) camera position; ``up`` (3,); ``radius`` of the scene.
    """

    points: np.ndarray
    colors: np.ndarray
    segments: np.ndarray
    segment_colors: np.ndarray
    center: np.ndarray
    eye: np.ndarray
    up: np.ndarray
    radius: float


def frustum_segments(
    R: np.ndarray, t: np.ndarray, K: np.ndarray, size: tuple[int, int], depth: float
) -> np.ndarray:
    """The 8 edges (8, 2, 3) of a camera's viewing pyramid cut at ``depth``, in world coordinates."""
    w, h = size
    corners_px = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    rays = np.c_[corners_px, np.ones(4)] @ np.linalg.inv(K).T  # z = 1 in the camera frame
    corners_cam = rays * depth
    centre = -R.T @ t
    corners = corners_cam @ R + centre  # camera -> world, R^T x + c, on row vectors
    apex = [np.stack([centre, c]) for c in corners]
    rim = [np.stack([corners[k], corners[(k + 1) % 4]]) for k in range(4)]
    return np.stack(apex + rim)


def build_scene(view: ProblemView, max_rays: int = 100) -> Scene3D:
    """Geometry and viewpoint of one problem's 3D picture."""
    n = len(view.points3d)
    partnered = np.zeros(n, dtype=bool)
    partnered[view.match[view.match >= 0]] = True
    colors = np.where(partnered[:, None], INLIER, OUTLIER).astype(np.float64)
    lo, hi = np.percentile(view.points3d, [2, 98], axis=0) if n else (np.zeros(3), np.ones(3))
    extent = float(np.linalg.norm(hi - lo)) or 1.0
    c_gt = -view.R.T @ view.t
    depth = 0.15 * max(extent, 0.25 * float(np.linalg.norm(c_gt - 0.5 * (lo + hi))))
    segs = [frustum_segments(view.R, view.t, view.K, view.image_size, depth)]
    seg_colors = [np.tile(GT_CAMERA, (8, 1))]
    cams = [c_gt]
    if view.R_est is not None:
        c_est = -view.R_est.T @ view.t_est
        segs.append(frustum_segments(view.R_est, view.t_est, view.K, view.image_size, depth))
        seg_colors.append(np.tile(EST_CAMERA, (8, 1)))
        cams.append(c_est)
    origin = cams[-1]
    pairs, correct = view.pairs[:max_rays], view.correct[:max_rays]
    if len(pairs):
        ends = view.points3d[pairs[:, 1]]
        segs.append(np.stack([np.broadcast_to(origin, ends.shape), ends], 1))
        seg_colors.append(np.where(correct[:, None], CORRECT, WRONG).astype(np.float64))
    # Frame the central points and the cameras (a far-off estimate would shrink everything else).
    keep = [lo, hi, *[c for c in cams if np.linalg.norm(c - 0.5 * (lo + hi)) < 20 * extent]]
    box = np.stack(keep)
    center = 0.5 * (box.min(0) + box.max(0))
    radius = 0.5 * float(np.linalg.norm(box.max(0) - box.min(0))) or 1.0
    up = -view.R[1]  # image "up" of the true camera, in world coordinates
    back = c_gt - center
    back = back / (np.linalg.norm(back) or 1.0)
    side = np.cross(up, back)
    side = side / (np.linalg.norm(side) or 1.0)
    # A three-quarter view from behind and above the true camera shows both frustums and the points.
    direction = back + 0.8 * side + 0.5 * up
    eye = center + direction / np.linalg.norm(direction) * radius * 2.2
    return Scene3D(
        points=view.points3d,
        colors=colors,
        segments=np.concatenate(segs),
        segment_colors=np.concatenate(seg_colors),
        center=center,
        eye=eye,
        up=up,
        radius=radius,
    )


def _line_set(scene: Scene3D):
    import open3d as o3d

    ls = o3d.geometry.LineSet()
    ls.points = o3d.utility.Vector3dVector(scene.segments.reshape(-1, 3))
    ls.lines = o3d.utility.Vector2iVector(np.arange(2 * len(scene.segments)).reshape(-1, 2))
    ls.colors = o3d.utility.Vector3dVector(scene.segment_colors)
    return ls


def _point_cloud(scene: Scene3D):
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(scene.points))
    pc.colors = o3d.utility.Vector3dVector(scene.colors)
    return pc


@functools.cache
def _offscreen_renderer(width: int, height: int):
    """One renderer per size and process: Filament dislikes being created and destroyed repeatedly."""
    import open3d as o3d

    return o3d.visualization.rendering.OffscreenRenderer(width, height)


def render_open3d(scene: Scene3D, size: tuple[int, int]) -> np.ndarray:
    """Render with Open3D's OffscreenRenderer, in a render process of its own
    (:mod:`bpnp.viz.render_server`); RGB (H, W, 3) uint8."""
    from bpnp.viz.render_server import server

    return server().render(scene, size)


def render_open3d_here(scene: Scene3D, size: tuple[int, int]) -> np.ndarray:
    """Render with Open3D's OffscreenRenderer in this process; RGB (H, W, 3) uint8."""
    import open3d as o3d

    rendering = o3d.visualization.rendering
    r = _offscreen_renderer(*size)
    r.scene.clear_geometry()
    r.scene.set_background([1.0, 1.0, 1.0, 1.0])
    # Plain colours: no tone mapping or post-processing (they tint the white background and pale the
    # inlier / outlier colours).
    r.scene.view.set_post_processing(False)
    r.scene.view.set_color_grading(
        rendering.ColorGrading(rendering.ColorGrading.Quality.HIGH, rendering.ColorGrading.ToneMapping.LINEAR)
    )
    pts = rendering.MaterialRecord()
    pts.shader, pts.point_size = "defaultUnlit", 4.0
    lines = rendering.MaterialRecord()
    lines.shader, lines.line_width = "unlitLine", 2.0
    r.scene.add_geometry("points", _point_cloud(scene), pts)
    r.scene.add_geometry("lines", _line_set(scene), lines)
    r.setup_camera(50.0, scene.center, scene.eye, scene.up)
    return np.asarray(r.render_to_image()).copy()


def render_legacy(scene: Scene3D, size: tuple[int, int]) -> np.ndarray:
    """Render with a hidden legacy Open3D Visualizer (needs an OpenGL context); RGB uint8."""
    import open3d as o3d

    vis = o3d.visualization.Visualizer()
    if not vis.create_window(width=size[0], height=size[1], visible=False):
        raise RuntimeError("legacy Open3D Visualizer: no OpenGL window")
    try:
        vis.add_geometry(_point_cloud(scene))
        vis.add_geometry(_line_set(scene))
        opt = vis.get_render_option()
        opt.point_size, opt.background_color = 4.0, np.ones(3)
        ctr = vis.get_view_control()
        ctr.set_lookat(scene.center)
        ctr.set_front((scene.eye - scene.center) / np.linalg.norm(scene.eye - scene.center))
        ctr.set_up(scene.up)
        ctr.set_zoom(0.7)
        buf = np.asarray(vis.capture_screen_float_buffer(do_render=True))
    finally:
        vis.destroy_window()
    if buf.size == 0:
        raise RuntimeError("legacy Open3D Visualizer returned an empty buffer")
    return (np.clip(buf, 0, 1) * 255).astype(np.uint8)


def render_matplotlib(scene: Scene3D, size: tuple[int, int]) -> np.ndarray:
    """Render with matplotlib's 3D axes (Agg); RGB uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi = 100
    fig = plt.figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    ax = fig.add_subplot(projection="3d")
    p = scene.points
    ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=scene.colors, s=2, depthshade=False)
    for seg, col in zip(scene.segments, scene.segment_colors, strict=True):
        ax.plot(seg[:, 0], seg[:, 1], seg[:, 2], color=col, lw=1)
    c, r = scene.center, scene.radius
    ax.set(xlim=(c[0] - r, c[0] + r), ylim=(c[1] - r, c[1] + r), zlim=(c[2] - r, c[2] + r))
    d = scene.eye - scene.center
    ax.view_init(
        elev=float(np.degrees(np.arcsin(d[2] / np.linalg.norm(d)))),
        azim=float(np.degrees(np.arctan2(d[1], d[0]))),
    )
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


_PROBE = """
import numpy as np, open3d as o3d
r = o3d.visualization.rendering.OffscreenRenderer(64, 48)
pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.rand(10, 3)))
m = o3d.visualization.rendering.MaterialRecord(); m.shader = "defaultUnlit"
r.scene.add_geometry("p", pc, m)
r.setup_camera(60.0, [0.5, 0.5, 0.5], [0.5, 0.5, 3.0], [0.0, 1.0, 0.0])
assert np.asarray(r.render_to_image()).shape == (48, 64, 3)
"""


@functools.cache
def offscreen_available() -> bool:
    """Whether Open3D's OffscreenRenderer works here, probed once in a subprocess (a missing GPU /
    EGL / Vulkan driver can abort the process rather than raise)."""
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


_RENDERERS = {"open3d": render_open3d, "legacy": render_legacy, "matplotlib": render_matplotlib}


def render_scene(
    view: ProblemView, size: tuple[int, int] = (800, 600), backend: str | None = None
) -> tuple[np.ndarray, str]:
    """The 3D picture of one problem, RGB (H, W, 3) uint8, and the backend that drew it.

    Args:
        size: (width, height) in pixels.
        backend: one of ``open3d``, ``legacy``, ``matplotlib``; default: ``$BPNP_RENDER_BACKEND`` or
            the first that works, in that order.
    """
    backend = backend or os.environ.get("BPNP_RENDER_BACKEND") or None
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"render backend {backend!r}: expected one of {BACKENDS}")
    scene = build_scene(view)
    order = [backend] if backend else list(BACKENDS)
    if not backend and not offscreen_available():
        log.warning("Open3D OffscreenRenderer unavailable here; trying the legacy Visualizer")
        order.remove("open3d")
    *fallbacks, last = order
    for name, following in zip(fallbacks, order[1:], strict=True):
        try:
            img = _RENDERERS[name](scene, size)
        except Exception as e:  # any failure of a backend means: try the next one
            log.warning("3D render with %s failed (%s); trying %s", name, e, following)
            continue
        log.info("3D render backend: %s", name)
        return add_legend(img, view.title), name
    img = _RENDERERS[last](scene, size)
    log.info("3D render backend: %s", last)
    return add_legend(img, view.title), last


def add_legend(img: np.ndarray, title: str = "") -> np.ndarray:
    """Write the colour key (and a title) in the top-left corner of an RGB image."""
    img = np.ascontiguousarray(img)
    lines = [
        title,
        "blue: true camera, orange: estimated camera",
        "points: green with a 2D partner, grey without",
        "rays to the top pairs' 3D points: green correct, red wrong",
    ]
    for k, text in enumerate(x for x in lines if x):
        at = (6, 16 + 15 * k)
        cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 3, cv2.LINE_AA)
        cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (20, 20, 20), 1, cv2.LINE_AA)
    return img
