"""The declarative weighted PnP layer: :func:`weighted_pnp` and its implicit backward pass.

Forward (no gradients): optional RANSAC initialisation, batched Levenberg-Marquardt, degeneracy
checks. Backward: with ``H`` the exact 6x6 Hessian in local coordinates at the solution and ``v`` the
incoming gradient in those coordinates, ``u = H^-1 v`` and, for every input ``x`` at once,
``dL/dx = -grad_x <u, grad_delta f(x, delta = 0)>`` (one autograd pass, ``u`` held constant), plus
``dL/df * grad_x f`` for the objective value (envelope theorem).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bpnp.geometry import vee
from bpnp.nodes.declarative import DeclarativeNode, declarative
from bpnp.nodes.pnp.checks import (
    behind_camera,
    collinear,
    distinct_points,
    effective_pairs,
    singular,
    warn_once,
)
from bpnp.nodes.pnp.objectives import (
    Objective,
    PairedProblem,
    camera_points,
    derivatives,
    local_pose,
    paired_objective,
)
from bpnp.nodes.pnp.options import INITS, RansacOptions, SolverOptions
from bpnp.nodes.pnp.ransac import opencv_ransac, top_pairs, torch_ransac
from bpnp.nodes.pnp.robust import RobustKernel
from bpnp.nodes.pnp.solver import levenberg_marquardt


@dataclass
class PnPResult:
    """Output of :func:`weighted_pnp`; pose convention ``x_cam = R X + t``.

    Attributes:
        R: (B, 3, 3) differentiable.
        t: (B, 3) differentiable.
        objective: (B,) objective value at the solution, differentiable.
        valid: (B,) bool: a non-degenerate stationary point; invalid samples have exactly zero gradient.
        refined: (B,) bool: a non-degenerate refined pose, converged or stopped by ``max_iter`` (a
            better pose than the initial one, but without a gradient when not converged).
        iterations: (B,) Levenberg-Marquardt iterations.
        converged: (B,) bool, the step-size test was met.
        R_init: (B, 3, 3) initial rotation (given or RANSAC's).
        t_init: (B, 3) initial translation.
    """

    R: Tensor
    t: Tensor
    objective: Tensor
    valid: Tensor
    refined: Tensor
    iterations: Tensor
    converged: Tensor
    R_init: Tensor
    t_init: Tensor


@dataclass(frozen=True)
class _Config:
    dense: bool
    objective: Objective
    robust: RobustKernel
    scale_sq: float
    max_iter: int
    tol: float | None
    noise_level: float | None = None


# A refined pose whose mean pair error exceeds (NOISE_FACTOR * noise_level)^2 is flagged: about a 3-sigma
# test on the RMS residual of an inlier.
NOISE_FACTOR = 3.0


def _zero_samples(x: Tensor, keep: Tensor) -> Tensor:
    """Zero whole samples where ``keep`` (B,) is False (a copy only when some are)."""
    if bool(keep.all()):
        return x
    return torch.where(
        keep.view(-1, *([1] * (x.dim() - 1))), x, torch.zeros((), dtype=x.dtype, device=x.device)
    )


def _samples_finite(*xs: Tensor) -> Tensor:
    """(B,) bool: every entry of every tensor of the sample is finite."""
    return torch.stack([torch.isfinite(x).flatten(1).all(-1) for x in xs], dim=0).all(0)


class PnPNode(DeclarativeNode):
    """Weighted PnP as a declarative node: inputs ``(x2d, x3d, weights, R0, t0, init_ok)``, outputs
    ``(R, t, objective)`` and the diagnostics ``(valid, refined, iterations, converged)``.

    ``solve`` is RANSAC-initialised Levenberg-Marquardt plus the degeneracy checks; ``vjp`` is the
    implicit gradient in local pose coordinates, through the collapsed features in the dense form.
    """

    def __init__(self, cfg: _Config) -> None:
        self.cfg = cfg

    def solve(self, x2d, x3d, weights, R0, t0, init_ok):
        cfg = self.cfg
        finite = init_ok & _samples_finite(x2d, x3d, *(() if cfg.dense else (weights,)))
        x2d, x3d = _zero_samples(x2d, finite), _zero_samples(x3d, finite)
        G = None
        if cfg.dense:
            # One pass over W: the collapsed features, whose column mass also reveals non-finite W.
            # (F^T W)^T rather than W^T F: the same product, about 2x faster with W stored row-major.
            G = (cfg.objective.dense_features(x2d).transpose(-1, -2) @ weights).transpose(-1, -2)
            col = cfg.objective.column_mass(G)
            finite = finite & torch.isfinite(col.sum(-1))
            weights, G = _zero_samples(weights, finite), _zero_samples(G, finite)
            problem = cfg.objective.collapse(x3d, G)
            col = cfg.objective.column_mass(G)
            # 3D points carrying mass; a single 2D point spread over many is caught by singular H.
            n_eff = effective_pairs(col)
        else:
            weights = _zero_samples(weights, finite)
            problem = _paired_problem(cfg, x2d, x3d, weights)
            col = weights
            n_eff = effective_pairs(weights)
        total = col.sum(-1)
        reasons = {
            "non-finite input": ~finite,
            "all weights zero": finite & (total <= 0),
            "fewer than 4 effective correspondences": finite & (total > 0) & (n_eff < 4),
        }
        active = finite & (total > 0) & (n_eff >= 4)
        # Repeated points add no constraint: 3 distinct ones leave up to 4 exact poses.
        reasons["fewer than 4 distinct 3D points"] = active & (distinct_points(x3d, col) < 4)
        active = active & ~reasons["fewer than 4 distinct 3D points"]
        reasons["collinear 3D points"] = active & collinear(x3d, col)
        active = active & ~reasons["collinear 3D points"]
        sol = levenberg_marquardt(problem, R0, t0, active, cfg.max_iter, cfg.tol)
        ok = torch.isfinite(sol.R).all((-1, -2)) & torch.isfinite(sol.t).all(-1) & torch.isfinite(sol.value)
        reasons["non-finite solution"] = active & ~ok
        reasons["points behind the camera"] = active & ok & behind_camera(problem, sol.depth)
        reasons["singular Hessian"] = active & ok & singular(sol.hessian)
        # The implicit gradient holds at a stationary point only.
        reasons["not converged"] = active & ok & ~sol.converged
        refined = active & ok & ~reasons["points behind the camera"] & ~reasons["singular Hessian"]
        valid = refined & ~reasons["not converged"]
        if cfg.noise_level is not None:
            bound = cfg.objective.noise_scale * (NOISE_FACTOR * cfg.noise_level) ** 2
            mean_error = sol.value / total.clamp_min(torch.finfo(total.dtype).tiny)
            reasons["objective far above the noise level"] = valid & (mean_error > bound)
            valid = valid & ~reasons["objective far above the noise level"]
        warn_once(reasons)

        eye = torch.eye(3, dtype=R0.dtype, device=R0.device).expand_as(R0)
        R = torch.where(ok[:, None, None], sol.R, eye)
        t = torch.where(ok[:, None], sol.t, torch.zeros_like(sol.t))
        value = torch.where(ok, sol.value, torch.zeros_like(sol.value))
        H = torch.where(valid[:, None, None], sol.hessian, torch.eye(6, dtype=R.dtype, device=R.device))
        saved = (x2d, x3d, weights, G if G is not None else torch.zeros(0), R, t, H, valid)
        return (R, t, value), (valid, refined, sol.iterations, sol.converged), saved

    def objective(self, x2d, x3d, weights, R0, t0, init_ok, y):
        """The weighted objective (B,) at the pose ``y = (R, t)`` (in the node's normalised frame)."""
        cfg = self.cfg
        if cfg.dense:
            G = (cfg.objective.dense_features(x2d).transpose(-1, -2) @ weights).transpose(-1, -2)
            problem = cfg.objective.collapse(x3d, G)
        else:
            problem = _paired_problem(cfg, x2d, x3d, weights)
        return derivatives(problem, *y)[0]

    def vjp(self, saved, grads, needs):
        need_2d, need_3d, need_w = needs[:3]
        if not (need_2d or need_3d or need_w):
            return (None,) * 6
        x2d, x3d, weights, G, R, t, H, valid = saved
        cfg = self.cfg
        G = G if cfg.dense else None
        grad_R, grad_t, grad_value = grads
        B = R.shape[0]
        grad_R = torch.zeros_like(R) if grad_R is None else grad_R
        grad_t = torch.zeros_like(t) if grad_t is None else grad_t
        grad_value = torch.zeros(B, dtype=R.dtype, device=R.device) if grad_value is None else grad_value
        # dL/d delta at delta = 0 of R = exp([w]_x) R*, t = t* + tau: (2 vee(G_R R*^T), G_t).
        v = torch.cat([2.0 * vee(grad_R @ R.transpose(-1, -2)), grad_t], dim=-1)
        v = torch.where(valid[:, None], v, torch.zeros_like(v))
        grad_value = torch.where(valid, grad_value, torch.zeros_like(grad_value))
        u = torch.linalg.solve(H, v[..., None]).squeeze(-1)
        u = torch.where(valid[:, None] & torch.isfinite(u), u, torch.zeros_like(u))
        with torch.enable_grad():
            delta = torch.zeros(B, 6, dtype=R.dtype, device=R.device, requires_grad=True)
            p = x3d.detach().requires_grad_(need_3d)
            Rd, td = local_pose(R, t, delta)
            X = camera_points(Rd, td, p)
            if cfg.dense:
                # Through G = W^T F(x2d): the O(mn) work is the two bmm's after the autograd pass.
                leaves = [G.detach().requires_grad_(need_2d or need_w), p]
                f = cfg.objective.dense_value(leaves[0], X)
            else:
                leaves = [x2d.detach().requires_grad_(need_2d), p, weights.detach().requires_grad_(need_w)]
                f = paired_objective(cfg.objective, cfg.robust, cfg.scale_sq, leaves[0], X, leaves[2])
            (g,) = torch.autograd.grad(f.sum(), delta, create_graph=True)
            # -grad_x <u, grad_delta f> with u held constant, plus the envelope term of the value.
            s = (grad_value * f).sum() - (g * u).sum()
            wanted = [x for x in leaves if x.requires_grad]
            found = dict(zip(map(id, wanted), torch.autograd.grad(s, wanted, allow_unused=True), strict=True))
            grads = [found.get(id(x)) for x in leaves]
            if cfg.dense:
                grad_G, grad_3d = grads
                grad_2d = grad_w = w_finite = None
                if grad_G is not None and need_w:
                    feats = cfg.objective.dense_features(x2d)
                    grad_w = feats @ grad_G.transpose(-1, -2)  # (B, m, n): dL/dW = F (dL/dG)^T
                    # finite factors give a finite product: no pass over the (B, m, n) result
                    w_finite = _samples_finite(feats, grad_G)
                if grad_G is not None and need_2d:
                    x = x2d.detach().requires_grad_(True)
                    (grad_2d,) = torch.autograd.grad(
                        cfg.objective.dense_features(x), x, weights @ grad_G, allow_unused=True
                    )
            else:
                grad_2d, grad_3d, grad_w = grads
        out = [
            _masked_grad(grad_2d, x2d, valid) if need_2d else None,
            _masked_grad(grad_3d, x3d, valid) if need_3d else None,
            _masked_grad(grad_w, weights, valid, w_finite if cfg.dense else None) if need_w else None,
        ]
        return (*out, None, None, None)


def _paired_problem(cfg: _Config, x2d: Tensor, x3d: Tensor, weights: Tensor) -> PairedProblem:
    """The paired form's problem: one term per pair, nothing pose-independent."""
    target = cfg.objective.target(x2d)
    const = torch.zeros_like(weights[:, 0])
    return PairedProblem(cfg.objective, x3d, target, weights, const, cfg.robust, cfg.scale_sq)


def _masked_grad(gx: Tensor | None, like: Tensor, valid: Tensor, finite: Tensor | None = None) -> Tensor:
    """Exactly zero gradient for invalid samples and for samples whose gradient is not finite.

    Args:
        gx: gradient or None (zero).
        like: the input it belongs to.
        valid: (B,) bool.
        finite: (B,) bool if known (saves a pass over a large gradient), else computed.
    """
    if gx is None:
        return torch.zeros_like(like)
    finite = torch.isfinite(gx.flatten(1).sum(-1)) if finite is None else finite
    return _zero_samples(gx, valid & finite)


def _check_shapes(x2d: Tensor, x3d: Tensor, weights: Tensor) -> bool:
    """Validate shapes; return True for the dense form."""
    if x2d.dim() != 3 or x2d.shape[-1] != 2 or x3d.dim() != 3 or x3d.shape[-1] != 3:
        raise ValueError(
            f"x2d must be (B, m, 2) and x3d (B, n, 3), got {tuple(x2d.shape)}, {tuple(x3d.shape)}"
        )
    B, m, n = x2d.shape[0], x2d.shape[1], x3d.shape[1]
    if weights.shape == (B, m, n):
        return True
    if weights.shape == (B, m) and m == n:
        return False
    raise ValueError(
        f"weights must be (B, m, n) = {(B, m, n)} (dense) or (B, k) with x2d (B, k, 2), x3d (B, k, 3) "
        f"(paired), got {tuple(weights.shape)}"
    )


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """Zero the entries outside ``mask`` (broadcast over trailing axes); their gradient is zero."""
    return torch.where(mask.view(*mask.shape, *([1] * (x.dim() - mask.dim()))), x, torch.zeros_like(x))


def _apply_masks(
    dense: bool, x2d: Tensor, x3d: Tensor, weights: Tensor, row_mask: Tensor | None, col_mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Zero padded points and their weights (a pass over W only when a mask is given)."""
    if row_mask is None and col_mask is None:
        return x2d, x3d, weights
    B, m, n = x2d.shape[0], x2d.shape[1], x3d.shape[1]
    rm = torch.ones(B, m, dtype=torch.bool, device=x2d.device) if row_mask is None else row_mask.bool()
    cm = torch.ones(B, n, dtype=torch.bool, device=x2d.device) if col_mask is None else col_mask.bool()
    if not dense:
        rm = cm = rm & cm
    x2d, x3d = _masked(x2d, rm), _masked(x3d, cm)
    weights = _masked(weights, rm[:, :, None] & cm[:, None, :]) if dense else _masked(weights, rm)
    return x2d, x3d, weights


def _initial_pose(
    dense: bool,
    x2d: Tensor,
    x3d: Tensor,
    weights: Tensor,
    opts: RansacOptions,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """RANSAC on the top-k weighted pairs (no gradients)."""
    topk, threshold, iterations = opts.topk, opts.threshold, opts.iterations
    with torch.no_grad():
        if dense:
            k = topk if topk is not None else min(1000, int(1.5 * x2d.shape[1]))
            rows, cols, w = top_pairs(weights, k)
        else:
            k = min(topk if topk is not None else weights.shape[1], weights.shape[1])
            w, idx = weights.topk(k, dim=-1)
            rows = cols = idx
        x = x2d.gather(1, rows[..., None].expand(-1, -1, 2))
        X = x3d.gather(1, cols[..., None].expand(-1, -1, 3))
        # Samples with non-finite candidates are invalid anyway; zeros keep the linear algebra defined.
        finite = _samples_finite(x, X, w)
        x, X, w = _zero_samples(x, finite), _zero_samples(X, finite), _zero_samples(w, finite)
        if resolve_init(opts.backend, x.device) == "opencv":
            R, t, _ = opencv_ransac(x, X, w, threshold, iterations)
        else:
            R, t, _ = torch_ransac(x, X, w, threshold, iterations, generator=generator)
    return R, t


def resolve_init(init: str, device: torch.device) -> str:
    """The RANSAC initialisation ``init`` names on ``device``: "auto" is OpenCV's on the CPU (one
    sample at a time, no batch overhead) and the batched torch one elsewhere.

    Args:
        init: "auto", "opencv" or "torch".
    Returns:
        "opencv" or "torch".
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "auto":
        return "opencv" if torch.device(device).type == "cpu" else "torch"
    return init


def weighted_pnp(
    x2d: Tensor,
    x3d: Tensor,
    weights: Tensor,
    *,
    pose_init: tuple[Tensor, Tensor] | None = None,
    solver: SolverOptions | None = None,
    ransac: RansacOptions | None = None,
    sparse_topk: int | None = None,
    row_mask: Tensor | None = None,
    col_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> PnPResult:
    """Weighted PnP as a differentiable layer: the pose minimising a weighted 2D-3D objective.

    Forms:
      - dense: ``x2d`` (B, m, 2), ``x3d`` (B, n, 3), ``weights`` (B, m, n), every pair weighted (a
        transport plan); each solver iteration costs O(n) after one bmm ``W^T [b | x | 1]``.
      - paired: ``x2d`` (B, k, 2), ``x3d`` (B, k, 3), ``weights`` (B, k).

    Objectives (:class:`~bpnp.nodes.pnp.options.SolverOptions`; per pair, with ``X = R p + t``):
    "angular" ``1 - b . normalise(X)`` with the bearing ``b = normalise([x; 1])``; "reprojection"
    ``|pi(X) - x|^2`` in normalised image coordinates. A robust kernel (applied to these squared
    errors as ``rho(e)``, see :mod:`bpnp.nodes.pnp.robust`) needs the paired form; for a dense plan
    pass ``sparse_topk`` to solve on its ``sparse_topk`` largest pairs, which also removes the bias a
    diffuse plan puts on the dense objective.

    Gradients of any loss on ``R``, ``t`` and ``objective`` reach ``weights``, ``x2d`` and ``x3d``
    by implicit differentiation. Samples that are degenerate (all weights zero, fewer than 4 effective
    correspondences or distinct 3D points, collinear 3D points, non-finite input, points behind the
    camera, singular Hessian) or whose solver did not converge within ``max_iter`` (the implicit
    gradient needs a stationary point) get ``valid = False``, finite outputs and exactly zero
    gradient; a warning is logged once.
    The problem is solved with the 3D points centred at unit RMS radius and the pose mapped back, so
    results and checks do not depend on the scene's units.

    Args:
        x2d: normalised image coordinates ``K^-1 [u, v, 1]`` (first two entries).
        x3d: world points.
        weights: non-negative weights, dense (B, m, n) or paired (B, k).
        pose_init: ``(R (B, 3, 3), t (B, 3))``, or None to initialise by RANSAC on the top-k pairs.
        solver: the objective, robust kernel and Levenberg-Marquardt settings (default
            ``SolverOptions()``: angular, no kernel, 50 iterations).
        ransac: the initialisation when ``pose_init`` is None (default ``RansacOptions()``: OpenCV
            on CPU tensors, the batched torch P3P RANSAC elsewhere).
        sparse_topk: dense form only: solve on the ``sparse_topk`` largest pairs (paired problem).
        row_mask: (B, m) bool, False for padded 2D points (paired: padded pairs).
        col_mask: (B, n) bool, False for padded 3D points (paired: padded pairs).
        generator: random generator of the torch RANSAC, on the inputs' device.
    Returns:
        :class:`PnPResult`.
    """
    # Long because the docstring documents every argument, about half of its lines.
    solver = SolverOptions() if solver is None else solver
    ransac = RansacOptions() if ransac is None else ransac
    if not isinstance(solver, SolverOptions) or not isinstance(ransac, RansacOptions):
        raise TypeError(
            f"weighted_pnp: 'solver' must be a SolverOptions and 'ransac' a RansacOptions, got "
            f"{type(solver).__name__} and {type(ransac).__name__}"
        )
    dense = _check_shapes(x2d, x3d, weights)
    objective, kernel = solver.objective_fn, solver.kernel
    if dense and not kernel.identity and sparse_topk is None:
        raise ValueError("robust kernels need the paired form: pass sparse_topk for a dense plan")
    dtype = torch.promote_types(torch.promote_types(x2d.dtype, x3d.dtype), weights.dtype)
    if not dtype.is_floating_point:
        raise TypeError(
            f"weighted_pnp: 'x2d', 'x3d' and 'weights' must be floating point, got {x2d.dtype}, {x3d.dtype}, "
            f"{weights.dtype}"
        )
    x2d, x3d, weights = x2d.to(dtype), x3d.to(dtype), weights.to(dtype)
    if pose_init is not None:  # checked first: an empty problem returns before it is used
        pose_init = _check_pose_init(pose_init, x2d.shape[0], dtype, x2d.device)
    if weights.numel() == 0:  # no sample, or no pair in any: nothing to solve
        return _empty_result(weights, x2d.shape[0])
    x2d, x3d, weights = _apply_masks(dense, x2d, x3d, weights, row_mask, col_mask)

    if dense and sparse_topk is not None:
        rows, cols, _ = top_pairs(weights.detach(), sparse_topk)
        B, _, n = weights.shape
        weights = weights.flatten(1).gather(1, rows * n + cols)
        x2d = x2d.gather(1, rows[..., None].expand(-1, -1, 2))
        x3d = x3d.gather(1, cols[..., None].expand(-1, -1, 3))
        dense = False

    # Solve with the 3D points centred and at unit RMS radius: the objectives are invariant to the
    # scene's scale, and the solver's tolerances and the Hessian test then are too.
    # The frame is held constant: the solution maps back exactly for any fixed (c, s), so no gradient
    # flows through it (and degenerate samples keep an exactly zero one).
    c, s = _scene_frame(x3d.detach(), _point_mask(dense, x3d, weights, col_mask))
    x3d = (x3d - c[:, None]) / s[:, None, None]
    if pose_init is None:
        R0, t0 = _initial_pose(dense, x2d, x3d, weights, ransac, generator)
    else:
        R0, t0 = pose_init
        t0 = ((R0 @ c[..., None]).squeeze(-1) + t0) / s[:, None]
    init_ok = torch.isfinite(R0).all((-1, -2)) & torch.isfinite(t0).all(-1)
    R0 = torch.where(init_ok[:, None, None], R0, torch.eye(3, dtype=dtype, device=R0.device).expand_as(R0))
    t0 = torch.where(init_ok[:, None], t0, torch.zeros_like(t0))

    cfg = _Config(
        dense, objective, kernel, solver.robust_scale**2, solver.max_iter, solver.tol, solver.noise_level
    )
    R, t, value, valid, refined, iterations, converged = declarative(
        PnPNode(cfg), x2d, x3d, weights, R0, t0, init_ok
    )
    # Back to the scene's frame: x_cam = R X + t with X = s X_n + c, and the camera frame scaled by s.
    t = s[:, None] * t - (R @ c[..., None]).squeeze(-1)
    t0 = s[:, None] * t0 - (R0 @ c[..., None]).squeeze(-1)
    return PnPResult(R, t, value, valid, refined, iterations, converged, R0, t0)


def _empty_result(weights: Tensor, B: int) -> PnPResult:
    """Every sample invalid, at the identity pose; ``weights`` is empty, so the zero it contributes
    keeps the outputs on the autograd graph without touching any number."""
    zero = weights.sum() * 0
    R = torch.eye(3, dtype=weights.dtype, device=weights.device).expand(B, 3, 3) + zero
    t = torch.zeros(B, 3, dtype=weights.dtype, device=weights.device) + zero
    no = torch.zeros(B, dtype=torch.bool, device=weights.device)
    steps = torch.zeros(B, dtype=torch.long, device=weights.device)
    return PnPResult(R, t, t[:, 0], no, no, steps, no, R.detach(), t.detach())


def _point_mask(dense: bool, x3d: Tensor, weights: Tensor, col_mask: Tensor | None) -> Tensor:
    """(B, n) bool: the 3D points that define the frame: unpadded ones (dense), weighted ones (paired)."""
    if not dense:
        return weights.detach() > 0
    if col_mask is None:
        return torch.ones(x3d.shape[:2], dtype=torch.bool, device=x3d.device)
    return col_mask.bool()


def _scene_frame(x3d: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Centroid (B, 3) and RMS radius (B,) of the unmasked points; (0, 1) where they are not finite
    or all coincide (the layer then flags or solves the sample as it is)."""
    w = mask.to(x3d.dtype)
    count = w.sum(-1).clamp_min(1.0)
    c = (w[..., None] * x3d).sum(1) / count[:, None]
    s = ((w * (x3d - c[:, None]).square().sum(-1)).sum(-1) / count).sqrt()
    ok = torch.isfinite(c).all(-1) & torch.isfinite(s) & (s > torch.finfo(x3d.dtype).tiny ** 0.25)
    c = torch.where(ok[:, None], c, torch.zeros_like(c))
    return c, torch.where(ok, s, torch.ones_like(s))


def _check_pose_init(pose_init, B: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    if not (isinstance(pose_init, (tuple, list)) and len(pose_init) == 2):
        raise ValueError("weighted_pnp: 'pose_init' must be a pair (R (B, 3, 3), t (B, 3)) or None")
    R0, t0 = pose_init
    if tuple(R0.shape) != (B, 3, 3) or tuple(t0.shape) != (B, 3):
        raise ValueError(
            f"weighted_pnp: 'pose_init' must be (R (B, 3, 3), t (B, 3)) with B = {B}, got R "
            f"{tuple(R0.shape)} and t {tuple(t0.shape)}"
        )
    return R0.detach().to(device=device, dtype=dtype), t0.detach().to(device=device, dtype=dtype)
