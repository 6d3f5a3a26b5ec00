"""``scripts/device_check.sh``, the one script for a lent GPU, run here as its CPU dry run: every
step must run and the report must hold every figure."""

import json
import math
import subprocess

from training_utils import ROOT


def test_device_check_dry_run_writes_the_whole_report(tmp_path, subprocess_env):
    out = tmp_path / "check"
    script = ROOT / "scripts" / "device_check.sh"
    command = ["bash", str(script), "--device", "cpu", "--dry-run", "--out", str(out)]
    proc = subprocess.run(command, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "device_check.json").read_text())
    assert [s["step"] for s in report["steps"]] == ["tests", "syncs", "train"]
    assert all(s["rc"] == 0 for s in report["steps"])
    calls = {r["call"] for r in report["layers"]}
    assert calls == {f"{layer} forward{bwd}" for layer in ("sinkhorn", "pnp") for bwd in ("", " + backward")}
    assert all(math.isfinite(r["seconds"]) and r["seconds"] > 0 for r in report["layers"] + report["latency"])
    assert "val/rotation_error_deg/q50" in report["train"]
    table = (out / "device_check.md").read_text()
    assert "| sinkhorn forward + backward | 2 | 40 |" in table and "inference per problem" in table
