"""Fixtures of the modeling tests (the shared ones live in ``tests/conftest.py``)."""
import pytest
import torch


@pytest.fixture
def single_thread():
    """Run the test on one CPU thread (a fixed reduction order for pinned float values), then
    restore the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
