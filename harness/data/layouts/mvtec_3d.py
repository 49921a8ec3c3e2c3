"""MVTec 3D-AD layout (spec §4.4): rgb plus the organised xyz point cloud as a second modality.

``<cls>/{train,validation}/good/{rgb/NNN.png, xyz/NNN.tiff}`` and
``<cls>/test/<good|defect>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}``. xyz is H x W x 3 float32
with zeros at invalid points. Normal test images carry an all-zero gt file; like every normal
image they get no mask channel here (the pixel reader returns zeros). Validation is kept apart.
"""

from __future__ import annotations

from pathlib import Path

from harness.data.cards import GOOD
from harness.data.layouts import LayoutScan, by_stem, image_files, sample_id, scan_each_class, subfolders
from harness.data.sample import ANOMALOUS, NORMAL, Sample

ROOT_EXTRAS: frozenset[str] = frozenset()


def scan(root: Path, dataset: str, classes: list[str]) -> LayoutScan:
    return scan_each_class(root, dataset, classes, _scan_class)


def _scan_class(root: Path, dataset: str, cls: str, class_dir: Path, result: LayoutScan) -> None:
    for split in ("train", "validation", "test"):
        split_dir = class_dir / split
        if not split_dir.is_dir():
            result.problem("missing-folder", f"class {cls!r}, split {split!r}: folder {split_dir} does not exist",
                           split_dir, class_name=cls, split=split)
            continue
        for defect_dir in subfolders(split_dir):
            if split != "test" and defect_dir.name != GOOD:
                result.problem("unexpected-folder", f"class {cls!r}, split {split!r}: {defect_dir} is not 'good'; this split holds normal images only",
                               defect_dir, class_name=cls, split=split, defect_type=defect_dir.name)
                continue
            _scan_scans(root, dataset, cls, split, defect_dir, result)


def _scan_scans(root: Path, dataset: str, cls: str, split: str, folder: Path, result: LayoutScan) -> None:
    defect = folder.name
    result.folders[(cls, split, defect)] = folder / "rgb"
    at = {"class_name": cls, "split": split, "defect_type": defect}
    rgbs = by_stem(image_files(folder / "rgb"))
    xyzs = by_stem(image_files(folder / "xyz", (".tiff", ".tif")))
    gts = by_stem(image_files(folder / "gt"))
    for stem, rgb in rgbs.items():
        xyz = xyzs.get(stem)
        if xyz is None:
            result.problem("missing-xyz", f"class {cls!r}, split {split!r}, defect {defect!r}: image {rgb} has no point cloud {folder / 'xyz' / stem}.tiff",
                           rgb, **at)
        masks: tuple[Path, ...] = ()
        if defect != GOOD:
            if stem in gts:
                masks = (gts[stem],)
            else:
                result.problem("missing-mask", f"class {cls!r}, split {split!r}, defect {defect!r}: image {rgb} has no mask {folder / 'gt' / stem}.png",
                               rgb, **at)
        images = {"rgb": rgb, "xyz": xyz} if xyz is not None else {"rgb": rgb}
        result.samples.append(Sample(dataset, cls, split, defect, sample_id(root, rgb),
                                     NORMAL if defect == GOOD else ANOMALOUS, images, masks))
    for kind, files in (("xyz", xyzs), ("gt", gts)):
        for stem, path in files.items():
            if stem not in rgbs:
                result.problem("orphan-mask" if kind == "gt" else "orphan-xyz",
                               f"class {cls!r}, split {split!r}, defect {defect!r}: {path} has no image {folder / 'rgb' / stem}.png",
                               path, **at)
