"""Suite-wide settings: one torch thread (2 shared cores oversubscribe badly) and a private cache."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from harness.data.fixtures import write_fixture

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def private_harness_cache():
    """Nothing a test generates lands in the user's ~/.cache/harness."""
    previous = os.environ.get("HARNESS_CACHE")
    with tempfile.TemporaryDirectory(prefix="harness-test-cache-") as folder:
        os.environ["HARNESS_CACHE"] = folder
        yield folder
    if previous is None:
        os.environ.pop("HARNESS_CACHE", None)
    else:
        os.environ["HARNESS_CACHE"] = previous


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    """A small generic-layout dataset (64 px), written once per test module."""
    return write_fixture("generic", tmp_path_factory.mktemp("generic"), size=64).root
