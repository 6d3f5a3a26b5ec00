"""Randomised reliability check of the two declarative layers, ``sinkhorn`` and ``weighted_pnp``.

Each case is a random batch that mixes normal and degenerate samples, extreme scales, empty and
fully padded sets, both dtypes and (Sinkhorn) both backward modes or (PnP) both forms. Every case is
classified as

- correct: the layer returned and every invariant of its contract holds (docs/reliability.md);
- clear error: a ValueError / TypeError whose message names an argument or a sample;
- silent failure: anything else (non-finite output or gradient, a broken invariant, a sample that
  depends on its batch-mates, an accepted invalid argument, any other exception).

Cases are drawn from ``numpy.random.default_rng((seed, layer, index))``, so one case can be replayed
alone with its traceback:

    python scripts/fuzz_layers.py --cases 2000 --seed 0
    python scripts/fuzz_layers.py --layer pnp --seed 0 --replay 17

Exits with status 1 when any silent failure occurred.
"""

from __future__ import annotations

import argparse
import math
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bpnp.geometry import axis_angle_to_matrix
from bpnp.nodes import RansacOptions, SolverOptions, sinkhorn, weighted_pnp

LAYERS = ("sinkhorn", "pnp")
# An error is clear when its message names what was wrong: an argument (quoted single letters, as
# bare 'r' or 'c' occur in any sentence) or the offending sample.
_NAMED = re.compile(
    r"'(M|r|c)'|\b(gamma|max_iter|tol|backward|row_mask|col_mask|mask|dustbin|x2d|x3d|weights|"
    r"pose_init|objective|robust|init|sparse_topk|sample)\b"
)
# Batch-mate independence: L1 distance of plans, largest entry difference of poses.
_MATE_TOL = {torch.float32: 1e-6, torch.float64: 1e-9}


@dataclass
class Case:
    """One call of a layer: its arguments and what the harness knows about each sample.

    Attributes:
        args: positional tensors of the call.
        kwargs: keyword arguments of the call.
        kinds: per-sample kind names ("normal", "padded", ...).
        expect_error: an invalid argument was planted; the call must raise a clear error.
        meta: generator facts the checks need (scales, true poses, ...).
    """

    args: tuple
    kwargs: dict
    kinds: list[str]
    expect_error: str | None = None
    meta: dict = field(default_factory=dict)

    def describe(self) -> str:
        """A one-line summary of the case for the report."""
        shapes = [tuple(a.shape) for a in self.args]
        kw = {
            k: (float(v.detach()) if v.numel() == 1 else tuple(v.shape)) if isinstance(v, torch.Tensor) else v
            for k, v in self.kwargs.items()
            if k not in ("generator", "pose_init")
        }
        dtype = self.args[0].dtype if self.args else None
        bad = f" invalid={self.expect_error}" if self.expect_error else ""
        return f"{dtype} shapes={shapes} kinds={self.kinds} {kw}{bad}"


def names_argument(message: str) -> bool:
    """Does an error message name an argument or a sample?"""
    return _NAMED.search(message) is not None


def classify(run: Callable[[], list[str]], expect_error: str | None) -> tuple[str, str]:
    """Run one case and classify it.

    Args:
        run: performs the call and the checks; returns the violated invariants (empty if none).
        expect_error: set when the case holds an invalid argument.
    Returns:
        ``(outcome, detail)`` with outcome "correct", "clear" or "silent".
    """
    try:
        problems = run()
    except (ValueError, TypeError) as e:
        if names_argument(str(e)):
            return "clear", f"{type(e).__name__}: {e}"
        return "silent", f"{type(e).__name__} naming no argument: {e}"
    except Exception as e:  # any other exception is a silent failure by definition
        return "silent", f"{type(e).__name__}: {e}"
    if expect_error:
        return "silent", f"invalid argument accepted ({expect_error})"
    if problems:
        return "silent", "; ".join(problems[:3])
    return "correct", ""


# ---------------------------------------------------------------------------------------------
# Sinkhorn


def _sinkhorn_cost(rng: np.random.Generator, kind: str, m: int, n: int) -> np.ndarray:
    """One (m, n) cost matrix of a kind; padding-related kinds get normal costs (the masks do it)."""
    u = rng.random((m, n))
    if kind == "scaled":
        return u * 10 ** rng.uniform(-6, 20)
    if kind == "offset":
        return u + 10 ** rng.uniform(0, 12)
    if kind == "constant":
        return np.full((m, n), rng.choice([-1.0, 1.0]) * 10 ** rng.uniform(-6, 20))
    if kind == "ties":
        return rng.integers(0, 3, (m, n)).astype(float)
    if kind == "duplicate":
        return np.tile(rng.random(n), (m, 1)) * 10 ** rng.uniform(-3, 3)
    if kind == "negative":
        return -u * 10 ** rng.uniform(0, 6)
    return u * 10 ** rng.uniform(-3, 1)


_SINKHORN_KINDS = (
    "normal scaled offset constant ties duplicate negative padded nan_padding zero_marginal".split()
)


