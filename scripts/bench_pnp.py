"""Time and accuracy of the weighted PnP layer, against a straightforward reference node.

Problems: B samples of m = n points (default 16 x 1000) in [-2, 2]^3 seen from about 6 units away
(depth 4-8), 2D noise 0.001 normalised units, the 2D points shuffled. Dense weights are a joint
probability: a fraction ``--true-mass`` (default 0.64, a diffuse plan) on the true matches, the rest
spread at random over all pairs. Paired problems take the plan's top ``--k`` pairs.

Rows (median of ``--repeats`` runs, float32 unless ``--dtype``):
- layer, dense / paired, forward from a given initial pose (OpenCV RANSAC's, computed beforehand),
  with the OpenCV initialisation, with the batched torch initialisation; backward of a random
  linear loss on (R, t) with gradients to the weights (``--grad-points`` adds x2d and x3d).
- reference: the dense angular objective summed over all m n pairs, per sample, LBFGS from the same
  initial pose; backward as generic declarative-node code does it: H and the 6 x (m n) matrix B of
  mixed second derivatives by double autograd, then ``-v^T H^-1 B``.
- accuracy: rotation / translation error of each objective and remedy against the ground truth
  (the diffuse-plan bias, docs/design.md section 4).

    python scripts/bench_pnp.py --threads 1 --out bench_results

``--ransac`` instead compares the two RANSAC initialisations, side by side in one run: OpenCV's P3P
``solvePnPRansac`` per sample (``opencv_ransac``) and the batched torch P3P RANSAC (``torch_ransac``),
both with 1000 iterations at most, threshold 0.01 normalised units (the layer's) and confidence
0.999, on B = ``--batch`` problems of k = 96 and 1500 pairs at inlier ratios 0.2, 0.3, 0.4, 0.6
(inliers: 0.001 noise; outliers: pairs with a wrong random 3D partner). Success: rotation error
below 1 degree; time: median of ``--repeats`` (default 3) runs after one warm-up, the two methods'
runs alternating. Then the torch time at B = 16, 32, 64 for k = 96.

    python scripts/bench_pnp.py --ransac --threads 2

On a CPU shared with other processes, OpenMP's spinning worker threads make each of the torch
RANSAC's parallel operations wait for a descheduled thread: prefix ``OMP_WAIT_POLICY=PASSIVE`` (or
use ``--threads 1``); the header prints the load average and the policy.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from bpnp.geometry import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    normalized_to_bearings,
    rotation_error_deg,
)
from bpnp.nodes import RansacOptions, SolverOptions, weighted_pnp
from bpnp.nodes.pnp.ransac import opencv_ransac, top_pairs, torch_ransac


def make_problem(B: int, n: int, true_mass: float, dtype: torch.dtype, seed: int = 0) -> dict[str, Tensor]:
    """Scene, ground truth and a joint-probability plan (B, n, n) with ``true_mass`` on true matches."""
    g = torch.Generator().manual_seed(seed)
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=torch.float64))
    t = torch.randn(B, 3, generator=g, dtype=torch.float64) * 0.5 + torch.tensor([0.0, 0.0, 6.0]).double()
    X = (torch.rand(B, n, 3, generator=g, dtype=torch.float64) * 4 - 2).double()
    Xc = X @ R.mT + t[:, None]
    x = Xc[..., :2] / Xc[..., 2:] + 0.001 * torch.randn(B, n, 2, generator=g, dtype=torch.float64)
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(B)])
    x = x.gather(1, perm[..., None].expand(-1, -1, 2))  # 2D point i is the image of 3D point perm[i]
    noise = torch.rand(B, n, n, generator=g, dtype=torch.float64)
    W = (1.0 - true_mass) * noise / noise.sum((1, 2), keepdim=True)
    W.scatter_add_(2, perm[..., None], torch.full((B, n, 1), true_mass / n, dtype=torch.float64))
    return {k: v.to(dtype) for k, v in dict(x=x, X=X, W=W, R=R, t=t).items()}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def loss_weights(B: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(B, 3, 3, generator=g).to(dtype), torch.randn(B, 3, generator=g).to(dtype)


def time_layer(
    x: Tensor, X: Tensor, W: Tensor, repeats: int, grad_points: bool, **kw
) -> tuple[float, float, dict[str, Tensor]]:
    """Median forward and backward seconds of ``weighted_pnp`` and the last result."""
    cR, ct = loss_weights(W.shape[0], W.dtype)
    fwd, bwd = [], []
    for _ in range(repeats):
        ins = [v.clone().requires_grad_(grad_points or i == 2) for i, v in enumerate((x, X, W))]
        sync()
        t0 = time.perf_counter()
        res = weighted_pnp(*ins, **kw)
        sync()
        t1 = time.perf_counter()
        ((res.R * cR).sum() + (res.t * ct).sum()).backward()
        sync()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
    out = dict(R=res.R.detach(), t=res.t.detach(), f=res.objective.detach(), valid=res.valid, gW=ins[2].grad)
    return statistics.median(fwd), statistics.median(bwd), out


# ------------------------------------------------------------------------------------------------
# Reference node: generic declarative-node code, one sample at a time.


def _ref_objective(theta: Tensor, b: Tensor, X: Tensor, W: Tensor) -> Tensor:
    """Dense angular objective summed over all pairs: theta (6,), b (m, 3), X (n, 3), W (m, n)."""
    Xc = X @ axis_angle_to_matrix(theta[:3]).T + theta[3:]
    q = Xc / Xc.norm(dim=-1, keepdim=True)
    return (W * (1.0 - b @ q.T)).sum()


def reference_forward(x: Tensor, X: Tensor, W: Tensor, theta0: Tensor, max_iter: int) -> Tensor:
    """Per-sample LBFGS (strong Wolfe) from theta0 (B, 6) = (axis-angle, t)."""
    b = normalized_to_bearings(x)
    out = []
    for i in range(W.shape[0]):
        theta = theta0[i].clone().requires_grad_()
        opt = torch.optim.LBFGS(
            [theta], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )  # fmt: skip

        def closure(theta=theta, i=i, opt=opt):
            opt.zero_grad()
            f = _ref_objective(theta, b[i], X[i], W[i])
            f.backward()
            return f

        opt.step(closure)
        out.append(theta.detach())
    return torch.stack(out)


def reference_backward(x: Tensor, X: Tensor, W: Tensor, theta: Tensor, v: Tensor) -> Tensor:
    """dL/dW = -v^T H^-1 B per sample, H and B (6 x m n) by double autograd, H^-1 B formed first."""
    b = normalized_to_bearings(x)
    grads = []
    for i in range(W.shape[0]):
        th = theta[i].clone().requires_grad_()
        Wi = W[i].clone().requires_grad_()
        f = _ref_objective(th, b[i], X[i], Wi)
        (g,) = torch.autograd.grad(f, th, create_graph=True)
        H = torch.stack([torch.autograd.grad(g[k], th, retain_graph=True)[0] for k in range(6)])
        Bm = torch.stack([torch.autograd.grad(g[k], Wi, retain_graph=True)[0].flatten() for k in range(6)])
        grads.append(-(v[i] @ torch.linalg.solve(H, Bm)).view_as(Wi))
    return torch.stack(grads)


def angular_objective(x: Tensor, X: Tensor, W: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Independent O(mn) evaluation of the dense angular objective at (R, t), in float64. (B,)"""
    x, X, W, R, t = (v.double() for v in (x, X, W, R, t))
    Xc = X @ R.mT + t[:, None]
    q = Xc / Xc.norm(dim=-1, keepdim=True)
    return (W * (1.0 - normalized_to_bearings(x) @ q.mT)).sum((1, 2))


