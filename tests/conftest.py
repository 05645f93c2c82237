"""Test-wide settings: nothing reaches the network, and caches stay inside the test's tmp dirs."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("ZOO_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "zoo-test"))

import warnings  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore", message=".*LeafSpec.*")


@pytest.fixture
def single_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits on a shared 2-core machine.
    Test modules opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
