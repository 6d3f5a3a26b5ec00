"""Property-based checks of the two declarative layers on random batches that mix normal and
degenerate samples: every call returns outputs that meet the layer's contract, or raises a
ValueError / TypeError naming the offending argument or sample (docs/reliability.md).

The strategies draw the structure of a batch (sizes, sample kinds, options) with hypothesis and its
values from a seeded generator. Minimal cases of three behaviours the harness once found broken
(batch-mate dependence of the unrolled solver and of the torch RANSAC, empty sets) close the file.
"""

import logging
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpnp.geometry import axis_angle_to_matrix
from bpnp.nodes import RansacOptions, SolverOptions, sinkhorn, weighted_pnp

pytestmark = pytest.mark.slow  # subprocesses or long property runs

F32, F64 = torch.float32, torch.float64


def fuzz(examples: int) -> settings:
    """Derandomised settings: the same examples on every run, so CI is deterministic."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Single letters are named quoted ('r'), since a bare r or c occurs in any sentence.
NAMED = re.compile(
    r"'(M|r|c)'|\b(gamma|max_iter|tol|backward|row_mask|col_mask|dustbin|x2d|x3d|weights|pose_init|"
    r"objective|robust|init|sample)\b"
)
MATE_TOL = {F32: 1e-6, F64: 1e-9}


@pytest.fixture(autouse=True)
def _quiet_pnp_warnings():
    """Degenerate samples are the point here: the layer's once-only warning is noise."""
    logger = logging.getLogger("bpnp.nodes.pnp")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def call_or_named_error(fn):
    """``fn()``, or None when it raises a ValueError / TypeError that names an argument; any other
    exception, or an error naming nothing, fails the test."""
    try:
        return fn()
    except (ValueError, TypeError) as e:
        assert NAMED.search(str(e)), f"{type(e).__name__} naming no argument: {e}"
        return None


# ---------------------------------------------------------------------------------------------
# Sinkhorn

COST_KINDS = ["normal", "scaled", "offset", "constant", "ties", "negative", "padded", "nan_padding"]


def _cost(kind: str, m: int, n: int, g: torch.Generator) -> torch.Tensor:
    """(m, n) float64 costs of a kind; "padded" / "nan_padding" get normal costs (masks do the rest)."""
    u = torch.rand(m, n, generator=g, dtype=F64)
    e = float(torch.rand((), generator=g, dtype=F64))  # exponent in [0, 1)
    if kind == "scaled":
        return u * 10 ** (26 * e - 6)  # up to 1e20
    if kind == "offset":
        return u + 10 ** (12 * e)
    if kind == "constant":
        return torch.full((m, n), 10 ** (26 * e - 6), dtype=F64)
    if kind == "ties":
        return torch.randint(0, 3, (m, n), generator=g).to(F64)
    if kind == "negative":
        return -u * 10 ** (6 * e)
    return u * 10 ** (4 * e - 3)


def _sinkhorn_masks(kinds, m, n, g):
    """Row / column masks: one side (or both) all False for "padded", random padding otherwise."""
    rm = torch.rand(len(kinds), m, generator=g) < 0.7
    cm = torch.rand(len(kinds), n, generator=g) < 0.7
    for b, kind in enumerate(kinds):
        if kind == "padded":
            side = b % 3
            rm[b] &= side == 1
            cm[b] &= side == 0
    return rm, cm


