import pytest
import torch


@pytest.fixture
def one_thread():
    """In-process training on one thread: an OpenMP pool of 2 on a busy 2-core machine crawls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
