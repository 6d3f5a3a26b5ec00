import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests are skipped where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """One intra-op thread: the tests' tensors are small, and OpenMP threads spinning against another
    busy process slow a 2-core machine several-fold (time-limited tests depend on it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
