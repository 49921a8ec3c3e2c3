"""Check a dataset root against its card and report every problem, not just the first.

Structure and counts come from registry.scan_dataset (missing or orphan masks, unknown or
misnamed class folders, missing classes, count mismatches, bad VisA CSV rows, a missing LOCO
defects_config.json). With check_pixels every image, mask and point cloud is fully decoded and
sizes are compared: image vs mask, rgb vs xyz; LOCO mask files must hold one non-zero value
that defects_config.json knows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from harness.data.cards import Counts, DatasetCard
from harness.data.layouts import Problem
from harness.data.registry import count_samples, fingerprint_files, scan_dataset
from harness.data.sample import Sample


@dataclass
class VerifyReport:
    """Counts found per class/split/defect and every problem, errors and warnings apart."""

    card: DatasetCard
    root: Path
    counts: Counts
    problems: list[Problem] = field(default_factory=list)
    files_decoded: int = 0
    fingerprint: str = ""

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


def verify_dataset(name: str, root: str | Path, *, classes=None, expected=None, check_pixels: bool = True,
                   on_progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Verify a root read as dataset ``name``; on_progress(done, total) follows the pixel decoding."""
    scan = scan_dataset(name, root, classes=classes, expected=expected)
    samples = scan.layout.samples
    report = VerifyReport(scan.card, scan.root, count_samples(samples), list(scan.problems))
    if check_pixels:
        known_values = {cls: {int(e["pixel_value"]) for e in entries} for cls, entries in scan.layout.defects_config.items()}
        for done, sample in enumerate(samples, start=1):
            report.problems += _pixel_problems(sample, known_values.get(sample.class_name))
            report.files_decoded += len(sample.images) + len(sample.masks)
            if on_progress is not None:
                on_progress(done, len(samples))
    files = {p for s in samples for p in (*s.images.values(), *s.masks)} | set(scan.layout.aux_files)
    report.fingerprint = fingerprint_files(scan.root, files)
    return report


def _decode(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        return np.asarray(tifffile.imread(path))
    with Image.open(path) as img:
        img.load()
        return np.asarray(img)


def _pixel_problems(sample: Sample, loco_values: set[int] | None) -> list[Problem]:
    at = {"class_name": sample.class_name, "split": sample.split, "defect_type": sample.defect_type}
    problems, decoded = [], {}
    for modality, path in (*sample.images.items(), *(("mask", m) for m in sample.masks)):
        try:
            decoded[path] = _decode(path)
        except Exception as err:  # Pillow and tifffile raise many types for a damaged file
            problems.append(Problem("unreadable-file", f"{path}: cannot be decoded ({type(err).__name__}: {err}); re-extract or re-download it",
                                    str(path), **at))
    rgb = decoded.get(sample.images["rgb"])
    if rgb is None:
        return problems
    size = rgb.shape[:2]
    xyz_path = sample.images.get("xyz")
    if xyz_path in decoded:
        xyz = decoded[xyz_path]
        if xyz.ndim != 3 or xyz.shape[2] != 3 or not np.issubdtype(xyz.dtype, np.floating):
            problems.append(Problem("bad-xyz", f"{xyz_path}: expected an H x W x 3 float point cloud, got {xyz.dtype} {xyz.shape}", str(xyz_path), **at))
        elif xyz.shape[:2] != size:
            problems.append(Problem("size-mismatch", f"{xyz_path}: {xyz.shape[1]}x{xyz.shape[0]} point cloud for a {size[1]}x{size[0]} image {sample.images['rgb']}",
                                    str(xyz_path), **at))
    for mask_path in sample.masks:
        mask = decoded.get(mask_path)
        if mask is None:
            continue
        if mask.shape[:2] != size:
            problems.append(Problem("size-mismatch", f"{mask_path}: {mask.shape[1]}x{mask.shape[0]} mask for a {size[1]}x{size[0]} image {sample.images['rgb']}",
                                    str(mask_path), **at))
        if loco_values is not None:
            values = set(np.unique(mask).tolist()) - {0}
            if len(values) != 1 or not values <= loco_values:
                problems.append(Problem("bad-mask-values", f"{mask_path}: non-zero values {sorted(values)}; a LOCO mask file holds exactly one "
                                        f"defect value listed in defects_config.json ({sorted(loco_values)})", str(mask_path), **at))
    return problems
