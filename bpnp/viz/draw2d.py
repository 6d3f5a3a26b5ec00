"""Correspondences in the image: keypoints, where the predicted 3D partners project under the
estimated pose, lines coloured by correct / wrong match, and the ground-truth projections."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from bpnp.viz.problem import ProblemView

log = logging.getLogger(__name__)

# BGR colours (OpenCV order).
KEYPOINT = (150, 150, 150)
GT_PROJECTION = (230, 140, 30)
CORRECT = (60, 180, 60)
WRONG = (40, 40, 220)
TEXT = (20, 20, 20)


def project(X: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (n, 2) of world points (n, 3) and a (n,) mask of those in front of the camera."""
    Xc = X @ R.T + t
    front = Xc[:, 2] > 1e-9
    z = np.where(front, Xc[:, 2], 1.0)
    uv = (Xc[:, :2] / z[:, None]) @ K[:2, :2].T + K[:2, 2]
    return uv, front


def canvas(view: ProblemView) -> tuple[np.ndarray, bool]:
    """The photo (BGR) if its file exists and matches the image size, else a white canvas of the image
    size; and whether the photo was used.

    Keypoints are undistorted, so on a photo with strong lens distortion they sit slightly off the
    features near the border.
    """
    w, h = view.image_size
    if view.image_path and Path(view.image_path).is_file():
        img = cv2.imread(view.image_path, cv2.IMREAD_COLOR)
        if img is not None and img.shape[1] == w and img.shape[0] == h:
            return img, True
        log.info(
            "image %s does not match the image size %dx%d; drawing on a blank canvas", view.image_path, w, h
        )
    return np.full((h, w, 3), 255, dtype=np.uint8), False


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _inside(uv: np.ndarray, w: int, h: int, margin: float) -> np.ndarray:
    return (uv[:, 0] > -margin) & (uv[:, 0] < w + margin) & (uv[:, 1] > -margin) & (uv[:, 1] < h + margin)


def draw_matches(view: ProblemView, max_pairs: int = 200) -> np.ndarray:
    """The 2D picture of one problem, RGB (H, W, 3) uint8.

    Grey dots: every 2D keypoint. Blue crosses: the true 3D partners projected with the true pose.
    For the method's first ``max_pairs`` pairs ``(i, j)``: a line from keypoint i to the projection
    of 3D point j under the estimated pose (under the true pose when the method found none), green
    when j is i's true partner, red otherwise.
    """
    img, _ = canvas(view)
    h, w = img.shape[:2]
    s = max(1, round(max(w, h) / 640))  # line and marker scale for large images
    for p in view.points2d:
        cv2.circle(img, _pt(p), s + 1, KEYPOINT, -1, cv2.LINE_AA)
    inl = np.flatnonzero(view.match >= 0)
    gt_uv, gt_front = project(view.points3d[view.match[inl]], view.R, view.t, view.K)
    for p in gt_uv[gt_front & _inside(gt_uv, w, h, 0)]:
        cv2.drawMarker(img, _pt(p), GT_PROJECTION, cv2.MARKER_CROSS, 4 * s + 4, s, cv2.LINE_AA)
    pairs, correct = view.pairs[:max_pairs], view.correct[:max_pairs]
    R, t = (view.R_est, view.t_est) if view.R_est is not None else (view.R, view.t)
    uv, front = project(view.points3d[pairs[:, 1]], R, t, view.K)
    # Far-off projections are clipped to a margin around the image so lines stay drawable.
    keep = front & _inside(uv, w, h, 2.0 * max(w, h))
    for (i, _), q, ok, k in zip(pairs, uv, correct, keep, strict=True):
        if not k:
            continue
        colour = CORRECT if ok else WRONG
        cv2.line(img, _pt(view.points2d[i]), _pt(q), colour, s, cv2.LINE_AA)
        cv2.circle(img, _pt(q), 2 * s + 1, colour, s, cv2.LINE_AA)
    pose = "estimated pose" if view.R_est is not None else "no pose: true pose used"
    lines = [
        view.title,
        f"{int(correct.sum())}/{len(pairs)} shown pairs correct ({pose})",
        "grey: keypoints, blue +: true projections",
        "lines to the partner's projection: green correct, red wrong",
    ]
    font = 0.4 * s
    for k, text in enumerate(x for x in lines if x):
        at = (6 * s, (18 + 16 * k) * s)
        cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 3 * s, cv2.LINE_AA)
        cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, font, TEXT, s, cv2.LINE_AA)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
