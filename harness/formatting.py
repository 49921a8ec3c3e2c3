"""Config values as short text, the same in sweep labels and leaderboard row names.

Below the sweep and the report, which both print configurations this way.
"""

from __future__ import annotations

from typing import Any


def format_value(value: Any) -> str:
    """4 significant digits for floats, lists comma-joined, dicts as {key:value,...}."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(item) for item in value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return str(value)
