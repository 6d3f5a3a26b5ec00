"""What training, pictures and evaluation share: the answer a method gives on a batch
(:class:`MethodOutput`), per-problem pose and matching errors, and their summaries (also as a
torchmetrics ``Metric`` for DDP-exact validation)."""

from bpnp.metrics.aggregate import COLUMNS, PoseMetrics, flatten, problem_metrics, summarize
from bpnp.metrics.output import Method, MethodOutput, initial_pose_output

__all__ = [
    "COLUMNS",
    "Method",
    "MethodOutput",
    "PoseMetrics",
    "flatten",
    "initial_pose_output",
    "problem_metrics",
    "summarize",
]
