"""Fixtures shared by the tests: one intra-op thread, a scratch folder for training runs, and the
environment of the subprocesses that run the real commands. Paths, the tiny-run overrides and the
config builders are plain values and functions in ``training_utils.py``."""

import os

import pytest
import torch
from training_utils import ROOT


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests are skipped where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# The devices the device-parametrised tests run on: the CPU, and CUDA where it is available.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each available device in turn (``scripts/device_check.sh`` runs these tests on a GPU)."""
    return torch.device(request.param)


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """One intra-op thread: the tests' tensors are small, and OpenMP threads spinning against another
    busy process slow a 2-core machine several-fold (time-limited tests depend on it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A training test in a scratch folder (nothing lands in the repository even if a default path
    slips through), with wandb off unless the test says otherwise. A module asks for it with
    ``pytestmark = pytest.mark.usefixtures("isolated")``, which sets it up before the test's other
    fixtures."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["bpnp"])
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment of a command run in a subprocess: the repository importable, no wandb, few threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env
