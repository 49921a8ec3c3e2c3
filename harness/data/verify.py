"""Check a dataset root against its card and report every problem, not just the first.

Structure and counts come from registry.scan_dataset (missing or orphan masks, unknown or
misnamed class folders, missing classes, count mismatches, bad VisA CSV rows, a missing LOCO
defects_config.json). With check_pixels every image, mask and point cloud is fully decoded and
sizes are compared: image vs mask, rgb vs xyz; LOCO mask files must hold one non-zero value
that defects_config.json knows. Images are decoded by the readers training uses
(harness.data.images), so 16-bit files are judged as training will see them.

``check_before_training`` is the cheap subset that `harness train` and `harness sweep` run
before any feature is extracted: no empty split, every image and mask header readable (PNG
chunk CRCs, a JPEG's end marker), masks and point clouds of their image's size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from harness.data.cards import Counts, DatasetCard
from harness.data.images import ImageReadError, check_image, naming_the_file, read_rgb, read_values
from harness.data.layouts import Problem, reader
from harness.data.registry import DatasetError, DatasetIndex, count_samples, fingerprint_files, load_dataset, scan_dataset
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


def verify_dataset(name: str, root: str | Path, *, classes=None, expected=None, options=None, check_pixels: bool = True,
                   on_progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Verify a root read as dataset ``name`` with the layout's ``options`` (Real-IAD: views, json_dir,
    image_dir); on_progress(done, total) follows the pixel decoding."""
    scan = scan_dataset(name, root, classes=classes, expected=expected, options=options)
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


def _decode(modality: str, path: Path) -> np.ndarray:
    if modality == "rgb":
        return read_rgb(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        with naming_the_file(path):
            return np.asarray(tifffile.imread(path))
    return read_values(path)


def _at(sample: Sample) -> dict:
    return {"class_name": sample.class_name, "split": sample.split, "defect_type": sample.defect_type}


def _pixel_problems(sample: Sample, loco_values: set[int] | None) -> list[Problem]:
    at = _at(sample)
    problems, decoded = [], {}
    for modality, path in (*sample.images.items(), *(("mask", m) for m in sample.masks)):
        try:
            decoded[path] = _decode(modality, path)
        except ImageReadError as err:
            problems.append(Problem("unreadable-file", str(err), str(path), **at))
    rgb = decoded.get(sample.images["rgb"])
    if rgb is None:
        return problems
    size = rgb.shape[:2]
    problems += _size_problems(sample, {path: array.shape for path, array in decoded.items()}, size)
    xyz_path = sample.images.get("xyz")
    if xyz_path in decoded:
        xyz = decoded[xyz_path]
        if xyz.ndim != 3 or xyz.shape[2] != 3 or not np.issubdtype(xyz.dtype, np.floating):
            problems.append(Problem("bad-xyz", f"{xyz_path}: expected an H x W x 3 float point cloud, got {xyz.dtype} {xyz.shape}", str(xyz_path), **at))
    for mask_path in sample.masks:
        mask = decoded.get(mask_path)
        if mask is None:
            continue
        if loco_values is not None:
            values = set(np.unique(mask).tolist()) - {0}
            if len(values) != 1 or not values <= loco_values:
                problems.append(Problem("bad-mask-values", f"{mask_path}: non-zero values {sorted(values)}; a LOCO mask file holds exactly one "
                                        f"defect value listed in defects_config.json ({sorted(loco_values)})", str(mask_path), **at))
    return problems


def _size_problems(sample: Sample, shapes: dict[Path, tuple], size: tuple[int, int]) -> list[Problem]:
    """Masks and a point cloud whose height and width differ from the image's (``shapes`` by path)."""
    problems = []
    xyz_path = sample.images.get("xyz")
    named = [(m, "mask") for m in sample.masks] + ([(xyz_path, "point cloud")] if xyz_path is not None else [])
    for path, what in named:
        shape = shapes.get(path)
        if shape is not None and tuple(shape[:2]) != tuple(size):
            problems.append(Problem("size-mismatch", f"{path}: {shape[1]}x{shape[0]} {what} for a {size[1]}x{size[0]} image {sample.images['rgb']}",
                                    str(path), **_at(sample)))
    return problems


# ---------------------------------------------------------------- before training


def check_trial_dataset(name: str, root, *, classes=None, expected=None, options=None) -> DatasetIndex:
    """Index the dataset (structure and counts: load_dataset) and run check_before_training on it."""
    index = load_dataset(name, root, classes=classes, expected=expected, options=options)
    check_before_training(index)
    return index


def check_before_training(index: DatasetIndex) -> None:
    """Raise DatasetError naming every file at fault, found by the checks cheap enough to run before every training."""
    problems = training_problems(index)
    if problems:
        lines = "\n".join(f"  - {p.message}" for p in problems)
        raise DatasetError(f"dataset {index.name!r} at {index.root}: {len(problems)} problem(s) found before training:\n{lines}\n"
                           f"Run `harness datasets verify {index.root} --dataset {index.name}` for the full report.", problems)


def training_problems(index: DatasetIndex) -> list[Problem]:
    """Empty splits, unreadable or damaged headers, masks and point clouds of the wrong size."""
    problems = _empty_split_problems(index)
    for sample in index.samples:
        problems += _header_problems(sample)
    return problems


def _empty_split_problems(index: DatasetIndex) -> list[Problem]:
    if not index.samples:
        return [Problem("empty-split", f"{index.root}: no images found for dataset {index.name!r}", str(index.root))]
    present = {(s.class_name, s.split) for s in index.samples}
    problems = []
    for cls in index.classes:
        for split in ("train", "test"):
            if (cls, split) not in present:
                where, expected = _split_source(index, cls, split)
                problems.append(Problem("empty-split", f"class {cls!r} has no {split} images ({expected})", str(where),
                                        class_name=cls, split=split))
    return problems


def _split_source(index: DatasetIndex, cls: str, split: str) -> tuple[Path, str]:
    """Where a split's images are listed, and what was expected there: the layout says so when it
    lists splits in files (``split_source``: Real-IAD's per-class JSON); the others list folders."""
    listed = getattr(reader(index.card.layout), "split_source", None)
    found = listed(index, cls, split) if listed is not None else None
    if found is not None:
        return found
    folder = index.root / cls / split
    return folder, f"expected images under {folder}"


def _header_problems(sample: Sample) -> list[Problem]:
    shapes, problems = {}, []
    for path in (*sample.images.values(), *sample.masks):
        try:
            shapes[path] = _header_shape(path)
        except ImageReadError as err:
            problems.append(Problem("unreadable-file", str(err), str(path), **_at(sample)))
    size = shapes.get(sample.images["rgb"])
    return problems + (_size_problems(sample, shapes, size) if size is not None else [])


def _header_shape(path: Path) -> tuple[int, ...]:
    if path.suffix.lower() in (".tif", ".tiff"):
        with naming_the_file(path), tifffile.TiffFile(path) as tiff:
            return tuple(tiff.pages[0].shape)
    return check_image(path)
