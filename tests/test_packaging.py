"""The installed package works from any folder: configs and the shipped network travel inside it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from training_utils import ROOT

pytestmark = pytest.mark.slow  # builds and installs a wheel


def test_an_installed_package_finds_its_configs_and_weights_outside_the_checkout(tmp_path):
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheels)],
                   check=True, capture_output=True)  # fmt: skip
    wheel = next(wheels.glob("bpnp-*.whl"))
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True
    )
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}
    code = (
        f"import bpnp, bpnp.cli.train as t; assert bpnp.__file__.startswith({str(site)!r}), bpnp.__file__; "
        "assert t.DEFAULT_CONFIG.is_file(); bpnp.load_pretrained('synthetic'); print('loaded')"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=work, capture_output=True, text=True)
    assert out.returncode == 0 and "loaded" in out.stdout, out.stderr[-2000:]
    printed = subprocess.run([sys.executable, "-m", "bpnp.cli", "fit", "--print_config"], env=env, cwd=work,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "source: synthetic" in printed.stdout and "default_root_dir: outputs/synthetic" in printed.stdout
