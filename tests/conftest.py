import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a file of many tiny models (batch 2 at 32-64 px): there is nothing
    to split between threads, and while the other core is busy two OpenMP threads wait on each
    other (test_models.py took about 6 times as long). Restored after the file."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
