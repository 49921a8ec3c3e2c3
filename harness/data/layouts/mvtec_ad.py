"""MVTec AD layout (spec §4.1), also used by the embedded default dataset and by user data.

``<cls>/train/good/NNN.png``, ``<cls>/test/<good|defect>/NNN.png`` and one binary mask per
anomalous test image at ``<cls>/ground_truth/<defect>/NNN_mask.png``. Normal images have no mask
file. An optional ``<cls>/validation/good/`` folder is read as the validation split, never merged
into training.
"""

from __future__ import annotations

from pathlib import Path

from harness.data.cards import GOOD
from harness.data.layouts import LayoutScan, by_stem, image_files, sample_id, scan_each_class, subfolders
from harness.data.sample import ANOMALOUS, NORMAL, Sample

ROOT_EXTRAS: frozenset[str] = frozenset()
MASK_SUFFIX = "_mask"


def scan(root: Path, dataset: str, classes: list[str]) -> LayoutScan:
    return scan_each_class(root, dataset, classes, scan_class)


def scan_class(root: Path, dataset: str, cls: str, class_dir: Path, result: LayoutScan) -> None:
    """Append the samples and problems of one class folder to result."""
    for split in ("train", "validation"):
        split_dir = class_dir / split
        if not split_dir.is_dir():
            if split == "train":
                result.problem("missing-folder", f"class {cls!r}, split 'train': folder {split_dir} does not exist",
                               split_dir, class_name=cls, split=split)
            continue
        for defect_dir in subfolders(split_dir):
            if defect_dir.name != GOOD:
                result.problem("unexpected-folder",
                               f"class {cls!r}, split {split!r}: {defect_dir} is not 'good'; this split holds normal images only",
                               defect_dir, class_name=cls, split=split, defect_type=defect_dir.name)
                continue
            result.folders[(cls, split, GOOD)] = defect_dir
            for image in image_files(defect_dir):
                result.samples.append(Sample(dataset, cls, split, GOOD, sample_id(root, image), NORMAL, {"rgb": image}))

    test_dir, gt_dir = class_dir / "test", class_dir / "ground_truth"
    if not test_dir.is_dir():
        result.problem("missing-folder", f"class {cls!r}, split 'test': folder {test_dir} does not exist",
                       test_dir, class_name=cls, split="test")
    test_defects = {d.name for d in subfolders(test_dir)}
    for defect_dir in subfolders(test_dir):
        defect = defect_dir.name
        result.folders[(cls, "test", defect)] = defect_dir
        masks = by_stem(image_files(gt_dir / defect), strip=MASK_SUFFIX) if defect != GOOD else {}
        for image in image_files(defect_dir):
            if defect == GOOD:
                result.samples.append(Sample(dataset, cls, "test", GOOD, sample_id(root, image), NORMAL, {"rgb": image}))
                continue
            mask = masks.get(image.stem)
            if mask is None:
                expected = gt_dir / defect / f"{image.stem}{MASK_SUFFIX}.png"
                result.problem("missing-mask", f"class {cls!r}, split 'test', defect {defect!r}: image {image} has no mask (expected {expected})",
                               image, class_name=cls, split="test", defect_type=defect)
            result.samples.append(Sample(dataset, cls, "test", defect, sample_id(root, image), ANOMALOUS,
                                         {"rgb": image}, (mask,) if mask else ()))
    for mask_dir in subfolders(gt_dir):
        images = {p.stem for p in image_files(test_dir / mask_dir.name)} if mask_dir.name in test_defects else set()
        for stem, mask in by_stem(image_files(mask_dir), strip=MASK_SUFFIX).items():
            if stem not in images:
                result.problem("orphan-mask",
                               f"class {cls!r}, defect {mask_dir.name!r}: mask {mask} has no image {test_dir / mask_dir.name / stem}.*",
                               mask, class_name=cls, split="test", defect_type=mask_dir.name)