def _sinkhorn_masks(rng: np.random.Generator, kinds: list[str], m: int, n: int) -> tuple[np.ndarray, ...]:
    """Row and column masks: all False on one side for "padded", random padding otherwise."""
    B = len(kinds)
    rm, cm = np.ones((B, m), bool), np.ones((B, n), bool)
    for b, kind in enumerate(kinds):
        if kind == "padded":
            side = rng.integers(3)
            rm[b] &= side == 1
            cm[b] &= side == 0
        elif kind == "nan_padding" or rng.random() < 0.3:
            rm[b] = rng.random(m) < 0.7
            cm[b] = rng.random(n) < 0.7
    return rm, cm


def make_sinkhorn_case(rng: np.random.Generator) -> Case:
    """A random batch of cost matrices and options, possibly with one invalid argument."""
    dtype = torch.float32 if rng.random() < 0.5 else torch.float64
    B = int(rng.choice([0, 1, 2, 3, 4], p=[0.04, 0.2, 0.3, 0.26, 0.2]))
    m, n = (
        int(rng.choice([0, 1, 2, 3, 5, 8, 13, 24], p=[0.05, 0.1, 0.1, 0.2, 0.2, 0.15, 0.1, 0.1]))
        for _ in range(2)
    )
    kinds = [str(rng.choice(_SINKHORN_KINDS)) for _ in range(B)]
    if B >= 2 and rng.random() < 0.7:
        kinds[0] = "normal"  # the sample compared with its solve alone
    M = np.stack([_sinkhorn_cost(rng, k, m, n) for k in kinds]) if B else np.zeros((0, m, n))
    kwargs: dict = {
        "gamma": float(10 ** rng.uniform(-2, 4)),
        "max_iter": int(rng.choice([1, 5, 50, 100, 300])),
        "tol": float(rng.choice([0.0, 1e-9, 1e-6, 1e-3])),
        "backward": str(rng.choice(["implicit", "unroll"])),
        "return_info": True,
    }
    if any(k in ("padded", "nan_padding") for k in kinds) or rng.random() < 0.3:
        rm, cm = _sinkhorn_masks(rng, kinds, m, n)
        for b, kind in enumerate(kinds):
            if kind == "nan_padding":  # anything may hide under the padding
                M[b][~(rm[b][:, None] & cm[b][None, :])] = rng.choice([np.nan, np.inf, -np.inf])
        kwargs["row_mask"], kwargs["col_mask"] = torch.from_numpy(rm), torch.from_numpy(cm)
    args = (torch.from_numpy(M).to(dtype),)
    if rng.random() < 0.4:
        z = float(rng.choice([-3.0, 0.0, 0.5, 1.0, 10.0, 1e3]))
        kwargs["dustbin"] = torch.tensor(z, dtype=dtype, requires_grad=True) if rng.random() < 0.6 else z
    elif rng.random() < 0.4:
        r, c = rng.random((B, m)), rng.random((B, n))
        r[rng.random((B, m)) < 0.15] = 0.0
        for b, kind in enumerate(kinds):
            if kind == "zero_marginal":
                r[b] = 0.0
        kwargs["r"], kwargs["c"] = torch.from_numpy(r).to(dtype), torch.from_numpy(c).to(dtype)
    case = Case(args, kwargs, kinds)
    if rng.random() < 0.1:
        _plant_sinkhorn_error(rng, case)
    return case


def _plant_sinkhorn_error(rng: np.random.Generator, case: Case) -> None:
    """Replace one argument by an invalid one (only ones that are invalid for this batch)."""
    (M,), kw = case.args, case.kwargs
    B, m, n = M.shape
    options = ["gamma", "max_iter", "backward", "mask_shape", "M_dim", "tol"]
    if M.numel():
        options += ["nan_cost", "r_negative"]
    if "dustbin" not in kw:
        options += ["dustbin_with_r", "dustbin_nan"]
    what = str(rng.choice(options))
    if what == "gamma":
        kw["gamma"] = float(rng.choice([np.nan, np.inf, 0.0, -1.0]))
    elif what == "max_iter":
        kw["max_iter"] = 0
    elif what == "tol":
        kw["tol"] = -1e-3
    elif what == "backward":
        kw["backward"] = "unrolled"
    elif what == "mask_shape":
        kw["row_mask"] = torch.ones(B, m + 1, dtype=torch.bool)
    elif what == "M_dim":
        case.args = (M.reshape(B * m, n),)
    elif what == "nan_cost":
        M = M.clone()
        M.view(-1)[int(rng.integers(M.numel()))] = math.nan
        case.args = (M,)
        _drop(kw, "row_mask", "col_mask")
    elif what == "r_negative":
        _drop(kw, "dustbin", "row_mask", "col_mask")
        kw["r"] = torch.rand(B, m, dtype=M.dtype)
        kw["r"][0, 0] = -1.0
        kw["c"] = torch.rand(B, n, dtype=M.dtype)
    elif what == "dustbin_with_r":
        kw["dustbin"], kw["r"] = 1.0, torch.rand(B, m, dtype=M.dtype)
        _drop(kw, "c")
    elif what == "dustbin_nan":
        kw["dustbin"] = math.nan
        _drop(kw, "r", "c")
    case.expect_error = what


