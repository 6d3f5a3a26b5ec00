"""The blind-PnP network (BPnPNet's pipeline):

    pixels --K^-1--> bearings --encoder2d--> f (B, m, D)
    3D points (centred, scaled; or bearings in a reference view) --encoder3d--> g (B, n, D)
    [optional view canonicalisation: both sets expressed in one coarse camera frame first]
    [optional cross-attention between the sets]
    M = ||f_i - g_j||  (B, m, n)  --Sinkhorn (+ dustbin)-->  P
    top-k of P --RANSAC--> initial pose --weighted PnP on P--> (R, t)

Every stage can be switched off for ablations (``use_pnp=False`` returns the RANSAC pose).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bpnp.geometry import bearing_angles, normalized_to_bearings, pixels_to_normalized
from bpnp.geometry.view_search import canonical_image, dense_points, search_rotation
from bpnp.models.encoders import CrossAttention, PointEncoder
from bpnp.nodes import PnPResult, RansacOptions, Sinkhorn, SolverOptions, weighted_pnp
from bpnp.nodes.pnp.layer import resolve_init
from bpnp.nodes.pnp.ransac import hungarian_pairs, opencv_ransac, score_poses, top_pairs, torch_ransac
from bpnp.nodes.sinkhorn import SolverInfo


@dataclass
class NetworkOutput:
    """Everything one forward pass produces.

    Attributes:
        P: (B, m, n) transport plan between real points (dustbin row / column removed).
        P_full: (B, m + 1, n + 1) with the dustbin, else the same tensor as ``P``.
        M: (B, m, n) cost matrix.
        R, t: (B, 3, 3), (B, 3) pose (PnP layer output, or the RANSAC pose without the layer).
        R_init, t_init: RANSAC initial pose (not differentiable).
        valid: (B,) bool, the PnP layer reached a non-degenerate stationary point (only these samples
            pass a pose gradient); ``R``, ``t`` are the RANSAC pose where the layer flagged the sample
            degenerate (``pnp.refined`` False).
        x2d: (B, m, 2) normalised image coordinates used by the pose stage.
        sinkhorn_info: per-sample convergence of the Sinkhorn layer.
        pnp: the PnP layer's full result (iterations, convergence, validity).
        ref: the reference views the pass used (after ``rematch_passes``, the previous pass's pose).
    """

    P: Tensor
    P_full: Tensor
    M: Tensor
    R: Tensor | None = None
    t: Tensor | None = None
    R_init: Tensor | None = None
    t_init: Tensor | None = None
    valid: Tensor | None = None
    x2d: Tensor | None = None
    sinkhorn_info: SolverInfo | None = None
    pnp: PnPResult | None = None
    ref: tuple[Tensor, Tensor] | None = None


def normalise_cloud(points: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centre 3D points on their valid mean and scale them to unit RMS radius.

    Args:
        points: (B, n, 3); mask: (B, n) bool.
    Returns:
        normalised points (B, n, 3) (zero at padding), centre (B, 3), scale (B,).
    """
    w = mask[..., None].to(points.dtype)
    count = w.sum(1).clamp_min(1.0)
    centre = (points * w).sum(1) / count
    d2 = (((points - centre[:, None]) ** 2).sum(-1, keepdim=True) * w).sum(1) / count
    scale = d2.squeeze(-1).sqrt().clamp_min(1e-9)
    return (points - centre[:, None]) / scale[:, None, None] * w, centre, scale


def reference_bearings(points: Tensor, mask: Tensor, ref: tuple[Tensor, Tensor] | None) -> Tensor:
    """Unit bearings (B, n, 3) of world points (B, n, 3) in the camera frames of reference views
    ``(R (B, 3, 3), t (B, 3))`` (zero at padding and for a point at a camera centre)."""
    if ref is None:
        raise ValueError(
            "net.input3d='bearings' needs a reference view per sample (R_ref, t_ref): the colmap source "
            "gives its most co-visible database image, the synthetic one reference_view_deg"
        )
    R, t = ref
    dtype = torch.promote_types(points.dtype, torch.float32)
    with torch.autocast(points.device.type, enabled=False):
        X = points.to(dtype) @ R.to(dtype).transpose(1, 2) + t.to(dtype)[:, None]
        b = nn.functional.normalize(X, dim=-1) * mask[..., None].to(dtype)
    return b.to(points.dtype)


def one_to_one_pairs(
    M: Tensor, mask2d: Tensor, mask3d: Tensor, max_cost: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The minimum-cost one-to-one assignment of each cost matrix (:func:`hungarian_pairs` per
    sample, on the CPU), in row order.

    Args:
        M: (B, m, n) costs; mask2d (B, m), mask3d (B, n) bool; pairs at ``max_cost`` or above are
            dropped (a clipped cost carries no preference).
    Returns:
        rows (B, k), cols (B, k) int64 and weights (B, k) (1 for a kept pair, 0 for padding), k = min(m, n).
    """
    B, m, n = M.shape
    k = min(m, n)
    rows = torch.zeros(B, k, dtype=torch.long)
    cols = torch.zeros(B, k, dtype=torch.long)
    w = torch.zeros(B, k)
    cost = M.detach().to("cpu", torch.float64).numpy()
    m2, m3 = mask2d.cpu().numpy(), mask3d.cpu().numpy()
    for b in range(B):
        i2, i3 = np.flatnonzero(m2[b]), np.flatnonzero(m3[b])
        if len(i2) == 0 or len(i3) == 0:
            continue
        pairs, c = hungarian_pairs(cost[b][np.ix_(i2, i3)])
        pairs = pairs[c < max_cost]
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]  # in row order, as RANSAC has drawn them
        kept = len(pairs)
        rows[b, :kept] = torch.from_numpy(i2[pairs[:, 0]])
        cols[b, :kept] = torch.from_numpy(i3[pairs[:, 1]])
        w[b, :kept] = 1.0
    dev = M.device
    return rows.to(dev), cols.to(dev), w.to(dev)


def exact_top_pairs(P: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest entries of each plan: :func:`top_pairs` with every row's candidates kept.

    Args:
        P: (B, m, n).
    Returns:
        rows (B, k), cols (B, k) int64 and scores (B, k), in decreasing score.
    """
    # Every row's candidates kept (per_row = n): exact for any matrix, not only transport plans.
    return top_pairs(P, k, per_row=P.shape[2])


INPUTS_3D = ("world", "bearings")
# Pairs on which the pose stage's candidate initial poses count their inliers (NetConfig.candidate_support).
CANDIDATE_SUPPORTS = ("top_pairs", "one_to_one")


# The PnP layer's settings in a network: fewer iterations than the layer's own default suffice from
# RANSAC's initial pose.
DEFAULT_PNP = SolverOptions(max_iter=30)


@dataclass
class NetConfig:
    """Hyper-parameters of :class:`BlindPnPNet` (one place, so configs and checkpoints validate them).

    Attributes:
        feature_dim, channels, blocks: encoder sizes (BPnPNet: 128, 128, 12).
        knn: neighbours of the local-geometry features in both encoders (0: BPnPNet's pointwise design).
        attention_layers: self/cross-attention layers between the sets (0: none, as BPnPNet).
        learn_temperature: scale the cost by a learnable positive factor.
        dustbin: append a learnable dustbin score (outlier bin) to the Sinkhorn layer.
        dustbin_init: its initial cost.
        gamma, sinkhorn_iters, sinkhorn_tol, sinkhorn_backward: Sinkhorn layer settings.
        cost_clip: costs are clipped at this value (BPnPNet: 5).
        use_pnp: run the weighted PnP layer (else the pose is RANSAC's on the top-k pairs).
        pnp: the PnP layer's :class:`~bpnp.nodes.pnp.options.SolverOptions` (objective, robust kernel
            and scale, iterations; default: angular, 30 iterations). A robust kernel (so that wrong
            pairs among the top ones do not pull the pose) needs ``pnp_sparse_topk``.
        pnp_sparse_topk: solve on the largest pairs of P only, which removes the bias of a diffuse plan.
        ransac: the pose stage's :class:`~bpnp.nodes.pnp.options.RansacOptions`: ``backend`` "auto"
            (OpenCV's P3P RANSAC for CPU tensors, the batched torch P3P RANSAC on other devices),
            "opencv" or "torch"; ``threshold`` and ``iterations`` as BPnPNet; ``topk`` is set by
            ``topk_factor``.
        topk_factor: RANSAC gets ``min(1000, topk_factor * m)`` pairs.
        compile_encoders: wrap both encoders in ``torch.compile`` (worth it on GPUs).
        view_search: express both sets in a coarse camera frame before encoding: the 2D set in the
            canonical camera (mean bearing on the optical axis, then centred and scaled), the 3D set
            rotated by the best silhouette match of :func:`~bpnp.geometry.view_search.view_search`
            (or by a rotation prior passed to ``forward``), so the encoders see roughly aligned sets
            under any camera rotation and only learn the residual.
        view_search_points: points per set in the search's refinement (its accuracy grows with it).
        input3d: what encoder3d sees of the 3D set: ``"world"`` (the points centred and scaled) or
            ``"bearings"`` (GoMatch's: each point's unit bearing in the camera frame of a reference
            view whose pose is known, such as the retrieved database image; the samples must carry
            ``R_ref``, ``t_ref``). The pose stage always uses the world points.
        bearing_prior: None, or add ``s * angle(b_i, r_j)`` (radians) to the cost, with ``r_j`` the 3D
            point's bearing in the reference view and ``s`` learnable from this initial value: a
            nearby reference view makes true partners' bearings close, so the features need only
            tell apart neighbours (needs ``input3d="bearings"``).
        reference_init: with reference views, the PnP layer starts from the reference pose instead
            of RANSAC's unless RANSAC's has more inliers among the top pairs beyond its 4-point
            minimal sample (a map's retrieved image is often closer than a pose from few correct
            matches).
        rematch_passes: with reference views, match again this many times with the previous pass's
            pose as the reference view (guided matching: the bearings, the prior and the reference
            initialisation then come from a view much closer to the query's).
        hungarian_init: with ``reference_init``, a third candidate initial pose: OpenCV's RANSAC on
            the one-to-one (Hungarian) assignment of the cost, which holds up when few points are
            outliers, where the plan's top pairs repeat points.
        candidate_support: with ``reference_init``, the pairs on which the candidate initial poses
            count their inliers: ``"top_pairs"`` (the plan's top pairs) or ``"one_to_one"`` (the cost's
            one-to-one assignment: a plan drawn towards a wrong reference view repeats that view's
            points among its top pairs and so votes for it; a one-to-one set cannot).
    """

    feature_dim: int = 128
    channels: int = 128
    blocks: int = 12
    knn: int = 0
    attention_layers: int = 0
    learn_temperature: bool = False
    dustbin: bool = False
    dustbin_init: float = 1.0
    gamma: float = 10.0
    sinkhorn_iters: int = 100
    sinkhorn_tol: float = 1e-6
    sinkhorn_backward: str = "implicit"
    cost_clip: float = 5.0
    use_pnp: bool = True
    pnp: SolverOptions = field(default_factory=lambda: DEFAULT_PNP)
    pnp_sparse_topk: int | None = None
    ransac: RansacOptions = field(default_factory=RansacOptions)
    topk_factor: float = 1.5
    compile_encoders: bool = False
    view_search: bool = False
    view_search_points: int = 256
    input3d: str = "world"
    reference_init: bool = False
    bearing_prior: float | None = None
    rematch_passes: int = 0
    hungarian_init: bool = False
    candidate_support: str = "top_pairs"

    def __post_init__(self) -> None:
        self.pnp = _nested(self.pnp, DEFAULT_PNP, "pnp")
        self.ransac = _nested(self.ransac, RansacOptions(), "ransac")
        if self.ransac.topk is not None:
            raise ValueError("net.ransac.topk is set by net.topk_factor: leave it null")
        if self.candidate_support not in CANDIDATE_SUPPORTS:
            raise ValueError(
                f"net.candidate_support must be one of {CANDIDATE_SUPPORTS}, got {self.candidate_support!r}"
            )
        if self.bearing_prior is not None and (self.input3d != "bearings" or not self.bearing_prior > 0):
            raise ValueError("net.bearing_prior needs net.input3d='bearings' and a positive initial scale")
        if self.input3d not in INPUTS_3D:
            raise ValueError(f"net.input3d must be one of {INPUTS_3D}, got {self.input3d!r}")
        if self.input3d == "bearings" and self.view_search:
            raise ValueError(
                "net.input3d='bearings' already puts the 3D set in a camera frame: set net.view_search false"
            )
        if self.pnp.robust is not None and self.pnp_sparse_topk is None:
            raise ValueError("net.pnp.robust needs net.pnp_sparse_topk (robust kernels work on top pairs)")

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> NetConfig:
        """A config from a mapping (a config file's section, a checkpoint's hyper-parameters), older
        flat names (:data:`LEGACY_KEYS`) included."""
        return cls(**migrate_settings(settings))

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A config pickled by an older version (flat pnp_* / ransac_* fields) loads as today's.
        self.__dict__.update(NetConfig.from_dict(state).__dict__)


def _nested(value: Any, default: Any, name: str) -> Any:
    """``value`` as the options class of ``default``: an instance passes, a mapping updates the default."""
    cls = type(default)
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"net.{name} must be a {cls.__name__} or a mapping, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"net.{name}: unknown settings {unknown}; expected some of {sorted(known)}")
    return dataclasses.replace(default, **value)


# Flat names of older configs and checkpoints -> (nested options, field).
LEGACY_KEYS = {
    "pnp_objective": ("pnp", "objective"),
    "pnp_max_iter": ("pnp", "max_iter"),
    "pnp_robust": ("pnp", "robust"),
    "pnp_robust_scale": ("pnp", "robust_scale"),
    "ransac_init": ("ransac", "backend"),
    "ransac_threshold": ("ransac", "threshold"),
    "ransac_iterations": ("ransac", "iterations"),
}


def migrate_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with the flat names of :data:`LEGACY_KEYS` moved into their nested options."""
    out = dict(settings)
    for old, (group, name) in LEGACY_KEYS.items():
        if old not in out:
            continue
        sub = out.get(group) or {}
        if dataclasses.is_dataclass(sub):
            sub = {f.name: getattr(sub, f.name) for f in dataclasses.fields(sub)}
        out[group] = {**sub, name: out.pop(old)}
    return out


# Points of a P3P RANSAC hypothesis (3 plus the one that picks among its solutions).
MINIMAL_SAMPLE = 4

# Settings read by the pose stage only: a trained network can be evaluated with other values.
POSE_STAGE_SETTINGS = (
    "use_pnp", "pnp", "pnp_sparse_topk", "ransac", "topk_factor", "reference_init", "rematch_passes",
    "hungarian_init", "candidate_support",
)  # fmt: skip


class BlindPnPNet(nn.Module):
    """Encoders + cost head + Sinkhorn + RANSAC + weighted PnP, configured by :class:`NetConfig`."""

    def __init__(self, config: NetConfig | Mapping[str, Any] | None = None):
        super().__init__()
        # A mapping comes from configs and from hyper-parameters that LightningCLI recorded.
        c = NetConfig.from_dict(config) if isinstance(config, Mapping) else config or NetConfig()
        self.config = c
        self.encoder2d = PointEncoder(3, c.channels, c.blocks, c.feature_dim, c.knn)
        self.encoder3d = PointEncoder(3, c.channels, c.blocks, c.feature_dim, c.knn)
        if c.compile_encoders:  # in place: parameter names (and checkpoints) stay the same
            self.encoder2d.compile()
            self.encoder3d.compile()
        self.attention = (
            CrossAttention(c.feature_dim, layers=c.attention_layers) if c.attention_layers > 0 else None
        )
        self.log_temperature = nn.Parameter(torch.zeros(())) if c.learn_temperature else None
        self.log_prior_scale = (
            nn.Parameter(torch.tensor(math.log(c.bearing_prior))) if c.bearing_prior is not None else None
        )
        dustbin_init = c.dustbin_init if c.dustbin else None
        self.sinkhorn = Sinkhorn(c.gamma, c.sinkhorn_iters, c.sinkhorn_tol, c.sinkhorn_backward, dustbin_init)

    def set_pose_stage(self, **settings: Any) -> None:
        """Change pose-stage settings (:data:`POSE_STAGE_SETTINGS`) of a built network; ``pnp`` and
        ``ransac`` may be mappings of some of their fields, which update the current options.

        Raises:
            ValueError: for a setting outside the pose stage (it would need other weights).
        """
        settings = migrate_settings(settings)
        bad = sorted(set(settings) - set(POSE_STAGE_SETTINGS))
        if bad:
            raise ValueError(f"pose-stage settings {bad}: expected some of {list(POSE_STAGE_SETTINGS)}")
        for group in ("pnp", "ransac"):
            if isinstance(settings.get(group), Mapping):
                settings[group] = _nested(settings[group], getattr(self.config, group), group)
        self.config = dataclasses.replace(self.config, **settings)

    def topk(self, m: int) -> int:
        """Pairs of the plan handed to RANSAC (and reported as matches) for ``m`` 2D points."""
        return max(4, min(1000, int(self.config.topk_factor * m)))

    def ransac_options(self, m: int) -> RansacOptions:
        """The pose stage's RANSAC for ``m`` 2D points."""
        return dataclasses.replace(self.config.ransac, topk=self.topk(m))

    def features(
        self,
        bearings: Tensor,
        points3d: Tensor,
        mask2d: Tensor,
        mask3d: Tensor,
        view: Tensor | None = None,
        ref: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Unit features (B, m, D) and (B, n, D) of bearings (B, m, 3) and world points (B, n, 3).

        Args:
            view: (B, 3, 3) world-to-camera rotation prior for ``view_search`` (None: searched).
            ref: ``(R_ref (B, 3, 3), t_ref (B, 3))``, the reference views of ``input3d="bearings"``.
        """
        if self.config.input3d == "bearings":
            p3 = reference_bearings(points3d, mask3d, ref)
        else:
            p3, _, _ = normalise_cloud(points3d, mask3d)
        if self.config.view_search:
            bearings, p3 = self._canonical_inputs(bearings, points3d, p3, mask2d, mask3d, view)
        f, g = self.encoder2d(bearings, mask2d), self.encoder3d(p3, mask3d)
        if self.attention is not None:
            f, g = self.attention(f, g, mask2d, mask3d)
            f = nn.functional.normalize(f, dim=-1) * mask2d[..., None].to(f.dtype)
            g = nn.functional.normalize(g, dim=-1) * mask3d[..., None].to(g.dtype)
        return f, g

    @torch.no_grad()
    def _canonical_inputs(
        self,
        bearings: Tensor,
        points3d: Tensor,
        p3: Tensor,
        mask2d: Tensor,
        mask3d: Tensor,
        view: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """2D input (B, m, 3): canonical image coordinates, centred and scaled to unit RMS over the
        dense points, with a constant third channel; 3D input: ``p3`` rotated into that camera."""
        with torch.autocast(bearings.device.type, enabled=False):  # geometry in float32 at least
            R_c, x, rms, dense = canonical_image(bearings, mask2d)
            if view is None:
                # A fixed seed per call keeps evaluation deterministic.
                gen = torch.Generator(bearings.device).manual_seed(0)
                dense3d = dense_points(points3d, mask3d)
                fine = self.config.view_search_points
                R_view = search_rotation(x, rms, dense, points3d, dense3d, fine_points=fine, generator=gen)
            else:
                R_view = R_c @ view.to(R_c.dtype)
            x = x / rms.clamp_min(1e-9)[:, None, None]
            x2 = torch.cat([x, torch.ones_like(x[..., :1])], -1) * mask2d[..., None].to(x.dtype)
            return x2.to(bearings.dtype), p3 @ R_view.transpose(1, 2).to(p3.dtype)

    def cost(self, f: Tensor, g: Tensor, prior: Tensor | None = None) -> Tensor:
        """Pairwise feature distances (B, m, n) in [0, 2], optionally scaled, plus the bearing prior
        ``prior`` (B, m, n) (angles, radians) when configured, clipped at ``cost_clip``."""
        # ||f - g||^2 = 2 - 2 f.g for unit features, in float32 at least also under autocast (bf16
        # rounds f.g of near matches to 1); the eps keeps sqrt's gradient finite at 0.
        dtype = torch.promote_types(f.dtype, torch.float32)
        with torch.autocast(f.device.type, enabled=False):
            d2 = (2.0 - 2.0 * f.to(dtype) @ g.to(dtype).transpose(1, 2)).clamp_min(0.0)
            M = (d2 + 1e-6).sqrt()
            if self.log_temperature is not None:
                M = M * self.log_temperature.exp()
            if prior is not None and self.log_prior_scale is not None:
                M = M + self.log_prior_scale.exp() * prior.to(dtype)
            return M.clamp(max=self.config.cost_clip)

    def match_cost(
        self,
        points2d: Tensor,
        points3d: Tensor,
        K: Tensor,
        mask2d: Tensor,
        mask3d: Tensor,
        view: Tensor | None = None,
        ref: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The cost matrix (B, m, n) and the normalised image coordinates (B, m, 2) it was made from."""
        # Geometry in float32 at least, also under autocast (bf16 misplaces pixels by ~1 px).
        dtype = torch.promote_types(points2d.dtype, torch.float32)
        with torch.autocast(points2d.device.type, enabled=False):
            x2d = pixels_to_normalized(points2d.to(dtype), K.to(dtype)) * mask2d[..., None].to(dtype)
        bearings = normalized_to_bearings(x2d)
        f, g = self.features(bearings, points3d, mask2d, mask3d, view, ref)
        prior = None
        if self.log_prior_scale is not None:
            with torch.autocast(points2d.device.type, enabled=False):
                r = reference_bearings(points3d.detach().to(dtype), mask3d, ref)
                # A fixed geometric term (sqrt has no gradient at 0): only its scale learns.
                prior = bearing_angles(bearings.detach().to(dtype), r)
        return self.cost(f, g, prior), x2d

    def forward(
        self,
        points2d: Tensor,
        points3d: Tensor,
        K: Tensor,
        mask2d: Tensor | None = None,
        mask3d: Tensor | None = None,
        with_pose: bool = True,
        view: Tensor | None = None,
        refine: bool = True,
        ref: tuple[Tensor, Tensor] | None = None,
    ) -> NetworkOutput:
        """One batch of problems.

        Args:
            points2d: (B, m, 2) pixels; points3d: (B, n, 3) world; K: (B, 3, 3).
            mask2d: (B, m), mask3d: (B, n) bool (default all valid).
            with_pose: run the pose stage (RANSAC and PnP layer).
            view: (B, 3, 3) rotation prior for ``view_search`` (training passes a perturbed truth).
            refine: run the PnP layer after RANSAC (False: the RANSAC pose; see :meth:`refine_pose`).
            ref: ``(R_ref (B, 3, 3), t_ref (B, 3))`` reference views, for ``input3d="bearings"``.
        """
        B, m, _ = points2d.shape
        n = points3d.shape[1]
        mask2d = torch.ones(B, m, dtype=torch.bool, device=points2d.device) if mask2d is None else mask2d
        mask3d = torch.ones(B, n, dtype=torch.bool, device=points2d.device) if mask3d is None else mask3d
        passes = self.config.rematch_passes if with_pose and ref is not None else 0
        for _ in range(passes):
            # Guided matching: the pose of a full pass (always refined, so refine=False and then
            # refine_pose give the same answer as refine=True) becomes the next pass's reference view.
            out = self._match(points2d, points3d, K, mask2d, mask3d, view, ref)
            self._pose(out, out.x2d, points3d, mask2d, mask3d, ref=ref)
            posed = (torch.isfinite(out.R).all((-1, -2)) & torch.isfinite(out.t).all(-1)).detach()
            ref = (
                torch.where(posed[:, None, None], out.R.detach(), ref[0].to(out.R.dtype)),
                torch.where(posed[:, None], out.t.detach(), ref[1].to(out.t.dtype)),
            )
        out = self._match(points2d, points3d, K, mask2d, mask3d, view, ref)
        if with_pose:
            self._pose(out, out.x2d, points3d, mask2d, mask3d, refine=refine, ref=ref)
        return out

    def _match(self, points2d, points3d, K, mask2d, mask3d, view, ref) -> NetworkOutput:
        """Cost and transport plan of one pass (see :meth:`forward`)."""
        m, n = points2d.shape[1], points3d.shape[1]
        M, x2d = self.match_cost(points2d, points3d, K, mask2d, mask3d, view, ref)
        P_full, info = self.sinkhorn(M, mask2d, mask3d, return_info=True)
        P = P_full[:, :m, :n] if self.sinkhorn.dustbin is not None else P_full
        out = NetworkOutput(P=P, P_full=P_full, M=M, x2d=x2d, sinkhorn_info=info, ref=ref)
        return out

    def refine_pose(self, out: NetworkOutput, points3d: Tensor, mask2d: Tensor, mask3d: Tensor) -> None:
        """Run the PnP layer from the RANSAC pose of a forward pass made with ``refine=False`` (for
        timing the two stages apart); the result is that of a forward pass with ``refine=True``."""
        self._pose(out, out.x2d, points3d, mask2d, mask3d, pose_init=(out.R_init, out.t_init), ref=out.ref)

    def _reference_or_ransac(
        self,
        P: Tensor,
        x2d: Tensor,
        points3d: Tensor,
        mask2d: Tensor,
        mask3d: Tensor,
        ref: tuple[Tensor, Tensor],
        M: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per sample, the candidate pose with most inliers among the support pairs
        (``candidate_support``: the top pairs of ``P`` (B, m, n), or the one-to-one assignment of the
        cost ``M``): RANSAC's on the top pairs, the reference pose, and with ``hungarian_init`` RANSAC's
        on the one-to-one assignment; RANSAC poses do not count their minimal sample (ties: the
        reference)."""
        c = self.config
        ransac = weighted_pnp(
            x2d, points3d, P, row_mask=mask2d, col_mask=mask3d, solver=SolverOptions(max_iter=0),
            ransac=self.ransac_options(x2d.shape[1]),
        )  # fmt: skip
        Rs = [ref[0].to(P.dtype), ransac.R_init]
        ts = [ref[1].to(P.dtype), ransac.t_init]
        discount = [0.0, MINIMAL_SAMPLE]
        one_to_one = c.hungarian_init or c.candidate_support == "one_to_one"
        if one_to_one and M is not None:
            hr, hc, hw = one_to_one_pairs(M.detach(), mask2d, mask3d, c.cost_clip)
            xh = x2d.gather(1, hr[..., None].expand(-1, -1, 2))
            Xh = points3d.gather(1, hc[..., None].expand(-1, -1, 3))
            hw = hw.to(P.dtype)
        if c.hungarian_init and M is not None:
            solve = opencv_ransac if resolve_init(c.ransac.backend, P.device) == "opencv" else torch_ransac
            Rh, th, _ = solve(xh, Xh, hw, c.ransac.threshold, c.ransac.iterations)
            Rs.append(Rh)
            ts.append(th)
            discount.append(MINIMAL_SAMPLE)
        if c.candidate_support == "one_to_one" and M is not None:
            x, X, w = xh, Xh, hw
        else:
            rows, cols, w = top_pairs(P.detach(), self.topk(x2d.shape[1]))
            x = x2d.gather(1, rows[..., None].expand(-1, -1, 2))
            X = points3d.gather(1, cols[..., None].expand(-1, -1, 3))
        score = score_poses(
            torch.stack(Rs, 1), torch.stack(ts, 1), x, X, (w > 0).to(P.dtype), c.ransac.threshold
        )
        score = score - score.new_tensor(discount)
        best = score.argmax(1)  # the first of equal scores: the reference
        pick = torch.arange(len(best), device=best.device)
        return torch.stack(Rs, 1)[pick, best], torch.stack(ts, 1)[pick, best]

    def _pose(
        self,
        out: NetworkOutput,
        x2d: Tensor,
        points3d: Tensor,
        mask2d: Tensor,
        mask3d: Tensor,
        refine: bool = True,
        pose_init: tuple[Tensor, Tensor] | None = None,
        ref: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        c = self.config
        # The geometric layers run in float32 at least, also under autocast.
        dtype = torch.promote_types(out.P.dtype, torch.float32)
        with torch.autocast(x2d.device.type, enabled=False):
            if pose_init is None and c.reference_init and ref is not None:
                P = out.P.detach().to(dtype)
                pose_init = self._reference_or_ransac(
                    P, x2d.to(dtype), points3d.to(dtype), mask2d, mask3d, ref, out.M
                )
            res = weighted_pnp(
                x2d.to(dtype),
                points3d.to(dtype),
                out.P.to(dtype),
                pose_init=pose_init,
                sparse_topk=c.pnp_sparse_topk,
                row_mask=mask2d,
                col_mask=mask3d,
                solver=c.pnp if c.use_pnp and refine else dataclasses.replace(c.pnp, max_iter=0),
                ransac=self.ransac_options(x2d.shape[1]),
            )
        out.R_init, out.t_init, out.valid = res.R_init, res.t_init, res.valid
        out.pnp = res
        if c.use_pnp and refine:
            # A sample the layer flags degenerate keeps its RANSAC pose; one stopped by the iteration
            # cap keeps its refined pose. Neither gets a pose gradient (valid is False).
            out.R = torch.where(res.refined[:, None, None], res.R, res.R_init)
            out.t = torch.where(res.refined[:, None], res.t, res.t_init)
        else:
            out.R, out.t = res.R_init, res.t_init

    @torch.no_grad()
    def predict(
        self,
        points2d: Tensor,
        points3d: Tensor,
        K: Tensor,
        mask2d: Tensor | None = None,
        mask3d: Tensor | None = None,
        topk: int | None = None,
        ref: tuple[Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Inference on one problem ((m, 2), (n, 3), (3, 3)) or a batch ((B, m, 2), ...).

        ``ref``: the reference view ``(R_ref, t_ref)`` ((3, 3), (3,) or batched) for ``input3d="bearings"``.

        Returns:
            dict with ``R``, ``t``, ``P``, ``matches`` (.., k, 2) (2D index, 3D index), ``scores`` (.., k)
            and ``valid``; unbatched inputs give unbatched outputs.
        """
        single = points2d.dim() == 2
        if single:
            points2d, points3d, K = points2d[None], points3d[None], K[None]
            mask2d = None if mask2d is None else mask2d[None]
            mask3d = None if mask3d is None else mask3d[None]
            ref = None if ref is None else (ref[0][None], ref[1][None])
        was_training = self.training
        self.eval()
        try:
            out = self(points2d, points3d, K, mask2d, mask3d, ref=ref)
        finally:
            self.train(was_training)
        rows, cols, scores = exact_top_pairs(out.P, topk or self.topk(points2d.shape[1]))
        res = {
            "R": out.R,
            "t": out.t,
            "P": out.P,
            "matches": torch.stack([rows, cols], -1),
            "scores": scores,
            "valid": out.valid,
        }
        return {k: v[0] for k, v in res.items()} if single else res
