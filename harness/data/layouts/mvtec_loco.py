"""MVTec LOCO AD layout (spec §4.3): every mask file of an image is its own channel.

``<cls>/{train,validation}/good/*.png``, ``<cls>/test/{good,logical_anomalies,structural_anomalies}/NNN.png``
and a folder per anomalous image ``<cls>/ground_truth/<type>/NNN/{000,001,...}.png`` with one
defect per file. ``<cls>/defects_config.json`` (defect_name, pixel_value, saturation_threshold,
relative_saturation) is kept for sPRO, after the checks of the official evaluation
(``harness.metrics.defects.defects_config_problems``): a bad config is a problem of the scan, so
loading the dataset fails before any training. The validation split stays its own split.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.data.cards import GOOD
from harness.data.layouts import LayoutScan, image_files, sample_id, scan_each_class, subfolders
from harness.data.sample import ANOMALOUS, NORMAL, Sample
from harness.metrics.defects import CONFIG_KEYS, defects_config_problems

ROOT_EXTRAS: frozenset[str] = frozenset()
DEFECTS_CONFIG = "defects_config.json"


def scan(root: Path, dataset: str, classes: list[str]) -> LayoutScan:
    return scan_each_class(root, dataset, classes, _scan_class)


def _scan_class(root: Path, dataset: str, cls: str, class_dir: Path, result: LayoutScan) -> None:
    _read_defects_config(class_dir, cls, result)
    for split in ("train", "validation"):
        folder = class_dir / split / GOOD
        if not folder.is_dir():
            result.problem("missing-folder", f"class {cls!r}, split {split!r}: folder {folder} does not exist",
                           folder, class_name=cls, split=split)
        result.folders[(cls, split, GOOD)] = folder
        for image in image_files(folder):
            result.samples.append(Sample(dataset, cls, split, GOOD, sample_id(root, image), NORMAL, {"rgb": image}))
    _scan_test(root, dataset, cls, result)


def _scan_test(root: Path, dataset: str, cls: str, result: LayoutScan) -> None:
    test_dir, gt_dir = root / cls / "test", root / cls / "ground_truth"
    if not test_dir.is_dir():
        result.problem("missing-folder", f"class {cls!r}, split 'test': folder {test_dir} does not exist",
                       test_dir, class_name=cls, split="test")
    for defect_dir in subfolders(test_dir):
        defect = defect_dir.name
        result.folders[(cls, "test", defect)] = defect_dir
        at = {"class_name": cls, "split": "test", "defect_type": defect}
        for image in image_files(defect_dir):
            if defect == GOOD:
                result.samples.append(Sample(dataset, cls, "test", GOOD, sample_id(root, image), NORMAL, {"rgb": image}))
                continue
            channels = tuple(image_files(gt_dir / defect / image.stem))
            if not channels:
                result.problem("missing-mask", f"class {cls!r}, split 'test', defect {defect!r}: image {image} has no mask files in {gt_dir / defect / image.stem}",
                               image, **at)
            result.samples.append(Sample(dataset, cls, "test", defect, sample_id(root, image), ANOMALOUS, {"rgb": image}, channels))
    for type_dir in subfolders(gt_dir):
        stems = {p.stem for p in image_files(test_dir / type_dir.name)}
        for mask_folder in subfolders(type_dir):
            if mask_folder.name not in stems:
                result.problem("orphan-mask", f"class {cls!r}, defect {type_dir.name!r}: mask folder {mask_folder} has no image {test_dir / type_dir.name / mask_folder.name}.png",
                               mask_folder, class_name=cls, split="test", defect_type=type_dir.name)


def _read_defects_config(class_dir: Path, cls: str, result: LayoutScan) -> None:
    path = class_dir / DEFECTS_CONFIG
    if not path.is_file():
        result.problem("missing-defects-config", f"class {cls!r}: {path} does not exist; sPRO needs it", path, class_name=cls)
        return
    result.aux_files.append(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        result.problem("bad-defects-config", f"class {cls!r}: {path} is not readable JSON: {err}", path, class_name=cls)
        return
    problems = defects_config_problems(entries, str(path))
    for message in problems:
        result.problem("bad-defects-config", f"class {cls!r}: {message}", path, class_name=cls)
    if problems:
        return
    result.defects_config[cls] = [{k: e[k] for k in CONFIG_KEYS} for e in entries]
