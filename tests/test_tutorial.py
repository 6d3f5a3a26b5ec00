"""docs/tutorial.md runs as written: every command of its bash blocks, in order, from the
repository root (outputs under outputs/tutorial/)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pytest
from training_utils import ROOT, SHARED_DATA

pytestmark = pytest.mark.slow  # trains and evaluates through the real commands

TUTORIAL = ROOT / "docs" / "tutorial.md"


def commands() -> list[str]:
    """The tutorial's shell commands, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    return [c.strip() for block in blocks for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def test_the_tutorial_runs_as_written(subprocess_env):
    out = ROOT / "outputs" / "tutorial"
    shutil.rmtree(out, ignore_errors=True)
    cmds = commands()
    assert len(cmds) == 8 and all(c.startswith("bpnp ") for c in cmds)
    for cmd in cmds:
        if "../shared/data" in cmd and not SHARED_DATA.is_dir():
            continue  # the shared COLMAP model is not there
        args = shlex.split(cmd)[1:]
        proc = subprocess.run([sys.executable, "-m", "bpnp.cli", *args], cwd=ROOT, env=subprocess_env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-3000:]}"
    assert (out / "example" / "pose.json").is_file()
    assert (out / "eval" / "table.md").is_file() and (out / "run" / "checkpoints" / "last.ckpt").is_file()
    assert any((out / "vis").rglob("*_matches_2d.png"))
