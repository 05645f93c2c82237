"""Test-wide settings: nothing reaches the network, and caches stay inside the test's tmp dirs."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("ZOO_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "zoo-test"))

import warnings  # noqa: E402

warnings.filterwarnings("ignore", message=".*LeafSpec.*")
