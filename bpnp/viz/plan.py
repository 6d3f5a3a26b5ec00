"""Heat map of the transport plan P for the first rows, with the true matches marked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files and arrays only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bpnp.viz.problem import ProblemView  # noqa: E402


def plot_plan(view: ProblemView, rows: int = 32, size: tuple[int, int] = (1000, 420)) -> np.ndarray:
    """The first ``rows`` rows of the plan, each divided by its maximum so that every row's
    distribution is visible; green circles mark each row's true 3D partner (on the dustbin column
    for 2D outliers when the plan has one). RGB (H, W, 3) uint8.

    Raises:
        ValueError: when the view carries no plan.
    """
    if view.plan is None:
        raise ValueError("this method returns no transport plan")
    P = view.plan
    m, n = len(view.points2d), len(view.points3d)
    dustbin = P.shape == (m + 1, n + 1)
    k = min(rows, m)
    block = P[:k]
    heat = block / np.maximum(block.max(1, keepdims=True), 1e-300)
    dpi = 100
    fig, ax = plt.subplots(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, constrained_layout=True)
    im = ax.imshow(heat, aspect="auto", interpolation="nearest", cmap="magma", vmin=0, vmax=1)
    first = view.match[:k]
    cols = np.where(first >= 0, first, n if dustbin else -1)
    shown = cols >= 0
    ax.scatter(cols[shown], np.flatnonzero(shown), s=60, facecolors="none", edgecolors="lime", linewidths=1.4)
    if dustbin:
        ax.axvline(n - 0.5, color="cyan", lw=0.8)
    inl = np.flatnonzero(view.match >= 0)
    # Share of the 2D points' mass that sits on their true partners (all rows, not just those shown).
    mass = float(P[inl, view.match[inl]].sum() / max(P[:m].sum(), 1e-300))
    ax.set_title(
        f"{view.title}  plan rows 0-{k - 1} (row-normalised); mass on true matches {100 * mass:.1f} %"
    )
    ax.set_xlabel("3D point" + (" (last column: dustbin)" if dustbin else ""))
    ax.set_ylabel("2D point")
    fig.colorbar(im, ax=ax, label="P / row max", fraction=0.03)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img