def _drop(kw: dict, *keys: str) -> None:
    for key in keys:
        kw.pop(key, None)


def sinkhorn_marginals(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """The marginals the plan must have, computed from the arguments alone: (B, m'), (B, n')."""
    (M,), kw = case.args, case.kwargs
    B, m, n = M.shape
    rm = kw.get("row_mask", torch.ones(B, m, dtype=torch.bool)).double()
    cm = kw.get("col_mask", torch.ones(B, n, dtype=torch.bool)).double()
    if kw.get("dustbin") is not None:
        ms, ns = rm.sum(-1, keepdim=True), cm.sum(-1, keepdim=True)
        has = (ms > 0) & (ns > 0)  # the dustbins exist when both sides have points
        r, c = torch.cat([rm, ns * has], 1), torch.cat([cm, ms * has], 1)
    else:
        r = rm * kw["r"].double() if "r" in kw else rm
        c = cm * kw["c"].double() if "c" in kw else cm
    rs, cs = r.sum(-1, keepdim=True), c.sum(-1, keepdim=True)
    both = (rs > 0) & (cs > 0)
    r = torch.where(both, r / rs.clamp_min(1e-300), 0.0)
    c = torch.where(both, c / cs.clamp_min(1e-300), 0.0)
    return r, c


def check_sinkhorn_plan(case: Case, P: torch.Tensor, info) -> list[str]:
    """Invariants of a returned plan: shape, dtype, finite, non-negative, zero mass where a marginal
    is zero, exact columns, ``converged`` agreeing with the row error."""
    M = case.args[0]
    B, m, n = M.shape
    extra = int(case.kwargs.get("dustbin") is not None)
    problems = []
    if P.shape != (B, m + extra, n + extra) or P.dtype != M.dtype:
        return [f"plan of shape {tuple(P.shape)} {P.dtype}"]
    if not torch.isfinite(P).all():
        return ["non-finite plan"]
    for name in ("iterations", "error", "converged", "log_error"):
        x = getattr(info, name)
        if x.shape != (B,) or not torch.isfinite(x.double()).all():
            problems.append(f"info.{name} not a finite (B,) tensor")
    if (P < 0).any():
        problems.append("negative plan entries")
    r, c = sinkhorn_marginals(case)
    P64 = P.detach().double()
    if ((r[:, :, None] == 0) | (c[:, None, :] == 0)).logical_and(P64 != 0).any():
        problems.append("mass on a padded or zero-marginal entry")
    # Entries are exact to the precision the potentials imply (info.log_error), not better.
    eps = (1e-6 if M.dtype == torch.float32 else 1e-12) + 2 * info.log_error.double()
    col_err = (P64.sum(-2) - c).abs().sum(-1)
    if (col_err > eps).any():
        problems.append(f"column marginals off by {col_err.max():.3g}")
    tol = case.kwargs["tol"] if case.kwargs["tol"] > 0 else 1e-6
    row_err = (P64.sum(-1) - r).abs().sum(-1)
    conv = info.converged.bool()
    if (conv & (row_err > tol + eps)).any():
        problems.append(f"converged with row error {row_err[conv].max():.3g} > tol {tol:g}")
    if (~conv & (row_err < tol - eps)).any():
        problems.append(f"not converged with row error {row_err[~conv].min():.3g} < tol {tol:g}")
    return problems


def _sinkhorn_call(case: Case, M: torch.Tensor, b: slice | None = None):
    """Call the layer on the case (or on the samples ``b`` only); a fresh leaf for a learnable dustbin."""
    kw = dict(case.kwargs)
    for k in ("r", "c", "row_mask", "col_mask"):
        if k in kw and b is not None:
            kw[k] = kw[k][b]
    if isinstance(kw.get("dustbin"), torch.Tensor):
        kw["dustbin"] = kw["dustbin"].detach().clone().requires_grad_(True)
    return sinkhorn(M if b is None else M[b], **kw), kw.get("dustbin")


def run_sinkhorn(case: Case, seed: int = 0) -> list[str]:
    """Forward, backward of a random linear loss, and the batch-mate comparison; violated invariants."""
    M = case.args[0].clone().requires_grad_(True)
    (P, info), z = _sinkhorn_call(case, M)
    problems = check_sinkhorn_plan(case, P, info)
    if problems:
        return problems
    V = torch.randn(P.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (P * V.to(P.dtype)).sum().backward()
    grads = {"M": M.grad} | ({"dustbin": z.grad} if isinstance(z, torch.Tensor) else {})
    for name, g in grads.items():
        if g is not None and not torch.isfinite(g).all():
            problems.append(f"non-finite gradient wrt {name}")
    if M.grad is not None and "row_mask" in case.kwargs:
        valid = case.kwargs["row_mask"][:, :, None] & case.kwargs["col_mask"][:, None, :]
        if (M.grad[~valid] != 0).any():
            problems.append("gradient on padded costs")
    if M.shape[0] >= 2 and case.kinds[0] == "normal":
        problems += _sinkhorn_mate_check(case, P, info)
    return problems


def _sinkhorn_mate_check(case: Case, P: torch.Tensor, info) -> list[str]:
    """Sample 0 solved alone must give the plan it got in the batch, to the precision of either plan
    (a float32 batch re-solved in float64 for a batch-mate's sake gives a more precise plan)."""
    M = case.args[0]
    try:
        with torch.no_grad():
            (alone, alone_info), _ = _sinkhorn_call(case, M, slice(0, 1))
    except ValueError as e:
        return [f"sample 0 alone raises ({e}) but not in its batch"]
    diff = float((alone[0].double() - P[0].detach().double()).abs().sum())
    precision = 2 * max(float(alone_info.log_error[0]), float(info.log_error[0]))
    if diff > _MATE_TOL[M.dtype] + precision:
        return [f"sample 0 depends on its batch-mates: plan L1 difference {diff:.3g}"]
    return []


# ---------------------------------------------------------------------------------------------
# Weighted PnP

# Kinds whose samples must come out invalid, whatever the solver does.
_NON_FINITE = {"nan_weight", "nan_x2d", "nan_x3d", "inf_x3d"}
PNP_INVALID = _NON_FINITE | set("zero_weights few_pairs three_distinct collinear padded nan_init".split())
_PNP_KINDS = [
    *sorted(PNP_INVALID),
    *"normal noisy outliers planar behind same_bearing nan_padding weight_spread".split(),
]


def _rotation(rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    return axis_angle_to_matrix(torch.from_numpy(rng.normal(size=3) * scale)).numpy()


def _pnp_sample(rng: np.random.Generator, kind: str, k: int, scale: float) -> dict:
    """One scene of ``k`` correspondences: world points, their normalised projections, weights, pose.

    Points in ``scale * [-1, 1]^3`` seen from about ``6 * scale`` away; the degenerate kinds break
    the scene, the points or the weights in one way each.
    """
    R = _rotation(rng)
    t = (rng.normal(0, 0.3, 3) + [0.0, 0.0, 6.0]) * scale
    X = rng.uniform(-1, 1, (k, 3)) * scale
    if kind == "three_distinct" and k:
        X = X[rng.integers(0, min(k, 3), k)]
    elif kind == "collinear":
        X = rng.uniform(-1, 1, (k, 1)) * rng.normal(size=3) * scale + X[:1] * 0.1
    elif kind == "planar":
        X[:, 2] = 0.0
    elif kind == "behind":
        t[2] = -t[2]
    Xc = X @ R.T + t
    x = Xc[:, :2] / Xc[:, 2:]
    if kind in ("noisy", "outliers"):
        x = x + rng.normal(0, 1e-3, x.shape)
    if kind == "outliers":
        out = rng.random(k) < 0.2
        x[out] = rng.uniform(-0.3, 0.3, (int(out.sum()), 2))
    elif kind == "same_bearing" and k:
        x[:] = x[0]
    w = rng.uniform(0.5, 1.5, k) * 10 ** rng.uniform(-6, 6)
    if kind == "weight_spread":
        w = w * 10 ** rng.uniform(-8, 8, k)
    elif kind == "zero_weights":
        w[:] = 0.0
    elif kind == "few_pairs":
        w[3:] = 0.0
    return {"X": X, "x": x, "w": w, "R": R, "t": t}


def _plant_nan(rng: np.random.Generator, kind: str, s: dict, keep: np.ndarray) -> None:
    """A non-finite entry for the nan / inf kinds (in place), on a pair that is not padding."""
    if not keep.any():
        return
    i = int(rng.choice(np.flatnonzero(keep)))
    if kind == "nan_weight":
        s["w"][i] = np.nan
    elif kind == "nan_x2d":
        s["x"][i, int(rng.integers(2))] = np.nan
    elif kind == "nan_x3d":
        s["X"][i, int(rng.integers(3))] = np.nan
    elif kind == "inf_x3d":
        s["X"][i, int(rng.integers(3))] = np.inf


def make_pnp_case(rng: np.random.Generator) -> Case:
    """A random batch of PnP problems, dense or paired, with options and possibly an invalid argument."""
    dtype = torch.float32 if rng.random() < 0.5 else torch.float64
    dense = rng.random() < 0.5
    B = int(rng.choice([0, 1, 2, 3, 4], p=[0.04, 0.2, 0.3, 0.26, 0.2]))
    k = int(rng.choice([0, 3, 4, 5, 6, 8, 12, 20, 40], p=[0.04, 0.06, 0.1, 0.1, 0.15, 0.15, 0.15, 0.15, 0.1]))
    scale = float(10 ** rng.uniform(-6, 6))
    init = str(rng.choice(["pose_init", "opencv", "torch"]))
    # Without a given initial pose, a NaN one cannot be planted.
    choices = _PNP_KINDS if init == "pose_init" else [kd for kd in _PNP_KINDS if kd != "nan_init"]
    kinds = [str(rng.choice(choices)) for _ in range(B)]
    if B >= 2 and rng.random() < 0.7:
        kinds[0] = "normal"
    samples = [_pnp_sample(rng, kind, k, scale) for kind in kinds]
    row_mask = _pnp_mask(rng, kinds, k)
    for b, (kind, s) in enumerate(zip(kinds, samples, strict=True)):
        _plant_nan(rng, kind, s, np.ones(k, bool) if row_mask is None else row_mask[b])
    X = np.stack([s["X"] for s in samples]) if B else np.zeros((0, k, 3))
    x = np.stack([s["x"] for s in samples]) if B else np.zeros((0, k, 2))
    w = np.stack([s["w"] for s in samples]) if B else np.zeros((0, k))
    kwargs: dict = {
        "objective": str(rng.choice(["angular", "reprojection"])),
        "max_iter": 50 if rng.random() < 0.85 else int(rng.choice([0, 1, 3])),
    }
    meta = {
        "scale": scale,
        "dense": dense,
        "init": init,
        "R": np.stack([s["R"] for s in samples] or [np.eye(3)])[:B],
        "t": np.stack([s["t"] for s in samples] or [np.zeros(3)])[:B],
    }
    if dense:
        x, w, row_mask, col_mask, meta["diffuse"] = _densify(rng, x, w, row_mask, kinds)
    else:
        col_mask = None
        if rng.random() < 0.3:
            kwargs["robust"] = str(rng.choice(["huber", "cauchy", "tanh", "geman_mcclure"]))
    if dense and rng.random() < 0.2:
        kwargs["sparse_topk"] = int(rng.integers(4, 2 * k + 5))
        if rng.random() < 0.5:
            kwargs["robust"] = str(rng.choice(["huber", "tanh"]))
    if row_mask is not None:
        _fill_padding(rng, kinds, x, X, w, row_mask, col_mask)
        kwargs["row_mask"] = torch.from_numpy(row_mask)
        if col_mask is not None:
            kwargs["col_mask"] = torch.from_numpy(col_mask)
    if init == "pose_init":
        kwargs["pose_init"] = _perturbed_poses(rng, meta, kinds, dtype)
    else:
        kwargs["init"] = init
        if init == "torch":
            kwargs["generator"] = torch.Generator().manual_seed(int(rng.integers(2**31)))
    args = tuple(torch.from_numpy(a).to(dtype) for a in (x, X, w))
    case = Case(args, kwargs, kinds, meta=meta)
    if rng.random() < 0.08:
        _plant_pnp_error(rng, case)
    return case


def _pnp_mask(rng: np.random.Generator, kinds: list[str], k: int) -> np.ndarray | None:
    """(B, k) mask: all False for "padded", some padding for "nan_padding" (and now and then)."""
    if not any(kd in ("padded", "nan_padding") for kd in kinds) and rng.random() > 0.2:
        return None
    mask = np.ones((len(kinds), k), bool)
    for b, kind in enumerate(kinds):
        if kind == "padded":
            mask[b] = False
        elif kind == "nan_padding" or rng.random() < 0.3:
            mask[b, rng.permutation(k)[: k // 4]] = False
    return mask


def _densify(
    rng: np.random.Generator, x: np.ndarray, w: np.ndarray, mask: np.ndarray | None, kinds: list[str]
):
    """Dense form of paired problems: shuffled 2D points plus a few spare ones, the weights a
    permutation matrix, with diffuse mass on every pair for some samples; masks for rows and columns.

    Returns:
        ``(x2d, W, row_mask, col_mask, diffuse (B,))``.
    """
    B, k = w.shape
    extra = int(rng.integers(0, 4))
    perm = np.stack([rng.permutation(k) for _ in range(B)]) if B else np.zeros((0, k), int)
    x2 = np.concatenate([np.take_along_axis(x, perm[..., None], 1), rng.uniform(-0.3, 0.3, (B, extra, 2))], 1)
    # Diffuse mass would give "few_pairs" samples constraints beyond their three pairs.
    diffuse = np.where(rng.random(B) < 0.3, 1e-3, 0.0) * np.array([kd != "few_pairs" for kd in kinds])
    top = np.nanmax(np.where(np.isfinite(w), w, np.nan), axis=-1, initial=0.0) if k else np.zeros(B)
    W = np.ones((B, k + extra, k)) * (diffuse * top)[:, None, None]
    for b in range(B):
        W[b, np.arange(k), perm[b]] = w[b, perm[b]]
    if mask is None:
        return x2, W, None, None, diffuse
    row_mask = np.concatenate([np.take_along_axis(mask, perm, 1), np.ones((B, extra), bool)], 1)
    row_mask[~mask.any(-1)] = False
    return x2, W, row_mask, mask, diffuse


def _fill_padding(rng, kinds, x, X, w, row_mask, col_mask) -> None:
    """Put garbage (NaN, inf, huge) under the padding of "nan_padding" samples, in place."""
    col_mask = row_mask if col_mask is None else col_mask
    for b, kind in enumerate(kinds):
        if kind != "nan_padding":
            continue
        junk = float(rng.choice([np.nan, np.inf, 1e30]))
        x[b][~row_mask[b]] = junk
        X[b][~col_mask[b]] = junk
        w[b][~row_mask[b]] = junk
        if w.ndim == 3:
            w[b][:, ~col_mask[b]] = junk


def _perturbed_poses(rng: np.random.Generator, meta: dict, kinds: list[str], dtype) -> tuple:
    """Initial poses near the true ones (NaN for "nan_init")."""
    B = len(kinds)
    R = np.stack([_rotation(rng, 0.03) @ meta["R"][b] for b in range(B)]) if B else np.zeros((0, 3, 3))
    t = meta["t"] + rng.normal(0, 0.03, (B, 3)) * meta["scale"]
    for b, kind in enumerate(kinds):
        if kind == "nan_init":
            t[b, 0] = np.nan
    return torch.from_numpy(R).to(dtype), torch.from_numpy(t).to(dtype)


def _plant_pnp_error(rng: np.random.Generator, case: Case) -> None:
    """Replace one argument by an invalid one."""
    x, X, w = case.args
    B = x.shape[0]
    options = ["weights_shape", "x2d_shape", "objective", "pose_init_shape"]
    if case.meta["dense"] and "sparse_topk" not in case.kwargs:
        options.append("robust_dense")
    what = str(rng.choice(options))
    if what == "weights_shape":
        case.args = (x, X, w[..., :-1] if w.shape[-1] else w[..., None])
    elif what == "x2d_shape":
        case.args = (torch.cat([x, x[..., :1]], -1), X, w)
    elif what == "objective":
        case.kwargs["objective"] = "reprojection_error"
    elif what == "pose_init_shape":
        case.kwargs["pose_init"] = (torch.eye(3, dtype=x.dtype).expand(B + 1, 3, 3), torch.zeros(B, 3))
    elif what == "robust_dense":
        case.kwargs["robust"] = "huber"
    case.expect_error = what


def _pnp_call(case: Case, tensors: tuple, b: slice | None = None):
    """Call the layer on the case, or on the samples ``b`` alone (a fresh generator of the same seed)."""
    kw = dict(case.kwargs)
    if b is not None:
        tensors = tuple(a[b] for a in tensors)
        for key in ("row_mask", "col_mask"):
            if key in kw:
                kw[key] = kw[key][b]
        if "pose_init" in kw:
            kw["pose_init"] = tuple(p[b] for p in kw["pose_init"])
    if "generator" in kw:
        kw["generator"] = torch.Generator().manual_seed(kw["generator"].initial_seed())
    # A case keeps its settings in one flat, printable dict; the layer takes them as typed options
    # (built here, so that a planted bad value is the layer call's error).
    solver = {k: kw.pop(k) for k in ("objective", "robust", "max_iter") if k in kw}
    if "init" in kw:
        kw["ransac"] = RansacOptions(backend=kw.pop("init"))
    return weighted_pnp(*tensors, solver=SolverOptions(**solver), **kw)


def check_pnp_result(case: Case, res) -> list[str]:
    """Invariants of a returned PnPResult: finite, consistent flags, rotations, degenerate samples
    invalid, valid samples in front of the camera, well-posed samples solved."""
    x, X, w = case.args
    B = x.shape[0]
    outs = {"R": res.R, "t": res.t, "objective": res.objective, "R_init": res.R_init, "t_init": res.t_init}
    shapes = {"R": (B, 3, 3), "t": (B, 3), "objective": (B,), "R_init": (B, 3, 3), "t_init": (B, 3)}
    for name, v in outs.items():
        if tuple(v.shape) != shapes[name] or not torch.isfinite(v).all():
            return [f"{name} not finite {shapes[name]}"]
    problems = []
    valid = res.valid
    if (valid & ~res.refined).any() or (valid & ~res.converged).any():
        problems.append("valid but not refined / converged")
    R = res.R.detach().double()
    tol = 1e-4 if x.dtype == torch.float32 else 1e-9
    if (R @ R.mT - torch.eye(3, dtype=torch.float64)).abs().amax((-1, -2)).gt(tol).any():
        problems.append("R not a rotation")
    # On a dense plan's top pairs, a non-finite entry may be left out with its pair.
    invalid = PNP_INVALID - _NON_FINITE if "sparse_topk" in case.kwargs else PNP_INVALID
    bad = [b for b, kind in enumerate(case.kinds) if kind in invalid and bool(valid[b])]
    if bad:
        problems.append(f"degenerate samples {bad} ({[case.kinds[b] for b in bad]}) valid")
    problems += _pnp_cheirality(case, res)
    problems += _pnp_accuracy(case, res)
    return problems


def _pair_view(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (B, N) and world points (B, N, 3) of the pairs the layer weighs (masks applied)."""
    x, X, w = (a.detach().double() for a in case.args)
    kw = case.kwargs
    if w.dim() == 3:
        keep = kw.get("col_mask", torch.ones(X.shape[:2], dtype=torch.bool))
        keep = keep & kw.get("row_mask", torch.ones(x.shape[:2], dtype=torch.bool)).any(-1, keepdim=True)
        col = torch.where(keep[:, None, :], w, 0.0)
        col = torch.where(kw.get("row_mask", torch.ones(x.shape[:2], dtype=torch.bool))[..., None], col, 0.0)
        return col.sum(1), X
    keep = kw.get("row_mask", torch.ones(w.shape, dtype=torch.bool))
    return torch.where(keep, w, 0.0), X


def _pnp_cheirality(case: Case, res) -> list[str]:
    """Valid samples: no weighted point behind the camera (reprojection), at most half the weight
    (angular)."""
    if case.meta["dense"] and "sparse_topk" in case.kwargs:
        return []  # the pairs the layer kept are its own choice
    w, X = _pair_view(case)
    depth = (X @ res.R.detach().double().mT + res.t.detach().double()[:, None])[..., 2]
    use = (w > 0) & torch.isfinite(depth)
    if case.kwargs["objective"] == "reprojection":
        behind = (use & (depth <= 0)).any(-1)
    else:
        behind = torch.where(use & (depth <= 0), w, 0.0).sum(-1) > 0.5 * torch.where(use, w, 0.0).sum(-1)
    bad = (res.valid & behind).nonzero().flatten().tolist()
    return [f"valid samples {bad} behind the camera"] if bad else []


def _pnp_accuracy(case: Case, res) -> list[str]:
    """A noise-free, well-posed sample refined from a pose next to the true one is valid and exact."""
    if case.meta["init"] != "pose_init" or case.kwargs["max_iter"] < 50 or case.args[1].shape[1] < 6:
        return []
    if "robust" in case.kwargs or "sparse_topk" in case.kwargs:
        return []
    diffuse = case.meta.get("diffuse", np.zeros(len(case.kinds)))
    problems = []
    f32 = case.args[0].dtype == torch.float32
    for b, kind in enumerate(case.kinds):
        if (
            kind != "normal"
            or diffuse[b] > 0
            or ("row_mask" in case.kwargs and not bool(case.kwargs["row_mask"][b].all()))
        ):
            continue
        if not bool(res.valid[b]):
            problems.append(f"well-posed sample {b} invalid")
            continue
        R_gt = torch.from_numpy(case.meta["R"][b])
        err_R = float((res.R[b].detach().double() - R_gt).abs().max())
        err_t = float((res.t[b].detach().double() - torch.from_numpy(case.meta["t"][b])).abs().max())
        tol = 1e-3 if f32 else 1e-8
        if err_R > tol or err_t > tol * 10 * case.meta["scale"]:
            problems.append(f"well-posed sample {b} off the true pose by {err_R:.2g} (R), {err_t:.2g} (t)")
    return problems


def run_pnp(case: Case, seed: int = 0) -> list[str]:
    """Forward, backward of a random linear loss, and the batch-mate comparison; violated invariants."""
    leaves = tuple(a.clone().requires_grad_(True) for a in case.args)
    res = _pnp_call(case, leaves)
    problems = check_pnp_result(case, res)
    if problems:
        return problems
    g = torch.Generator().manual_seed(seed)
    dt = res.R.dtype
    A, a, c = (
        torch.randn(s, generator=g, dtype=torch.float64).to(dt)
        for s in (res.R.shape, res.t.shape, res.objective.shape)
    )
    loss = (res.R * A).sum() + (res.t * a).sum() / case.meta["scale"] + (res.objective * c).sum()
    if loss.requires_grad:
        loss.backward()
    problems += _pnp_grad_check(case, leaves, res.valid)
    if leaves[0].shape[0] >= 2 and case.kinds[0] == "normal":
        problems += _pnp_mate_check(case, res)
    return problems


def _pnp_grad_check(case: Case, leaves: tuple, valid: torch.Tensor) -> list[str]:
    """Finite gradients; exactly zero for invalid samples and on padded entries."""
    problems = []
    for name, leaf in zip(("x2d", "x3d", "weights"), leaves, strict=True):
        g = leaf.grad
        if g is None:
            continue
        if not torch.isfinite(g).all():
            problems.append(f"non-finite gradient wrt {name}")
            continue
        if (g[~valid] != 0).any():
            problems.append(f"non-zero gradient wrt {name} of an invalid sample")
        pad = _padding(case, name, g.shape)
        if pad is not None and (g[pad] != 0).any():
            problems.append(f"non-zero gradient wrt {name} on padding")
    return problems


def _padding(case: Case, name: str, shape: torch.Size) -> torch.Tensor | None:
    """Bool mask of the padded entries of an input (same shape), or None without masks."""
    kw = case.kwargs
    if "row_mask" not in kw:
        return None
    rm = kw["row_mask"]
    cm = kw.get("col_mask", rm)
    if name == "x2d":
        return (~rm)[..., None].expand(shape)
    if name == "x3d":
        return (~cm)[..., None].expand(shape)
    if len(shape) == 3:
        return ~(rm[:, :, None] & cm[:, None, :])
    return ~rm


def _pnp_mate_check(case: Case, res) -> list[str]:
    """Sample 0 solved alone must get the pose and validity it got in the batch."""
    with torch.no_grad():
        alone = _pnp_call(case, case.args, slice(0, 1))
    tol = _MATE_TOL[case.args[0].dtype]
    dR = float((alone.R[0] - res.R[0].detach()).abs().max())
    dt = float((alone.t[0] - res.t[0].detach()).abs().max()) / case.meta["scale"]
    if bool(alone.valid[0]) != bool(res.valid[0]) or dR > tol or dt > tol:
        return [
            f"sample 0 depends on its batch-mates: valid {bool(res.valid[0])} vs {bool(alone.valid[0])} "
            f"alone, R differs by {dR:.2g}, t / scale by {dt:.2g}"
        ]
    return []


# ---------------------------------------------------------------------------------------------
# Driver

MAKERS = {"sinkhorn": make_sinkhorn_case, "pnp": make_pnp_case}
RUNNERS = {"sinkhorn": run_sinkhorn, "pnp": run_pnp}


def case_rng(seed: int, layer: str, index: int) -> np.random.Generator:
    """The generator of one case: replayable alone."""
    return np.random.default_rng((seed, LAYERS.index(layer), index))


def run_case(layer: str, seed: int, index: int) -> tuple[str, str, Case]:
    """Build and classify case ``index`` of a layer."""
    case = MAKERS[layer](case_rng(seed, layer, index))
    outcome, detail = classify(lambda: RUNNERS[layer](case, seed=index), case.expect_error)
    return outcome, detail, case


def fuzz(layer: str, cases: int, seed: int, progress: Progress) -> dict:
    """Run ``cases`` cases of a layer; counts, the first silent failures and the time taken."""
    counts = {"cases": 0, "samples": 0, "clear": 0, "correct": 0, "silent": 0}
    failures: list[tuple[int, str, str]] = []
    causes: dict[str, int] = {}
    task = progress.add_task(layer, total=cases)
    start = time.perf_counter()
    for i in range(cases):
        outcome, detail, case = run_case(layer, seed, i)
        counts["cases"] += 1
        counts["samples"] += len(case.kinds)
        counts[outcome] += 1
        if outcome == "silent" and len(failures) < 10:
            failures.append((i, detail, case.describe()))
        progress.advance(task)
        if outcome == "silent":
            causes[failure_cause(detail)] = causes.get(failure_cause(detail), 0) + 1
    counts["seconds"] = time.perf_counter() - start
    return {"counts": counts, "failures": failures, "causes": causes}


def failure_cause(detail: str) -> str:
    """The kind of a silent failure: its first violated invariant without numbers or sample lists."""
    first = detail.split(";")[0].split(":")[0]
    return re.sub(r"\[[^\]]*\]|\(\[[^\]]*\]\)|-?\d[\d.e+-]*", "#", first).strip()


def report(console: Console, results: dict, seed: int) -> None:
    """The counts table and the first silent failures of each layer, with their replay commands."""
    table = Table(title=f"Layer reliability (seed {seed})")
    for col in ("layer", "cases", "samples", "clear errors", "correct", "silent failures", "time (s)"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for layer, r in results.items():
        c = r["counts"]
        table.add_row(
            layer,
            *(str(c[k]) for k in ("cases", "samples", "clear", "correct", "silent")),
            f"{c['seconds']:.0f}",
        )
    console.print(table)
    for layer, r in results.items():
        for cause, count in sorted(r["causes"].items(), key=lambda kv: -kv[1]):
            console.print(f"{layer}: {count} x {cause}")
        for i, detail, desc in r["failures"]:
            console.print(
                f"[red]{layer} case {i}[/red]: {detail}\n  {desc}\n"
                f"  replay: python scripts/fuzz_layers.py --layer {layer} --seed {seed} --replay {i}"
            )


def replay(console: Console, layer: str, seed: int, index: int) -> int:
    """Run one case with its traceback shown; status 1 if it is a silent failure."""
    case = MAKERS[layer](case_rng(seed, layer, index))
    console.print(case.describe())
    console.print(case.kwargs)
    try:
        problems = RUNNERS[layer](case, seed=index)
    except Exception:  # shown, then classified as in the run
        console.print(traceback.format_exc())
    else:
        console.print(problems or "no violated invariant")
    outcome, detail, _ = run_case(layer, seed, index)
    console.print(f"outcome: {outcome} {detail}")
    return int(outcome == "silent")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=2000, help="cases per layer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layer", choices=[*LAYERS, "all"], default="all")
    parser.add_argument("--replay", type=int, default=None, help="run this case index alone, verbosely")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging_quiet()
    console = Console()
    layers = LAYERS if args.layer == "all" else (args.layer,)
    if args.replay is not None:
        return max(replay(console, layer, args.seed, args.replay) for layer in layers)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        results = {layer: fuzz(layer, args.cases, args.seed, progress) for layer in layers}
    report(console, results, args.seed)
    return int(any(r["counts"]["silent"] for r in results.values()))


def logging_quiet() -> None:
    """The PnP layer logs each kind of degenerate sample once; here they are the point."""
    import logging

    logging.getLogger("bpnp.nodes.pnp").setLevel(logging.ERROR)


if __name__ == "__main__":
    raise SystemExit(main())
