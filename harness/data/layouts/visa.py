"""VisA through ``split_csv/1cls.csv`` (spec §4.2), the split every multi-class paper uses.

Header ``object,split,label,image,mask``; ``split`` is train/test, ``label`` normal/anomaly,
``image`` and ``mask`` are relative to the root and ``mask`` is empty for normal rows. Images are
``.JPG`` and masks ``.png`` with the same stem; masks are not binary (binarise with != 0, done by
harness.data.images). Anomalous images get the defect type ``anomaly`` (1cls.csv names no finer type).
"""

from __future__ import annotations

import csv
from pathlib import Path

from harness.data.cards import GOOD
from harness.data.layouts import LayoutScan, sample_id
from harness.data.sample import ANOMALOUS, NORMAL, Sample

ROOT_EXTRAS = frozenset({"split_csv"})
SPLIT_CSV = Path("split_csv") / "1cls.csv"
HEADER = ("object", "split", "label", "image", "mask")
ANOMALY = "anomaly"


def scan(root: Path, dataset: str, classes: list[str]) -> LayoutScan:
    result = LayoutScan()
    csv_path = root / SPLIT_CSV
    if not csv_path.is_file():
        result.problem("missing-split-csv", f"split file {csv_path} does not exist; VisA is read through split_csv/1cls.csv", csv_path)
        return result
    result.aux_files.append(csv_path)
    wanted = set(classes)
    seen_classes: set[str] = set()
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        header = tuple(h.strip() for h in next(rows, ()))
        if header != HEADER:
            result.problem("bad-csv", f"{csv_path} line 1: header is {','.join(header)!r}, expected {','.join(HEADER)!r}", csv_path)
            return result
        for line, row in enumerate(rows, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            where = f"{csv_path} line {line}"
            if len(row) != len(HEADER):
                result.problem("bad-csv", f"{where}: {len(row)} fields, expected {len(HEADER)} ({','.join(HEADER)})", csv_path)
                continue
            cls, split, label, image_rel, mask_rel = (cell.strip() for cell in row)
            if cls not in wanted:
                continue
            seen_classes.add(cls)
            if split not in ("train", "test") or label not in ("normal", ANOMALY):
                result.problem("bad-csv", f"{where}: split {split!r} / label {label!r}; expected train|test and normal|anomaly",
                               csv_path, class_name=cls)
                continue
            _add_row(root, dataset, result, where, cls, split, label, image_rel, mask_rel)
    for cls in classes:
        if cls not in seen_classes:
            result.problem("missing-class", f"class {cls!r}: no rows in {csv_path}", csv_path, class_name=cls)
        elif not (root / cls).is_dir():
            result.problem("missing-class", f"class {cls!r}: folder {root / cls} does not exist", root / cls, class_name=cls)
    return result


def _add_row(root, dataset, result, where, cls, split, label, image_rel, mask_rel) -> None:
    defect = GOOD if label == "normal" else ANOMALY
    at = {"class_name": cls, "split": split, "defect_type": defect}
    image = root / image_rel
    if not image_rel or not image.is_file():
        result.problem("missing-image", f"{where}: class {cls!r}, split {split!r}: image {image} does not exist", image, **at)
        return
    masks: tuple[Path, ...] = ()
    if defect == GOOD:
        if mask_rel:
            result.problem("bad-csv", f"{where}: normal image {image} lists a mask {mask_rel!r}", image, **at)
    elif not mask_rel:
        result.problem("missing-mask", f"{where}: class {cls!r}, split {split!r}: anomalous image {image} has no mask in the CSV", image, **at)
    else:
        mask = root / mask_rel
        if Path(mask_rel).stem != image.stem:
            result.problem("mask-stem-mismatch", f"{where}: mask {mask} does not share the stem of image {image}", mask, **at)
        elif not mask.is_file():
            result.problem("missing-mask", f"{where}: class {cls!r}, split {split!r}: mask {mask} does not exist (image {image})", mask, **at)
        else:
            masks = (mask,)
    result.folders.setdefault((cls, split, defect), image.parent)
    result.samples.append(Sample(dataset, cls, split, defect, sample_id(root, image),
                                 NORMAL if defect == GOOD else ANOMALOUS, {"rgb": image}, masks))