# ------------------------------------------------------------------------------------------------
# RANSAC initialisations.


def ransac_problem(B: int, k: int, inlier_ratio: float, seed: int = 0) -> dict[str, Tensor]:
    """k pairs per sample, exactly ``round(inlier_ratio * k)`` of them true (2D noise 0.001), the
    others with a wrong random 3D partner; points in [-2, 2]^3 about 6 units away (float64)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=f64))
    t = torch.randn(B, 3, generator=g, dtype=f64) * 0.5 + torch.tensor([0.0, 0.0, 6.0], dtype=f64)
    X = torch.rand(B, k, 3, generator=g, dtype=f64) * 4 - 2
    Xc = X @ R.mT + t[:, None]
    x = Xc[..., :2] / Xc[..., 2:] + 0.001 * torch.randn(B, k, 2, generator=g, dtype=f64)
    n_out = k - round(inlier_ratio * k)
    out = torch.rand(B, k, generator=g).argsort(-1)[:, :n_out]  # (B, n_out) outlier pairs
    partner = (out + torch.randint(1, k, (B, n_out), generator=g)) % k  # never the pair's own point
    X_out = X.gather(1, partner[..., None].expand(-1, -1, 3))
    X = X.scatter(1, out[..., None].expand(-1, -1, 3), X_out)
    return dict(x=x, X=X, w=torch.ones(B, k, dtype=f64), R=R)


def time_ransac(fns, prob: dict[str, Tensor], repeats: int) -> list[tuple[float, int]]:
    """Per method: median seconds over ``repeats`` runs after a warm-up, and the samples solved to
    1 degree. The methods' runs alternate, so a changing load on a shared machine hits them alike."""
    times: list[list[float]] = [[] for _ in fns]
    poses = [fn(prob) for fn in fns]  # the warm-up; the same poses every run (seeded)
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn(prob)
            ts.append(time.perf_counter() - t0)
    solved = [int((rotation_error_deg(R, prob["R"]) < 1.0).sum()) for R in poses]
    return [(statistics.median(ts), ok) for ts, ok in zip(times, solved, strict=True)]


