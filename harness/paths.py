"""Where the harness keeps generated data and caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """HARNESS_CACHE if set (put it on shared storage for clusters), else ~/.cache/harness."""
    env = os.environ.get("HARNESS_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "harness"
    return root.expanduser().resolve()
