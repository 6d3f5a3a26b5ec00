"""Writers of the evaluation outputs: Markdown table, summary.json, per-problem CSV, recall-curve PNG,
and the same numbers to wandb when a run is active."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bpnp.evaluation.evaluate import EvalRow  # noqa: E402
from bpnp.metrics.aggregate import COLUMNS, flatten  # noqa: E402
from bpnp.metrics.errors import (  # noqa: E402
    METRIC_THRESHOLDS,
    RELATIVE_THRESHOLDS,
    REPROJECTION_AUC_PX,
    recall_curve,
)

SCALES = ("relative", "metric")
SUMMARY_VERSION = 1


def row_label(row: EvalRow) -> str:
    """``method`` or ``method @ outliers 0.25``."""
    return row.method if row.outlier_rate is None else f"{row.method} @ outliers {row.outlier_rate:g}"


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _pct(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def _quartiles(q: Mapping[str, float]) -> str:
    return " / ".join(_fmt(q[k]) for k in ("q25", "q50", "q75"))


def markdown_table(rows: Sequence[EvalRow], scale: str = "relative") -> str:
    """The summary table: one line per method and outlier rate.

    ``scale="relative"`` reports the camera-centre error relative to the scene extent and recall at
    (1 deg, 1 %), (5 deg, 5 %), (10 deg, 10 %); ``"metric"`` the centre error in scene units (m) and
    recall at (5 cm, 5 deg), (25 cm, 2 deg), (50 cm, 5 deg), (1 m, 10 deg).
    """
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r}: expected one of {SCALES}")
    thresholds = RELATIVE_THRESHOLDS if scale == "relative" else METRIC_THRESHOLDS
    centre_key = "relative_center_error" if scale == "relative" else "center_error"
    centre_head = "Centre err. / extent" if scale == "relative" else "Centre err. (m)"
    recall_heads = [
        f"R@{th.rotation_deg:g}°,{100 * th.translation:g}%"
        if th.relative
        else f"R@{th.key.split('_')[0]},{th.rotation_deg:g}°"
        for th in thresholds
    ]
    head = (
        ["Method", "Outliers", "N", "Rot. err. (°) q25/50/75", f"{centre_head} q25/50/75"]
        + [f"{h} (%)" for h in recall_heads]
        + [f"AUC@{px:g}px (%)" for px in REPROJECTION_AUC_PX]
        + ["Top-k inliers (%)", "Fail", "ms/problem", "ms incl. loading"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        s = r.summary
        if s.get("num_problems", 0) == 0:
            continue
        cells = [
            r.method,
            "data" if r.outlier_rate is None else f"{r.outlier_rate:g}",
            str(s["num_problems"]),
            _quartiles(s["rotation_error_deg"]),
            _quartiles(s[centre_key]),
            *[_pct(s["recall"][th.key]) for th in thresholds],
            *[_pct(s["reprojection_auc"][f"{px:g}px"]) for px in REPROJECTION_AUC_PX],
            _pct(s["topk_inlier_ratio"]),
            str(s["failures"]),
            _fmt(s["ms_per_problem"]),
            _fmt(s["ms_per_problem_with_loading"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_safe(v: Any) -> Any:
    """Standard JSON: ``nan`` -> null, ``inf`` -> "inf" / "-inf", numpy scalars -> Python."""
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v


def summary_dict(rows: Sequence[EvalRow], settings: Mapping[str, Any] | None = None) -> dict:
    """The content of summary.json (keys documented in docs/evaluation.md)."""
    return _json_safe(
        {
            "version": SUMMARY_VERSION,
            "settings": dict(settings or {}),
            "thresholds": {
                "metric": [asdict(t) | {"key": t.key} for t in METRIC_THRESHOLDS],
                "relative": [asdict(t) | {"key": t.key} for t in RELATIVE_THRESHOLDS],
                "reprojection_auc_px": list(REPROJECTION_AUC_PX),
            },
            "rows": [{"method": r.method, "outlier_rate": r.outlier_rate} | r.summary for r in rows],
        }
    )


def write_json(rows: Sequence[EvalRow], path: Path, settings: Mapping[str, Any] | None = None) -> Path:
    path.write_text(json.dumps(summary_dict(rows, settings), indent=2, default=str) + "\n")
    return path


def write_csv(rows: Sequence[EvalRow], path: Path) -> Path:
    """One line per (method, outlier rate, problem)."""
    names = [*COLUMNS, "ms"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "outlier_rate", "problem", "id", "scene", *names])
        for r in rows:
            n = len(r.ids)
            for p in range(n):
                values = [r.columns[k][p] if k in r.columns else math.nan for k in names]
                w.writerow(
                    [r.method, "" if r.outlier_rate is None else r.outlier_rate, p, r.ids[p], r.scenes[p]]
                    + [f"{v:.6g}" for v in values]
                )
    return path


def recall_figure(rows: Sequence[EvalRow], scale: str = "relative") -> plt.Figure:
    """Recall versus threshold of the rotation, centre and reprojection errors, one curve per row."""
    centre_key = "relative_center_error" if scale == "relative" else "center_error"
    panels = [
        ("rotation_error_deg", np.linspace(0, 10, 201), "rotation error threshold (°)"),
        (
            centre_key,
            np.linspace(0, 0.1 if scale == "relative" else 1.0, 201),
            "centre error / scene extent" if scale == "relative" else "centre error threshold (m)",
        ),
        ("reprojection_error_px", np.linspace(0, 10, 201), "reprojection error threshold (px)"),
    ]
    # One colour per method, one line style per outlier rate.
    methods = list(dict.fromkeys(r.method for r in rows))
    rates = list(dict.fromkeys(r.outlier_rate for r in rows))
    styles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1))]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for ax, (key, th, xlabel) in zip(axes, panels, strict=True):
        for r in rows:
            if key in r.columns and r.columns[key].size:
                colour = f"C{methods.index(r.method) % 10}"
                style = styles[rates.index(r.outlier_rate) % len(styles)]
                ax.plot(th, 100 * recall_curve(r.columns[key], th), label=row_label(r), lw=1.8, color=colour,
                        linestyle=style)  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel("recall (%)")
        ax.set_ylim(-2, 102)
        ax.set_xlim(th[0], th[-1])
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="lower right")
    return fig


def write_recall_plot(rows: Sequence[EvalRow], path: Path, scale: str = "relative") -> Path:
    fig = recall_figure(rows, scale)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(
    rows: Sequence[EvalRow],
    out_dir: Path | str,
    scale: str = "relative",
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write table.md, summary.json, problems.csv and recall.png into ``out_dir``; log them to wandb
    when a run is active. Returns the paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "table": out / "table.md",
        "summary": out / "summary.json",
        "csv": out / "problems.csv",
        "plot": out / "recall.png",
    }
    paths["table"].write_text(markdown_table(rows, scale))
    write_json(rows, paths["summary"], settings)
    write_csv(rows, paths["csv"])
    write_recall_plot(rows, paths["plot"], scale)
    log_to_wandb(rows, paths)
    return paths


def log_to_wandb(rows: Sequence[EvalRow], paths: Mapping[str, Path]) -> bool:
    """Log the flattened summaries, the table and the plot to the active wandb run, if any."""
    try:
        import wandb
    except ImportError:
        return False
    if wandb.run is None:
        return False
    metrics: dict[str, Any] = {}
    for r in rows:
        for k, v in flatten(r.summary).items():
            metrics[f"eval/{row_label(r)}/{k}"] = v
    flat = [flatten(r.summary) for r in rows]
    keys = sorted({k for f in flat for k in f})
    table = wandb.Table(columns=["method", "outlier_rate", *keys])
    for r, f in zip(rows, flat, strict=True):
        table.add_data(r.method, r.outlier_rate, *[f.get(k) for k in keys])
    metrics["eval/summary"] = table
    if "plot" in paths:
        metrics["eval/recall_curves"] = wandb.Image(str(paths["plot"]))
    wandb.log(metrics)
    return True