def ransac_main(args: argparse.Namespace) -> None:
    threshold, iterations, B = 0.01, 1000, args.batch

    def opencv(p: dict[str, Tensor]) -> Tensor:
        return opencv_ransac(p["x"], p["X"], p["w"], threshold, iterations)[0]

    def batched(p: dict[str, Tensor]) -> Tensor:
        return torch_ransac(
            p["x"], p["X"], p["w"], threshold, iterations, generator=torch.Generator().manual_seed(0)
        )[0]

    print(
        f"RANSAC initialisation: B = {B}, threshold {threshold}, {iterations} iterations at most, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} runs; success: rotation error < 1 deg; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print(f"{'k':>5} {'inliers':>8} | {'OpenCV P3P':>19} | {'torch P3P':>19} | speed-up")
    for k in (96, 1500):
        for ratio in (0.2, 0.3, 0.4, 0.6):
            (t_cv, ok_cv), (t_torch, ok_torch) = time_ransac(
                [opencv, batched], ransac_problem(B, k, ratio), args.repeats
            )
            cv_cell, torch_cell = (
                f"{ok:>3}/{B:<3} {sec:>9.4f} s" for ok, sec in ((ok_cv, t_cv), (ok_torch, t_torch))
            )
            print(f"{k:>5} {ratio:>8.1f} | {cv_cell} | {torch_cell} | {t_cv / t_torch:6.1f}x", flush=True)
    print("torch P3P RANSAC, k = 96: seconds (solved) by batch size")
    batches = (16, 32, 64)
    print(f"{'inliers':>8} | " + " | ".join(f"{'B = ' + str(b):>16}" for b in batches))
    for ratio in (0.2, 0.3, 0.4, 0.6):
        cells = []
        for b in batches:
            ((t_torch, ok),) = time_ransac([batched], ransac_problem(b, 96, ratio), args.repeats)
            cells.append(f"{t_torch:7.4f} s ({ok:>2}/{b:<2})")
        print(f"{ratio:>8.1f} | " + " | ".join(cells), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--k", type=int, default=1500, help="pairs of the paired problem")
    p.add_argument("--true-mass", type=float, default=0.64)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=None, help="runs per row (default 5; 3 with --ransac)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--grad-points", action="store_true", help="also differentiate x2d and x3d")
    p.add_argument("--ref-samples", type=int, default=None, help="reference on this many samples only")
    p.add_argument("--ref-iter", type=int, default=100)
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--out", type=Path, default=Path("bench_results"))
    p.add_argument("--ransac", action="store_true", help="compare the RANSAC initialisations only")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats is None:
        args.repeats = 3 if args.ransac else 5
    if args.ransac:
        ransac_main(args)
        return
    dtype = getattr(torch, args.dtype)
    B = args.batch
    prob = make_problem(B, args.n, args.true_mass, dtype)
    x, X, W = prob["x"], prob["X"], prob["W"]
    R_gt, t_gt = prob["R"], prob["t"]

    # Initial pose for the "from init" rows: OpenCV RANSAC on the plan's top pairs (not timed).
    k_init = min(1000, int(1.5 * args.n))
    rows, cols, w_top = top_pairs(W, k_init)
    x_top = x.gather(1, rows[..., None].expand(-1, -1, 2))
    X_top = X.gather(1, cols[..., None].expand(-1, -1, 3))
    R0, t0, _ = opencv_ransac(x_top, X_top, w_top)
    # Paired problem: the plan's top k pairs (some wrong).
    rows, cols, w_k = top_pairs(W, args.k)
    xk = x.gather(1, rows[..., None].expand(-1, -1, 2))
    Xk = X.gather(1, cols[..., None].expand(-1, -1, 3))
    w_k = w_k / w_k.sum(-1, keepdim=True)

    table: list[dict] = []

    def record(name: str, fwd: float, bwd: float, out: dict | None, note: str = "") -> None:
        row = dict(case=name, forward_s=fwd, backward_s=bwd, total_s=fwd + bwd, note=note)
        if out is not None:
            row["rot_err_deg_median"] = rotation_error_deg(out["R"].double(), R_gt.double()).median().item()
            row["t_err_median"] = (out["t"].double() - t_gt.double()).norm(dim=-1).median().item()
            row["valid"] = int(out["valid"].sum().item())
        table.append(row)
        print(
            f"{name:<48} fwd {fwd * 1e3:8.1f} ms  bwd {bwd * 1e3:8.1f} ms  total {(fwd + bwd) * 1e3:8.1f} ms"
            + (f"  rot {row['rot_err_deg_median']:.4f} deg  t {row['t_err_median']:.4f}" if out else "")
            + (f"  {note}" if note else ""),
            flush=True,
        )

    r, gp = args.repeats, args.grad_points
    time_layer(x, X, W, 1, gp, pose_init=(R0, t0))  # warm-up
    f, b, dense_init = time_layer(x, X, W, r, gp, pose_init=(R0, t0))
    record(f"dense {args.n}x{args.n} angular, from init", f, b, dense_init)
    f, b, out = time_layer(x, X, W, r, gp, ransac=RansacOptions(backend="opencv"))
    record("dense angular, OpenCV init", f, b, out)
    f, b, out = time_layer(
        x, X, W, r, gp, ransac=RansacOptions(backend="torch"), generator=torch.Generator().manual_seed(0)
    )
    record("dense angular, torch init", f, b, out)
    f, b, out = time_layer(x, X, W, r, gp, pose_init=(R0, t0), solver=SolverOptions(objective="reprojection"))
    record("dense reprojection, from init", f, b, out)
    f, b, out = time_layer(xk, Xk, w_k, r, gp, pose_init=(R0, t0))
    record(f"paired k={args.k} angular, from init", f, b, out)
    f, b, out = time_layer(xk, Xk, w_k, r, gp, ransac=RansacOptions(backend="opencv"))
    record(f"paired k={args.k} angular, OpenCV init", f, b, out)
    f, b, out = time_layer(
        xk, Xk, w_k, r, gp, ransac=RansacOptions(backend="torch"), generator=torch.Generator().manual_seed(0)
    )
    record(f"paired k={args.k} angular, torch init", f, b, out)
    robust = SolverOptions(objective="reprojection", robust="tanh", robust_scale=0.003)
    f, b, out = time_layer(xk, Xk, w_k, r, gp, pose_init=(R0, t0), solver=robust)
    record(f"paired k={args.k} reprojection+tanh, from init", f, b, out)
    f, b, out = time_layer(x, X, W, r, gp, pose_init=(R0, t0), sparse_topk=args.k, solver=robust)
    record(f"dense, sparse_topk={args.k} reproj.+tanh, from init", f, b, out)

    # Accuracy of the initial pose and of a sharp plan, for the bias comparison.
    record("OpenCV RANSAC pose (init)", 0.0, 0.0, dict(R=R0, t=t0, valid=torch.ones(B, dtype=torch.bool)))
    sharp = make_problem(B, args.n, 0.99, dtype)
    f, b, out = time_layer(sharp["x"], sharp["X"], sharp["W"], 1, gp, pose_init=(R0, t0))
    record("sharp plan (0.99 on true), dense angular", f, b, out)

    if not args.skip_reference:
        nr = args.ref_samples or B
        theta0 = torch.cat([matrix_to_axis_angle(R0[:nr]), t0[:nr]], dim=-1)
        t_start = time.perf_counter()
        theta = reference_forward(x[:nr], X[:nr], W[:nr], theta0, args.ref_iter)
        ref_fwd = time.perf_counter() - t_start
        # Loss on t only: theta[3:] is t in both parametrisations, so the gradients are comparable.
        ct = loss_weights(B, dtype)[1][:nr]
        v = torch.cat([torch.zeros(nr, 3, dtype=dtype), ct], dim=-1)
        t_start = time.perf_counter()
        gW_ref = reference_backward(x[:nr], X[:nr], W[:nr], theta, v)
        ref_bwd = time.perf_counter() - t_start
        scale = B / nr
        R_ref = axis_angle_to_matrix(theta[:, :3])
        note = f"measured on {nr} samples, x{scale:g}" if nr < B else ""
        out = dict(R=R_ref, t=theta[:, 3:], valid=torch.ones(nr, dtype=torch.bool))
        R_gt_all, t_gt_all = R_gt, t_gt
        R_gt, t_gt = R_gt_all[:nr], t_gt_all[:nr]
        record("reference: LBFGS + double-autograd B", ref_fwd * scale, ref_bwd * scale, out, note)
        # Same loss through the layer, for the gradient comparison.
        Wg = W[:nr].clone().requires_grad_()
        res = weighted_pnp(x[:nr], X[:nr], Wg, pose_init=(R0[:nr], t0[:nr]))
        (res.t * ct).sum().backward()
        f_ours = angular_objective(x[:nr], X[:nr], W[:nr], res.R.detach(), res.t.detach())
        f_ref = angular_objective(x[:nr], X[:nr], W[:nr], R_ref, theta[:, 3:])
        rel = ((Wg.grad - gW_ref).norm() / gW_ref.norm()).item()
        no_worse = int((f_ours <= f_ref * (1 + 1e-7)).sum())
        print(
            f"objective (float64 re-evaluation): layer {f_ours.sum().item():.9f}, reference "
            f"{f_ref.sum().item():.9f}; layer <= reference on {no_worse}/{nr} samples; "
            f"relative difference of dL/dW: {rel:.2e}"
        )
        table[-1]["objective_layer"] = f_ours.sum().item()
        table[-1]["objective_reference"] = f_ref.sum().item()
        table[-1]["grad_rel_diff"] = rel
        R_gt, t_gt = R_gt_all, t_gt_all

    args.out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in table for k in row}, key=lambda k: (k != "case", k))
    with open(args.out / "pnp_bench.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(table)
    print(f"threads {torch.get_num_threads()}, dtype {args.dtype}, B {B}; wrote {args.out}/pnp_bench.csv")


if __name__ == "__main__":
    main()