@st.composite
def sinkhorn_batches(draw, mates: bool = False):
    """``(M, kwargs, kinds)`` of a random call; with ``mates``, sample 0 is normal and B >= 2."""
    dtype = draw(st.sampled_from([F32, F64]))
    # Empty sizes last: hypothesis favours the first entries.
    sizes = [3, 5, 8, 16, 1, 2] if mates else [3, 5, 8, 16, 1, 2, 0]
    B = draw(st.sampled_from([2, 3, 4] if mates else [2, 3, 4, 1, 0]))
    m, n = draw(st.sampled_from(sizes)), draw(st.sampled_from(sizes))
    kinds = draw(st.lists(st.sampled_from(COST_KINDS), min_size=B, max_size=B))
    if mates:
        kinds[0] = "normal"
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    M = torch.stack([_cost(k, m, n, g) for k in kinds]) if B else torch.zeros(0, m, n, dtype=F64)
    kw = {
        "gamma": 10 ** draw(st.floats(-2, 4)),
        "max_iter": draw(st.sampled_from([1, 10, 100, 300])),
        "tol": draw(st.sampled_from([0.0, 1e-9, 1e-6, 1e-3])),
        "backward": draw(st.sampled_from(["implicit", "unroll"])),
        "return_info": True,
    }
    if draw(st.booleans()) or {"padded", "nan_padding"} & set(kinds):
        rm, cm = _sinkhorn_masks(kinds, m, n, g)
        for b, kind in enumerate(kinds):
            if kind == "nan_padding":
                M[b][~(rm[b][:, None] & cm[b][None, :])] = draw(st.sampled_from([math.nan, math.inf]))
        kw["row_mask"], kw["col_mask"] = rm, cm
    dustbin = draw(st.sampled_from([None, "float", "tensor"]))
    if dustbin is not None:
        z = draw(st.sampled_from([-3.0, 0.0, 1.0, 10.0, 1e3]))
        kw["dustbin"] = z if dustbin == "float" else torch.tensor(z, dtype=dtype, requires_grad=True)
    elif draw(st.booleans()):
        r, c = torch.rand(B, m, generator=g, dtype=F64), torch.rand(B, n, generator=g, dtype=F64)
        kw["r"], kw["c"] = (r * (torch.rand(B, m, generator=g) > 0.15)).to(dtype), c.to(dtype)
    return M.to(dtype), kw, kinds


