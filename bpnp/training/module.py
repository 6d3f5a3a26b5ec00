"""The LightningModule that trains :class:`~bpnp.models.BlindPnPNet` end to end."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from bpnp.data.sample import Batch
from bpnp.geometry.view_search import perturb_rotation
from bpnp.metrics import MethodOutput, PoseMetrics
from bpnp.models import BlindPnPNet, NetConfig, NetworkOutput, exact_top_pairs
from bpnp.models.pretrained import network_weights
from bpnp.training.losses import (
    correspondence_loss,
    dustbin_nll,
    inlier_mass,
    pose_weight,
    rotation_loss,
    translation_loss,
)

log = logging.getLogger(__name__)


# Per-problem quantities averaged over validation / test (exactly, across processes).
EVAL_MEANS = (
    "loss_corr",
    "inlier_mass",
    "sinkhorn_converged",
    "sinkhorn_row_error",
    "pnp_valid",
    "pnp_converged",
)


def solver_stats(out: NetworkOutput) -> dict[str, Tensor]:
    """Per sample (B,): did each layer converge, the Sinkhorn row error, did PnP pass a pose gradient."""
    stats = {}
    if out.sinkhorn_info is not None:
        stats["sinkhorn_converged"] = out.sinkhorn_info.converged.float()
        stats["sinkhorn_row_error"] = out.sinkhorn_info.error.float()
    if out.pnp is not None:
        stats["pnp_valid"] = out.pnp.valid.float()
        stats["pnp_converged"] = out.pnp.converged.float()
    return stats


class BlindPnPModule(pl.LightningModule):
    """Training, validation and test of the blind-PnP network.

    Args:
        net: network hyper-parameters.
        lr, weight_decay: Adam settings (BPnPNet: 1e-3, 1e-3).
        lr_schedule: None, "cosine" (to 0 over the run) or "step" (x0.1 at 2/3 of the run).
        pose_loss_start_epoch: epoch at which the pose terms switch on (None: never); a global step
            instead with ``pose_loss_unit="step"`` (step-based recipes, whose epochs depend on the data).
        pose_loss_ramp_epochs: epochs (or steps) over which their weight ramps to ``pose_loss_weight``.
        pose_loss_unit: ``"epoch"`` or ``"step"``, the unit of the two settings above.
        pose_loss_weight: final weight of ``L_R + L_t``.
        max_nonfinite_steps: consecutive non-finite losses after which training stops with an error.
        val_pose: compute the pose (RANSAC + PnP layer) in validation and test.
        view_prior_deg: with ``net.view_search``, training replaces the search by the true rotation
            perturbed by up to this angle (the search's typical error), which costs nothing;
            validation and test run the search.
        init_from: start from the network weights of ``pretrained:NAME`` or of a training checkpoint
            (fine-tuning); the architecture in ``net`` must match theirs.
    """

    def __init__(
        self,
        net: NetConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-3,
        lr_schedule: str | None = None,
        pose_loss_start_epoch: int | None = None,
        pose_loss_ramp_epochs: int = 5,
        pose_loss_weight: float = 1.0,
        pose_loss_unit: str = "epoch",
        max_nonfinite_steps: int = 20,
        val_pose: bool = True,
        view_prior_deg: float = 30.0,
        init_from: str | None = None,
    ):
        super().__init__()
        if pose_loss_unit not in ("epoch", "step"):
            raise ValueError(f"pose_loss_unit must be 'epoch' or 'step', got {pose_loss_unit!r}")
        if lr_schedule not in (None, "cosine", "step"):
            raise ValueError(f"lr_schedule must be None, 'cosine' or 'step', got {lr_schedule!r}")
        # init_from only seeds the weights, which the checkpoint holds: a reload must not need the file.
        self.save_hyperparameters(ignore=["init_from"])
        self.net = BlindPnPNet(net)
        if init_from is not None:
            try:
                self.net.load_state_dict(network_weights(init_from))
            except RuntimeError as e:  # shapes or names differ: say which file and why, in one line
                first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
                raise ValueError(
                    f"init_from {init_from}: its network does not fit model.net ({first})"
                ) from e
        self.val_metrics = PoseMetrics()
        self.test_metrics = PoseMetrics()
        self.eval_means = nn.ModuleDict(
            {p: nn.ModuleDict({k: MeanMetric() for k in EVAL_MEANS}) for p in ("val", "test")}
        )
        self._nonfinite_run = 0
        self.skipped_steps = 0
        self._skip_step = False

    # -- helpers -------------------------------------------------------------------------------
    def forward(self, batch: Batch, with_pose: bool = True, refine: bool = True) -> NetworkOutput:
        view = None
        if self.training and self.net.config.view_search:
            # Seeded by the step, so a resumed run draws the same priors as one that never stopped.
            gen = torch.Generator().manual_seed(1_000_003 * self.global_step + 7)
            view = perturb_rotation(batch.R, self.hparams.view_prior_deg, gen)
        b = batch
        return self.net(
            b.points2d, b.points3d, b.K, b.mask2d, b.mask3d,
            with_pose=with_pose, view=view, refine=refine, ref=b.ref_view,
        )  # fmt: skip

    def current_pose_weight(self) -> float:
        h = self.hparams
        now = self.global_step if h.get("pose_loss_unit", "epoch") == "step" else self.current_epoch
        return pose_weight(now, h.pose_loss_start_epoch, h.pose_loss_ramp_epochs, h.pose_loss_weight)

    def losses(self, batch: Batch, out: NetworkOutput, w_pose: float) -> dict[str, Tensor]:
        """Every loss term (logged separately) and their weighted sum under ``"loss"``."""
        terms = {"loss_corr": correspondence_loss(out.P, batch.match)}
        total = terms["loss_corr"]
        if self.net.sinkhorn.dustbin is not None:
            terms["loss_nll"] = dustbin_nll(out.P_full, batch.match, batch.mask2d, batch.mask3d)
            total = total + terms["loss_nll"]
        if w_pose > 0 and out.R is not None:
            valid = out.valid.to(out.R.dtype)
            count = valid.sum().clamp_min(1.0)
            terms["loss_rot"] = (rotation_loss(out.R, batch.R) * valid).sum() / count
            # Relative to the depth of the scene's centroid: scale-free, so it is not clamped at once.
            w = batch.mask3d[..., None].to(batch.points3d.dtype)
            centroid = (batch.points3d * w).sum(1) / w.sum(1).clamp_min(1.0)
            depth = (batch.R @ centroid[..., None]).squeeze(-1).add(batch.t).norm(dim=-1).clamp_min(1e-9)
            terms["loss_trans"] = (translation_loss(out.t, batch.t, depth) * valid).sum() / count
            total = total + w_pose * (terms["loss_rot"] + terms["loss_trans"])
        terms["loss"] = total
        return terms

    def method_output(
        self, out: NetworkOutput, topk: int | None = None, with_plan: bool = True
    ) -> MethodOutput:
        """The network's answer in the evaluation package's format (``with_plan=False``: without the
        (B, m + 1, n + 1) plan, which the metrics do not need)."""
        rows, cols, scores = exact_top_pairs(out.P.detach(), topk or self.net.topk(out.P.shape[1]))
        # Samples the PnP layer flags degenerate still have the RANSAC pose: a failure only if not finite.
        posed = torch.isfinite(out.R).all((-1, -2)) & torch.isfinite(out.t).all(-1)
        return MethodOutput(
            R=out.R.detach(),
            t=out.t.detach(),
            valid=posed,
            pairs=torch.stack([rows, cols], -1),
            scores=scores,
            plan=out.P_full.detach() if with_plan else None,
            R_init=out.R_init,
            t_init=out.t_init,
        )

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        w_pose = self.current_pose_weight()
        out = self(batch, with_pose=w_pose > 0)
        terms = self.losses(batch, out, w_pose)
        bs = len(batch)
        # Decided together: with several processes, one rank skipping backward while the others
        # all-reduce would hang the run.
        bad = self.trainer.strategy.reduce_boolean_decision(
            not bool(torch.isfinite(terms["loss"])), all=False
        )
        self._skip_step = bad
        if bad:
            self._nonfinite_run += 1
            self.skipped_steps += 1
            self.log("train/skipped_steps", float(self.skipped_steps), batch_size=bs)
            log.warning("non-finite loss at step %d (on some process): step skipped", self.global_step)
            if self._nonfinite_run >= self.hparams.max_nonfinite_steps:
                raise RuntimeError(
                    f"{self._nonfinite_run} consecutive non-finite losses (last at global step "
                    f"{self.global_step}): stopping. Lower the learning rate or check the data."
                )
            # A zero loss on every parameter keeps every rank's backward (and DDP's reduction) in
            # step; on_before_optimizer_step then drops the gradients, so the optimiser moves nothing.
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        self._nonfinite_run = 0
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"}, batch_size=bs)
        self.log("train/loss", terms["loss"].detach(), batch_size=bs, prog_bar=True)
        self.log("train/pose_weight", w_pose, batch_size=bs)
        self.log("train/inlier_mass", inlier_mass(out.P.detach(), batch.match).mean(), batch_size=bs)
        self.log_dict({f"train/{k}": v.mean() for k, v in solver_stats(out).items()}, batch_size=bs)
        return terms["loss"]

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._skip_step:
            # No gradient at all: Adam then leaves the parameters and its moments as they were.
            optimizer.zero_grad(set_to_none=True)

    def _eval_step(self, batch: Batch, metrics: PoseMetrics, prefix: str) -> None:
        out = self(batch, with_pose=self.hparams.val_pose)
        bs = len(batch)
        terms = self.losses(batch, out, 0.0)
        values = {"loss_corr": terms["loss_corr"].expand(bs), "inlier_mass": inlier_mass(out.P, batch.match)}
        means = self.eval_means[prefix]
        for name, value in {**values, **solver_stats(out)}.items():
            # torchmetrics sums values and counts over processes: exact under DDP, unlike a mean of means
            means[name].update(value.detach())
            self.log(f"{prefix}/{name}", means[name], batch_size=bs)
        if self.hparams.val_pose:
            metrics.update(batch, self.method_output(out, with_plan=False))

    def _eval_epoch_end(self, metrics: PoseMetrics, prefix: str) -> None:
        if self.hparams.val_pose and metrics.update_count > 0:
            values = metrics.compute()
            self.log_dict({f"{prefix}/{k}": v.float() for k, v in values.items()})
        metrics.reset()

    def setup(self, stage: str) -> None:
        # Metric recalls (5 cm, ...) only where the data module says the scene is in metres.
        metric = bool(getattr(self.trainer.datamodule, "metric_units", False)) if self._trainer else False
        self.val_metrics.metric_units = self.test_metrics.metric_units = metric

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end(self.val_metrics, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end(self.test_metrics, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> MethodOutput:
        return self.method_output(self(batch)).detach_cpu()

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule is None:
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if self.hparams.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(2 * total // 3, 1), gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
