import os

from acdc_bench import numerics  # imports no torch

# The tests compute under the numerics a user's run gets by default (portable: ATen and oneDNN
# capped to AVX2, MKL on its branch for every CPU vendor), pinned before torch starts.
# ACDC_BENCH_NUMERICS=native runs them on the CPU's own instruction set instead.
if numerics.default_mode() == "portable":
    os.environ.update(numerics.pinned_environment())
# Under pytest-xdist (nox -s tests: one worker per core) each worker and what it starts computes on
# one thread, without spinning OpenMP threads that would slow the other workers 5-20x.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The tests never reach the internet: a data set that is missing is "downloaded" from a closed port
# of this machine, which fails at once (tests/unit/test_download.py serves its own files).
os.environ.setdefault("ACDC_BENCH_MIRROR", "http://127.0.0.1:9/")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def one_thread():
    """In-process training on one thread: an OpenMP pool of 2 on a busy 2-core machine crawls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The small data sets in their real formats, for every test (tests/data_files.py).
from data_files import cifar_root, imagenet_root, sample_images, small_fashion_root  # noqa: E402, F401
