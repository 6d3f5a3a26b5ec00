"""The evaluation command line end to end on synthetic data, and the report writers."""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest
import yaml

from bpnp.cli.evaluate import evaluate_main, parse_rates
from bpnp.data import BlindPnPDataModule
from bpnp.evaluation import report, summarize
from bpnp.evaluation.evaluate import EvalRow

DATA_ARGS = ["--data.test_samples", "5", "--data.options", "{num_points: 80}", "--data.num_workers", "0"]


def _reject_constants(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def test_evaluate_cli_with_oracle_and_random_writes_every_report(tmp_path):
    out = tmp_path / "eval"
    rows = evaluate_main(
        [*DATA_ARGS, "--baseline", "[oracle,random]", "--random_budget_ms", "5",
         "--outlier-rates", "0,0.5", "--out", str(out), "--progress", "false"]
    )  # fmt: skip
    assert [(r.method, r.outlier_rate) for r in rows] == [
        ("oracle", 0.0), ("random", 0.0), ("oracle", 0.5), ("random", 0.5)
    ]  # fmt: skip

    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| Method |") and len(table) == 2 + 4
    assert table[2].startswith("| oracle | 0 | 5 |")

    summary = json.loads((out / "summary.json").read_text(), parse_constant=_reject_constants)
    assert summary["version"] == 1 and summary["settings"]["data"]["test_samples"] == 5
    first = summary["rows"][0]
    assert first["method"] == "oracle" and first["outlier_rate"] == 0.0 and first["num_problems"] == 5
    for key in ("rotation_error_deg", "translation_error", "center_error", "relative_center_error",
                "reprojection_error_px"):  # fmt: skip
        assert set(first[key]) == {"q25", "q50", "q75"}
    # synthetic scenes are unitless: recalls at relative thresholds only, none in metres
    assert set(first["recall"]) == {"1deg_1pct", "5deg_5pct", "10deg_10pct"}
    assert set(first["reprojection_auc"]) == {"1px", "5px", "10px"}
    assert first["recall"]["5deg_5pct"] == 1.0 and first["topk_inlier_ratio"] == 1.0
    assert first["ms_per_problem_with_loading"] >= first["ms_per_problem"] > 0

    with (out / "problems.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 4 * 5
    assert {line["method"] for line in lines} == {"oracle", "random"}
    assert float(lines[0]["rotation_error_deg"]) < 1.0

    img = cv2.imread(str(out / "recall.png"))
    assert img is not None and img.shape[0] > 200 and img.std() > 5


def test_data_flag_accepts_a_training_config_and_rejects_bad_input(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "synthetic", "test_samples": 3, "num_workers": 0,
                                            "options": {"num_points": 40}}, "model": {"x": 1}}))  # fmt: skip
    rows = evaluate_main(["--data", str(cfg), "--baseline", "[oracle]", "--out", str(tmp_path / "o"),
                          "--progress", "false"])  # fmt: skip
    assert rows[0].summary["num_problems"] == 3
    with pytest.raises(SystemExit):
        evaluate_main([*DATA_ARGS, "--out", str(tmp_path / "x")])  # no method
    with pytest.raises(SystemExit):
        evaluate_main([*DATA_ARGS, "--baseline", "[magic]", "--out", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        evaluate_main([*DATA_ARGS, "--ckpt", "[nope.ckpt]", "--out", str(tmp_path / "x")])
    # synthetic scenes have no unit: a table in metres is refused, naming the way to a metric source
    with pytest.raises(SystemExit):
        evaluate_main(
            [*DATA_ARGS, "--baseline", "[oracle]", "--scale", "metric", "--out", str(tmp_path / "x")]
        )


def test_metric_units_follow_the_source():
    assert BlindPnPDataModule("rgbd", root="x").metric_units
    assert not BlindPnPDataModule("synthetic").metric_units
    assert not BlindPnPDataModule("colmap", root="x").metric_units  # COLMAP scale is arbitrary
    assert BlindPnPDataModule("colmap", root="x", metric_units=True).metric_units
    with pytest.raises(ValueError, match="metric_units"):
        BlindPnPDataModule("modelnet40", root="x", metric_units=True)


def test_parse_rates():
    assert parse_rates("0,0.25,0.5,0.75") == [0.0, 0.25, 0.5, 0.75]
    assert parse_rates("[0, 0.5]") == [0.0, 0.5]
    assert parse_rates(None) == [None]
    assert parse_rates("natural,0.75,0.5,0.25,0") == [None, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match="1.0"):
        parse_rates("0,1.0")
    with pytest.raises(ValueError, match="natural"):
        parse_rates("0,half")


def _row(method: str, rot: list[float]) -> EvalRow:
    n = len(rot)
    cols = {k: np.zeros(n) for k in report.COLUMNS}
    cols["rotation_error_deg"] = np.array(rot)
    cols["topk_inlier_ratio"] = np.full(n, math.nan)
    s = summarize(cols, metric_units=True) | {"ms_per_problem": 1.0, "ms_per_problem_with_loading": 2.0}
    return EvalRow(method, None, cols, [str(i) for i in range(n)], [""] * n, s)


def test_table_json_and_wandb_logging(tmp_path, monkeypatch):
    rows = [_row("a", [0.5, 20.0]), _row("b", [math.inf, math.inf])]
    table = report.markdown_table(rows, scale="metric")
    assert "R@5cm,5°" in table and "| a | data | 2 |" in table and "inf / inf / inf" in table
    d = report.summary_dict(rows)
    assert d["rows"][1]["rotation_error_deg"]["q50"] == "inf"
    assert d["rows"][0]["topk_inlier_ratio"] is None  # nan -> null
    json.dumps(d, allow_nan=False)

    import wandb

    logged = {}
    monkeypatch.setattr(wandb, "run", object())
    monkeypatch.setattr(wandb, "log", lambda metrics: logged.update(metrics))
    paths = report.write_reports(rows, tmp_path, scale="relative")
    assert {p.name for p in paths.values()} == {"table.md", "summary.json", "problems.csv", "recall.png"}
    assert logged["eval/a/recall/5deg_5pct"] == 0.5
    assert "eval/summary" in logged and "eval/recall_curves" in logged