def expected_marginals(M: torch.Tensor, kw: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan's marginals from the arguments alone (float64), dustbin included."""
    B, m, n = M.shape
    rm = kw.get("row_mask", torch.ones(B, m, dtype=torch.bool)).double()
    cm = kw.get("col_mask", torch.ones(B, n, dtype=torch.bool)).double()
    if kw.get("dustbin") is not None:
        ms, ns = rm.sum(-1, keepdim=True), cm.sum(-1, keepdim=True)
        has = (ms > 0) & (ns > 0)
        r, c = torch.cat([rm, ns * has], 1), torch.cat([cm, ms * has], 1)
    else:
        r = rm * kw["r"].double() if "r" in kw else rm
        c = cm * kw["c"].double() if "c" in kw else cm
    rs, cs = r.sum(-1, keepdim=True), c.sum(-1, keepdim=True)
    both = (rs > 0) & (cs > 0)
    return torch.where(both, r / rs.clamp_min(1e-300), 0.0), torch.where(both, c / cs.clamp_min(1e-300), 0.0)


def assert_plan_meets_contract(M: torch.Tensor, kw: dict, P: torch.Tensor, info) -> None:
    """Finite, non-negative, no mass where a marginal is zero, exact columns, ``converged`` equal to
    "the row error meets tol" (to the precision ``info.log_error`` the potentials imply)."""
    extra = int(kw.get("dustbin") is not None)
    assert P.shape == (M.shape[0], M.shape[1] + extra, M.shape[2] + extra) and P.dtype == M.dtype
    assert torch.isfinite(P).all() and (P >= 0).all()
    for x in (info.iterations, info.error, info.log_error):
        assert torch.isfinite(x.double()).all()
    r, c = expected_marginals(M, kw)
    P64 = P.detach().double()
    assert not (((r[:, :, None] == 0) | (c[:, None, :] == 0)) & (P64 != 0)).any()
    slack = (1e-6 if M.dtype == F32 else 1e-12) + 2 * info.log_error.double()
    assert ((P64.sum(-2) - c).abs().sum(-1) <= slack).all(), "columns off their marginals"
    tol = kw["tol"] if kw["tol"] > 0 else 1e-6
    row_err = (P64.sum(-1) - r).abs().sum(-1)
    conv = info.converged.bool()
    assert (row_err[conv] <= tol + slack[conv]).all(), "converged with rows off by more than tol"
    assert (row_err[~conv] >= tol - slack[~conv]).all(), "not converged with rows within tol"


def _solve(M: torch.Tensor, kw: dict, b: slice | None = None):
    """The layer on the batch, or on its samples ``b``; a fresh leaf for a learnable dustbin."""
    kw = dict(kw)
    if isinstance(kw.get("dustbin"), torch.Tensor):
        kw["dustbin"] = kw["dustbin"].detach().clone().requires_grad_(True)
    if b is not None:
        M = M[b]
        kw.update({k: kw[k][b] for k in ("r", "c", "row_mask", "col_mask") if k in kw})
    return sinkhorn(M, **kw), kw.get("dustbin")


@fuzz(250)
@given(batch=sinkhorn_batches(), seed=st.integers(0, 2**16))
def test_sinkhorn_returns_a_plan_that_meets_its_contract_or_a_named_error(batch, seed):
    M, kw, _ = batch
    M = M.clone().requires_grad_(True)
    out = call_or_named_error(lambda: _solve(M, kw))
    if out is None:
        return
    (P, info), z = out
    assert_plan_meets_contract(M, kw, P, info)
    V = torch.randn(P.shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(P.dtype)
    (P * V).sum().backward()
    assert M.grad is None or torch.isfinite(M.grad).all()
    if isinstance(z, torch.Tensor) and z.grad is not None:
        assert torch.isfinite(z.grad).all()
    if M.grad is not None and "row_mask" in kw:
        padded = ~(kw["row_mask"][:, :, None] & kw["col_mask"][:, None, :])
        assert (M.grad[padded] == 0).all(), "gradient on padded costs"


@fuzz(150)
@given(batch=sinkhorn_batches(mates=True))
def test_sinkhorn_plan_does_not_depend_on_batch_mates(batch):
    M, kw, _ = batch
    with torch.no_grad():
        out = call_or_named_error(lambda: _solve(M, kw))
        if out is None:  # a mate beyond float64: the whole batch is refused, by name
            return
        (P, info), _ = out
        (alone, alone_info), _ = _solve(M, kw, slice(0, 1))
    # A float32 batch re-solved in float64 for a mate's sake: equal to either plan's precision.
    precision = 2 * max(float(info.log_error[0]), float(alone_info.log_error[0]))
    diff = float((alone[0].double() - P[0].double()).abs().sum())
    assert diff <= MATE_TOL[M.dtype] + precision, f"plan of sample 0 moved by {diff:.3g} (L1)"


def _invalid_sinkhorn_calls(M: torch.Tensor) -> dict:
    """One invalid call per argument: name -> kwargs (plus "M" for a replaced cost)."""
    B, m, n = M.shape
    nan_M = M.clone()
    nan_M[0, 0, 0] = math.nan
    r_neg = torch.rand(B, m, dtype=M.dtype)
    r_neg[0, 0] = -1.0
    return {
        "gamma": {"gamma": math.nan},
        "max_iter": {"max_iter": 0},
        "tol": {"tol": -1.0},
        "backward": {"backward": "unrolled"},
        "row_mask": {"row_mask": torch.ones(B, m + 1, dtype=torch.bool)},
        "col_mask": {"col_mask": torch.ones(B + 1, n, dtype=torch.bool)},
        "M": {"M": nan_M},
        "M_dim": {"M": M[0]},
        "r": {"r": r_neg},
        "dustbin": {"dustbin": math.inf},
        "dustbin_with_r": {"dustbin": 1.0, "r": torch.rand(B, m, dtype=M.dtype)},
    }


@fuzz(60)
@given(
    dtype=st.sampled_from([F32, F64]),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)),
    what=st.sampled_from(list(_invalid_sinkhorn_calls(torch.zeros(1, 1, 1)))),
    backward=st.sampled_from(["implicit", "unroll"]),
)
def test_sinkhorn_invalid_arguments_are_named_errors(dtype, shape, what, backward):
    M = torch.rand(shape, dtype=dtype)
    kw = {"backward": backward} | _invalid_sinkhorn_calls(M)[what]
    M = kw.pop("M", M)
    with pytest.raises(ValueError, match=NAMED):
        sinkhorn(M, **kw)


