"""Layout readers: one module per on-disk layout, each turning a dataset root into Sample records.

A reader never decides which dataset it is reading (the card names the layout) and never stops
at the first problem: it returns every Sample it could build plus every Problem it found, so that
`harness datasets verify` can list them all. Masks pair with images by file stem, never by
position (../shared/spec/datasets-and-metrics.md, project decisions).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from harness.data.sample import Sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LAYOUTS = ("mvtec_ad", "visa", "mvtec_loco", "mvtec_3d", "real_iad", "generic")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset root, located as precisely as we can."""

    kind: str  # e.g. "missing-mask", "orphan-mask", "missing-class", "unknown-folder", "count-mismatch"
    message: str
    path: str = ""
    class_name: str = ""
    split: str = ""
    defect_type: str = ""
    severity: str = "error"  # error | warning

    def __str__(self) -> str:
        return self.message


@dataclass
class LayoutScan:
    """What a reader found: samples, problems and layout-specific extras."""

    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    defects_config: dict[str, list[dict]] = field(default_factory=dict)  # MVTec LOCO only
    aux_files: list[Path] = field(default_factory=list)  # CSV / JSON files that belong to the dataset
    folders: dict[tuple[str, str, str], Path] = field(default_factory=dict)  # (class, split, defect) -> folder

    def problem(self, kind: str, message: str, path: Path | str = "", **where) -> None:
        self.problems.append(Problem(kind, message, str(path), **where))


def reader(layout: str):
    """The reader module for a layout name; it exposes ``scan(root, dataset, classes) -> LayoutScan``
    and ``ROOT_EXTRAS`` (root folders that are not classes); a layout with options (Real-IAD) also
    ``resolve_options(given) -> dict`` and takes ``scan(..., options=...)``; a layout that lists its
    splits in files (Real-IAD) also ``split_source(index, cls, split)`` for verify's messages."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    return importlib.import_module(f"harness.data.layouts.{layout}")


def class_folder(root: Path, cls: str, result: LayoutScan) -> Path | None:
    """root/cls if it is a folder; otherwise None, with a missing-class problem recorded."""
    folder = root / cls
    if folder.is_dir():
        return folder
    result.problem("missing-class", f"class {cls!r}: folder {folder} does not exist", folder, class_name=cls)
    return None


def scan_each_class(root: Path, dataset: str, classes: list[str], scan_class) -> LayoutScan:
    """Run ``scan_class(root, dataset, cls, class_dir, result)`` on every class folder that exists."""
    result = LayoutScan()
    for cls in classes:
        class_dir = class_folder(root, cls, result)
        if class_dir is not None:
            scan_class(root, dataset, cls, class_dir, result)
    return result


def image_files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files directly inside folder, sorted by name; hidden files skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    )


def subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def sample_id(root: Path, path: Path) -> str:
    """The stable id of a file: its path relative to the dataset root, without extension."""
    return path.relative_to(root).with_suffix("").as_posix()


def by_stem(files: list[Path], strip: str = "") -> dict[str, Path]:
    """Files keyed by stem, with an optional suffix such as ``_mask`` removed from the stem."""
    keyed = {}
    for f in files:
        stem = f.stem[: -len(strip)] if strip and f.stem.endswith(strip) else f.stem
        keyed[stem] = f
    return keyed
