"""A user's own data laid out like MVTec AD; classes are discovered from the folders.

Any folder under the root that holds a ``train/`` or ``test/`` folder is a class. Counts are
reported, never checked, since there is no card to check them against.
"""

from __future__ import annotations

from pathlib import Path

from harness.data.layouts import subfolders
from harness.data.layouts.mvtec_ad import scan  # noqa: F401  (the same folders as MVTec AD)

ROOT_EXTRAS: frozenset[str] = frozenset()


def discover_classes(root: Path) -> list[str]:
    return [d.name for d in subfolders(root) if (d / "train").is_dir() or (d / "test").is_dir()]