# ---------------------------------------------------------------------------------------------
# Weighted PnP

MUST_BE_INVALID = set(
    "zero_weights nan_weight nan_x2d nan_x3d few_pairs three_distinct collinear padded nan_init".split()
)
PNP_KINDS = sorted(MUST_BE_INVALID) + ["normal", "noisy", "outliers", "planar", "behind", "same_bearing"]


def _pnp_scene(kind: str, k: int, scale: float, rng: np.random.Generator) -> dict:
    """``k`` correspondences (float64 numpy) of a kind: points in ``scale * [-1, 1]^3`` about
    ``6 * scale`` in front of the camera, broken in one way by the degenerate kinds."""
    R = axis_angle_to_matrix(torch.from_numpy(rng.normal(size=3))).numpy()
    t = (rng.normal(0, 0.3, 3) + [0.0, 0.0, 6.0]) * scale
    X = rng.uniform(-1, 1, (k, 3)) * scale
    if kind == "three_distinct":
        X = X[np.arange(k) % 3]
    elif kind == "collinear":
        X = rng.uniform(-1, 1, (k, 1)) * rng.normal(size=3) * scale
    elif kind == "planar":
        X[:, 2] = 0.0
    elif kind == "behind":
        t[2] = -t[2]
    Xc = X @ R.T + t
    x = Xc[:, :2] / Xc[:, 2:] + (rng.normal(0, 1e-3, (k, 2)) if kind in ("noisy", "outliers") else 0.0)
    if kind == "outliers":
        x[: k // 4] = rng.uniform(-0.3, 0.3, (k // 4, 2))
    elif kind == "same_bearing":
        x[:] = x[0]
    w = rng.uniform(0.5, 1.5, k) * 10 ** rng.uniform(-6, 6)
    if kind == "zero_weights":
        w[:] = 0.0
    elif kind == "few_pairs":
        w[3:] = 0.0
    target = {"nan_weight": w, "nan_x2d": x, "nan_x3d": X}.get(kind)
    if target is not None:
        target.reshape(k, -1)[k - 1, 0] = np.nan  # pair k - 1 is never padding (see pnp_batches)
    return {"x": x, "X": X, "w": w, "R": R, "t": t}


def _scene_shapes(k: int) -> dict:
    return {"x": (k, 2), "X": (k, 3), "w": (k,), "R": (3, 3), "t": (3,)}


def _stack(scenes: list[dict], key: str, shape: tuple) -> np.ndarray:
    """Batch one entry of the scenes: (B, *shape), also for B = 0."""
    return np.stack([s[key] for s in scenes]) if scenes else np.zeros((0, *shape))


@st.composite
def pnp_batches(draw, mates: bool = False):
    """``(args, kwargs, kinds, scale)`` of a random call; with ``mates``, sample 0 is normal.

    Empty sets (k = 0 pairs, m = 0 or n = 0 points) have a test of their own below.
    """
    dtype = draw(st.sampled_from([F32, F64]))
    dense = draw(st.booleans())
    B = draw(st.sampled_from([2, 3, 4] if mates else [2, 3, 4, 1, 0]))
    k = draw(st.sampled_from([6, 8, 12, 20, 4, 5, 3]))
    scale = 10 ** draw(st.floats(-6, 6))
    init = draw(st.sampled_from(["pose_init", "opencv", "torch"]))
    kinds = draw(st.lists(st.sampled_from(PNP_KINDS), min_size=B, max_size=B))
    if init != "pose_init":
        kinds = ["normal" if kd == "nan_init" else kd for kd in kinds]
    if mates:
        kinds[0] = "normal"
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    scenes = [_pnp_scene(kd, k, scale, rng) for kd in kinds]
    x, X, w, R, t = (_stack(scenes, key, shape) for key, shape in _scene_shapes(k).items())
    solver = {
        "objective": draw(st.sampled_from(["angular", "reprojection"])),
        "max_iter": draw(st.sampled_from([50, 50, 50, 0, 3])),
    }
    kw = {}
    mask = None
    if draw(st.booleans()) or "padded" in kinds:
        mask = rng.random((B, k)) > 0.25
        mask[:, -1] = True  # keeps the planted NaN on a real pair
        mask[[kd == "padded" for kd in kinds]] = False
    if dense:
        perm = np.array([rng.permutation(k) for _ in range(B)], dtype=int).reshape(B, k)
        x = np.take_along_axis(x, perm[..., None], 1)  # row i holds the 2D point of pair perm[i]
        W = np.zeros((B, k, k))
        for b in range(B):
            W[b, np.arange(k), perm[b]] = w[b, perm[b]]
        w = W
        if mask is not None:
            kw["row_mask"] = torch.from_numpy(np.take_along_axis(mask, perm, 1))
            kw["col_mask"] = torch.from_numpy(mask)
    else:
        if draw(st.booleans()):
            solver["robust"] = draw(st.sampled_from(["huber", "cauchy", "tanh", "geman_mcclure"]))
        if mask is not None:
            kw["row_mask"] = torch.from_numpy(mask)
    if mask is not None:
        # Padding may hold anything.
        junk = draw(st.sampled_from([np.nan, np.inf, 1e30]))
        rows = kw["row_mask"].numpy()
        x[~rows] = junk
        X[~mask] = junk
        w[~(rows[:, :, None] & mask[:, None, :]) if dense else ~mask] = junk
    if init == "pose_init":
        # Next to the true pose; NaN for "nan_init".
        R0 = axis_angle_to_matrix(torch.from_numpy(rng.normal(0, 0.03, (B, 3)))) @ torch.from_numpy(R)
        t0 = torch.from_numpy(t + rng.normal(0, 0.03, t.shape) * scale)
        t0[[kd == "nan_init" for kd in kinds], 0] = math.nan
        kw["pose_init"] = (R0.to(dtype), t0.to(dtype))
    else:
        kw["ransac"] = RansacOptions(backend=init)
        if init == "torch":
            kw["generator"] = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kw["solver"] = SolverOptions(**solver)
    args = tuple(torch.from_numpy(a).to(dtype) for a in (x, X, w))
    return args, kw, kinds, scale


def _padding(kw: dict, shapes: list[torch.Size]) -> list[torch.Tensor] | None:
    """Bool masks of the padded entries of x2d, x3d and weights, or None without masks."""
    if "row_mask" not in kw:
        return None
    rm = kw["row_mask"]
    cm = kw.get("col_mask", rm)
    pad_w = ~(rm[:, :, None] & cm[:, None, :]) if len(shapes[2]) == 3 else ~rm
    return [(~rm)[..., None].expand(shapes[0]), (~cm)[..., None].expand(shapes[1]), pad_w]


def assert_pnp_result_meets_contract(args, kw, kinds, res) -> None:
    """Finite outputs, consistent flags, rotations, degenerate samples invalid."""
    B = args[0].shape[0]
    shapes = {"R": (B, 3, 3), "t": (B, 3), "objective": (B,), "R_init": (B, 3, 3), "t_init": (B, 3)}
    for name, shape in shapes.items():
        v = getattr(res, name)
        assert tuple(v.shape) == shape and torch.isfinite(v).all()
    assert not (res.valid & ~(res.refined & res.converged)).any()
    R = res.R.detach().double()
    tol = 1e-4 if args[0].dtype == F32 else 1e-9
    assert ((R @ R.mT - torch.eye(3, dtype=F64)).abs().amax((-1, -2)) <= tol).all(), "R is not a rotation"
    wrong = [kind for kind, v in zip(kinds, res.valid.tolist(), strict=True) if v and kind in MUST_BE_INVALID]
    assert not wrong, f"degenerate samples flagged valid: {wrong}"


@fuzz(200)
@given(batch=pnp_batches(), seed=st.integers(0, 2**16))
def test_weighted_pnp_is_finite_and_flags_degenerate_samples_with_zero_gradient(batch, seed):
    args, kw, kinds, scale = batch
    leaves = [a.clone().requires_grad_(True) for a in args]
    res = call_or_named_error(lambda: weighted_pnp(*leaves, **kw))
    if res is None:
        return
    assert_pnp_result_meets_contract(args, kw, kinds, res)
    g = torch.Generator().manual_seed(seed)
    A, a, c = (
        torch.randn(v.shape, generator=g, dtype=F64).to(v.dtype) for v in (res.R, res.t, res.objective)
    )
    loss = (res.R * A).sum() + (res.t * a).sum() / scale + (res.objective * c).sum()
    if loss.requires_grad:
        loss.backward()
    pads = _padding(kw, [a.shape for a in args])
    for i, (name, leaf) in enumerate(zip(("x2d", "x3d", "weights"), leaves, strict=True)):
        if leaf.grad is None:
            continue
        assert torch.isfinite(leaf.grad).all(), f"non-finite gradient wrt {name}"
        assert (leaf.grad[~res.valid] == 0).all(), f"gradient wrt {name} of an invalid sample"
        if pads is not None:
            assert (leaf.grad[pads[i]] == 0).all(), f"gradient wrt {name} on padding"


def _pnp_alone(args, kw):
    """The layer on sample 0 alone."""
    kw = dict(kw)
    kw.update({k: kw[k][:1] for k in ("row_mask", "col_mask") if k in kw})
    if "pose_init" in kw:
        kw["pose_init"] = tuple(p[:1] for p in kw["pose_init"])
    return weighted_pnp(*(a[:1] for a in args), **kw)


@fuzz(100)
@given(batch=pnp_batches(mates=True))
def test_weighted_pnp_sample_does_not_depend_on_batch_mates(batch):
    args, kw, _, scale = batch
    with torch.no_grad():
        res = call_or_named_error(lambda: weighted_pnp(*args, **kw))
        if res is None:
            return
        alone = _pnp_alone(args, kw)
    tol = MATE_TOL[args[0].dtype]
    assert bool(alone.valid[0]) == bool(res.valid[0])
    torch.testing.assert_close(res.R[0], alone.R[0], atol=tol, rtol=0)
    torch.testing.assert_close(res.t[0] / scale, alone.t[0] / scale, atol=tol, rtol=0)


@fuzz(40)
@given(
    dtype=st.sampled_from([F32, F64]),
    dense=st.booleans(),
    shape=st.tuples(st.integers(1, 3), st.integers(4, 8)),
    what=st.sampled_from(["weights", "x2d", "x3d", "objective", "robust", "pose_init"]),
)
def test_weighted_pnp_invalid_arguments_are_named_errors(dtype, dense, shape, what):
    B, k = shape
    x, X = torch.rand(B, k, 2, dtype=dtype), torch.rand(B, k, 3, dtype=dtype)
    w = torch.rand(B, k, k, dtype=dtype) if dense else torch.rand(B, k, dtype=dtype)
    kw, solver = {}, {}
    if what == "weights":
        w = w[..., :-1]
    elif what == "x2d":
        x = torch.cat([x, x[..., :1]], -1)
    elif what == "x3d":
        X = X[..., :2]
    elif what == "objective":
        solver["objective"] = "reprojection_error"
    elif what == "robust":
        solver["robust"] = "huber" if dense else "bisquare"
    else:
        kw["pose_init"] = (torch.eye(3, dtype=dtype).expand(B + 1, 3, 3), torch.zeros(B, 3, dtype=dtype))
    with pytest.raises(ValueError, match=what):
        weighted_pnp(x, X, w, solver=SolverOptions(**solver), **kw)


# ---------------------------------------------------------------------------------------------
# Minimal cases of behaviours the harness once found broken.


def test_unrolled_plan_does_not_depend_on_a_slow_batch_mate():
    g = torch.Generator().manual_seed(0)
    M0 = torch.rand(1, 4, 4, generator=g, dtype=F64)
    slow = torch.rand(1, 4, 4, generator=g, dtype=F64) * 50  # needs about 20x the iterations
    alone = sinkhorn(M0, tol=1e-3, max_iter=1000, backward="unroll")
    batch = sinkhorn(torch.cat([M0, slow]), tol=1e-3, max_iter=1000, backward="unroll")
    assert (alone[0] - batch[0]).abs().sum() <= MATE_TOL[F64]  # measured: 3.7e-5


def test_torch_initialisation_does_not_depend_on_a_zero_weight_batch_mate():
    rng = np.random.default_rng(27)
    scene = _pnp_scene("outliers", 12, 1.0, rng)
    scene["x"][:4] = rng.uniform(-0.2, 0.2, (4, 2))  # a third of the pairs are outliers
    x, X, w = (torch.from_numpy(scene[k])[None] for k in ("x", "X", "w"))
    solve = [
        weighted_pnp(
            xb, Xb, wb, generator=torch.Generator().manual_seed(s), ransac=RansacOptions(backend="torch")
        )
        for s in range(8)
        for xb, Xb, wb in ((x, X, w), (x.repeat(2, 1, 1), X.repeat(2, 1, 1), torch.cat([w, 0 * w])))
    ]
    worst = max(
        float((a.R_init[0] - b.R_init[0]).abs().max()) for a, b in zip(solve[::2], solve[1::2], strict=True)
    )
    assert worst <= MATE_TOL[F64]


EMPTY = {
    "B=0, torch init": ((0, 6, 2), (0, 6, 3), (0, 6), {"ransac": RansacOptions(backend="torch")}),
    "k=0 pairs": ((2, 0, 2), (2, 0, 3), (2, 0), {}),
    "n=0 3D points": ((2, 3, 2), (2, 0, 3), (2, 3, 0), {}),
    "m=0 2D points": ((2, 0, 2), (2, 5, 3), (2, 0, 5), {}),
}


@pytest.mark.parametrize("case", list(EMPTY))
def test_empty_sets_give_invalid_samples(case):
    *shapes, kw = EMPTY[case]
    weights = torch.ones(shapes[2], dtype=F64, requires_grad=True)
    res = weighted_pnp(torch.zeros(shapes[0], dtype=F64), torch.zeros(shapes[1], dtype=F64), weights, **kw)
    assert not res.valid.any() and torch.isfinite(res.R).all() and res.R.shape == (shapes[0][0], 3, 3)
    (res.R.sum() + res.t.sum()).backward()
    assert weights.grad is not None and weights.grad.shape == weights.shape


def test_an_empty_problem_still_checks_its_pose_init():
    empty = (torch.zeros(2, 0, 2), torch.zeros(2, 0, 3), torch.ones(2, 0))
    with pytest.raises(ValueError, match="pose_init"):
        weighted_pnp(*empty, pose_init=(torch.eye(3).expand(3, 3, 3), torch.zeros(3, 3)))
