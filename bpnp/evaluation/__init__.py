"""Pose-accuracy evaluation: metrics, baselines, the evaluation loop and its reports.

Any method implementing :class:`Method` (a batch in, a :class:`MethodOutput` out) can be evaluated;
the baselines here need no network.
"""

from bpnp.data.outliers import with_outlier_rate
from bpnp.evaluation.baselines import (
    BASELINES,
    HungarianMatcher,
    OracleBaseline,
    RandomBaseline,
    RansacConfig,
    hungarian_pairs,
    ransac_pnp,
)
from bpnp.evaluation.evaluate import EvalRow, evaluate_method, evaluate_sweep
from bpnp.evaluation.report import markdown_table, write_reports
from bpnp.metrics.aggregate import PoseMetrics, flatten, problem_metrics, summarize
from bpnp.metrics.output import Method, MethodOutput, initial_pose_output

__all__ = [
    "BASELINES",
    "EvalRow",
    "HungarianMatcher",
    "Method",
    "MethodOutput",
    "OracleBaseline",
    "PoseMetrics",
    "RandomBaseline",
    "RansacConfig",
    "evaluate_method",
    "evaluate_sweep",
    "flatten",
    "hungarian_pairs",
    "initial_pose_output",
    "markdown_table",
    "problem_metrics",
    "ransac_pnp",
    "summarize",
    "with_outlier_rate",
    "write_reports",
]
