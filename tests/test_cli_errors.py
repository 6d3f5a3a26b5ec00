"""User mistakes through the real ``bpnp`` command: one line naming what is wrong, status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from training_utils import CONFIGS

pytestmark = pytest.mark.slow  # subprocesses or long property runs


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fit", "--config", str(CONFIGS / "megadepth.yaml"), "--data.root", "/nonexistent",
          "--trainer.max_steps", "1", "--trainer.logger", "false"],
         "bpnp fit: error: COLMAP root /nonexistent not found"),
        (["evaluate", "--data.source", "synthetic", "--data.root", "/x", "--baseline", "oracle"],
         "bpnp evaluate: error: data source 'synthetic' reads no root"),
    ],
)  # fmt: skip
def test_a_user_mistake_is_one_line_and_status_2(tmp_path, subprocess_env, args, expected):
    proc = subprocess.run([sys.executable, "-m", "bpnp.cli", *args], env=subprocess_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(expected)
    # --debug shows where it came from
    debug = subprocess.run([sys.executable, "-m", "bpnp.cli", *args, "--debug"], env=subprocess_env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize(("wrong", "right"), [("--data.batchsize", "--data.batch_size"),
                                              ("--model.net.gama", "--model.net.gamma")])  # fmt: skip
def test_an_unknown_option_gets_the_closest_valid_one(tmp_path, subprocess_env, wrong, right):
    cmd = [sys.executable, "-m", "bpnp.cli", "fit", wrong, "5", "--print_config"]
    proc = subprocess.run(cmd, env=subprocess_env, cwd=tmp_path, capture_output=True, text=True, timeout=99)
    assert proc.returncode == 2
    assert f"did you mean {right}?" in proc.stderr
