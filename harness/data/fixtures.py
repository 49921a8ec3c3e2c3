"""Tiny datasets written in each official on-disk layout, for tests and for seeing a layout.

Real PNG/JPG/TIFF files, a few per folder, 32 x 32 pixels by default: MVTec AD with a grayscale
class (grid), VisA with non-binary masks and split_csv/1cls.csv, MVTec LOCO with a folder of
one-defect mask files per image plus defects_config.json and a validation split, MVTec 3D-AD with
float32 H x W x 3 xyz tiffs holding zero (invalid) points and a validation split.
Every anomalous image's defect square has side ``4 + 2 * index`` so a test can tell which
mask was paired with which image. Variants plant one problem: ``missing_mask``,
``misnamed_class`` or ``corrupt_image``; ``FixtureInfo.broken`` is the file or folder at fault.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
import yaml
from PIL import Image

from harness.data.cards import GOOD, Counts, DatasetCard

LAYOUT_DATASET = {"mvtec_ad": "mvtec_ad", "visa": "visa", "mvtec_loco": "mvtec_loco", "mvtec_3d": "mvtec_3d", "generic": "generic"}
VARIANTS = ("missing_mask", "misnamed_class", "corrupt_image")

# class -> (grayscale?, defect types) per layout; counts per split are in _PLAN.
DEFAULT_CLASSES = {
    "mvtec_ad": {"bottle": (False, ("broken_large", "contamination")), "grid": (True, ("bent",))},
    "generic": {"widget": (False, ("scratch",)), "gear": (True, ("dent", "missing_tooth"))},
    "visa": {"candle": (False, ("anomaly",)), "pcb1": (False, ("anomaly",))},
    "mvtec_loco": {"breakfast_box": (False, ("logical_anomalies", "structural_anomalies")),
                   "pushpins": (False, ("logical_anomalies", "structural_anomalies"))},
    "mvtec_3d": {"bagel": (False, ("crack", "hole")), "foam": (False, ("color",))},
}
_PLAN = {"train": 3, "validation": 2, "test_good": 2, "per_defect": 2}


@dataclass
class FixtureInfo:
    """Where a fixture was written, what a loader must find there, and the planted problem."""

    layout: str
    dataset: str
    root: Path
    counts: Counts
    variant: str | None = None
    broken: Path | None = None
    defects_config: dict[str, list[dict]] = field(default_factory=dict)

    def card(self) -> DatasetCard:
        """The dataset's card with this fixture's classes and counts."""
        from harness.data.registry import get_card

        if self.dataset == "generic":
            return DatasetCard(name="generic", title="fixture", layout="generic", modalities=("rgb",), classes={}).with_counts(self.counts)
        return get_card(self.dataset).with_counts(self.counts)

    def write_card(self, path: str | Path) -> Path:
        """Write the expected-counts card as YAML (for ``harness datasets verify --expect``)."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.card().to_mapping(), sort_keys=False), encoding="utf-8")
        return path


def write_fixture(layout: str, root: str | Path, *, classes: dict | None = None, seed: int = 0,
                  size: int = 32, variant: str | None = None) -> FixtureInfo:
    """Write a tiny dataset in ``layout`` under root (created; must be empty or absent)."""
    if layout not in DEFAULT_CLASSES:
        raise ValueError(f"no fixture for layout {layout!r}; layouts: {', '.join(DEFAULT_CLASSES)}")
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown fixture variant {variant!r}; variants: {', '.join(VARIANTS)}")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"fixture root {root} is not empty; pick a new folder")
    root.mkdir(parents=True, exist_ok=True)
    painter = _Painter(np.random.default_rng(seed), size)
    info = FixtureInfo(layout, LAYOUT_DATASET[layout], root, {})
    writer = {"mvtec_ad": _write_mvtec_ad, "generic": _write_mvtec_ad, "visa": _write_visa,
              "mvtec_loco": _write_loco, "mvtec_3d": _write_3d}[layout]
    anomalous_images, masks = writer(root, classes or DEFAULT_CLASSES[layout], painter, info)
    if variant:
        info.variant = variant
        info.broken = _plant(variant, layout, root, anomalous_images[0], masks[0], next(iter(info.counts)))
    return info


class _Painter:
    """Draws small images: a textured background per class and a bright defect square."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng, self.size = rng, size

    def image(self, gray: bool, defect_side: int = 0) -> np.ndarray:
        base = self.rng.integers(40, 120, size=(self.size, self.size, 1 if gray else 3))
        img = (base + self.rng.integers(0, 20, size=base.shape)).astype(np.uint8)
        if defect_side:
            img[2:2 + defect_side, 2:2 + defect_side] = 250
        return img[..., 0] if gray else img

    def mask(self, side: int, value: int = 255) -> np.ndarray:
        mask = np.zeros((self.size, self.size), dtype=np.uint8)
        mask[2:2 + side, 2:2 + side] = value
        return mask


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _normal_counts(validation: bool) -> dict[str, dict[str, int]]:
    counts = {"train": {GOOD: _PLAN["train"]}, "test": {GOOD: _PLAN["test_good"]}}
    if validation:
        counts["validation"] = {GOOD: _PLAN["validation"]}
    return counts


def _side(index: int) -> int:
    return 4 + 2 * index


def _write_mvtec_ad(root, classes, painter, info):
    anomalous, masks = [], []
    for cls, (gray, defects) in classes.items():
        counts = info.counts.setdefault(cls, _normal_counts(validation=False))
        for i in range(_PLAN["train"]):
            _save(root / cls / "train" / GOOD / f"{i:03d}.png", painter.image(gray))
        for i in range(_PLAN["test_good"]):
            _save(root / cls / "test" / GOOD / f"{i:03d}.png", painter.image(gray))
        for defect in defects:
            counts["test"][defect] = _PLAN["per_defect"]
            for i in range(_PLAN["per_defect"]):
                anomalous.append(_save(root / cls / "test" / defect / f"{i:03d}.png", painter.image(gray, _side(i))))
                masks.append(_save(root / cls / "ground_truth" / defect / f"{i:03d}_mask.png", painter.mask(_side(i))))
    return anomalous, masks


def _write_visa(root, classes, painter, info):
    rows, anomalous, masks = [], [], []
    n_normal = _PLAN["train"] + _PLAN["test_good"]
    for cls in classes:
        info.counts[cls] = {"train": {GOOD: _PLAN["train"]}, "test": {GOOD: _PLAN["test_good"], "anomaly": _PLAN["per_defect"]}}
        for i in range(n_normal):
            image = _save(root / cls / "Data" / "Images" / "Normal" / f"{i:04d}.JPG", painter.image(False))
            rows.append([cls, "train" if i < _PLAN["train"] else "test", "normal", image.relative_to(root).as_posix(), ""])
        for i in range(_PLAN["per_defect"]):
            image = _save(root / cls / "Data" / "Images" / "Anomaly" / f"{i:03d}.JPG", painter.image(False, _side(i)))
            # VisA masks are not binary: each region carries a small non-zero id
            mask = _save(root / cls / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png", painter.mask(_side(i), value=i + 1))
            rows.append([cls, "test", "anomaly", image.relative_to(root).as_posix(), mask.relative_to(root).as_posix()])
            anomalous.append(image)
            masks.append(mask)
        (root / cls / "image_anno.csv").write_text("image,label,mask\n", encoding="utf-8")
    (root / "split_csv").mkdir()
    with (root / "split_csv" / "1cls.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return anomalous, masks


def _write_loco(root, classes, painter, info):
    anomalous, masks = [], []
    for cls, (_, defects) in classes.items():
        counts = info.counts.setdefault(cls, _normal_counts(validation=True))
        for split, n in (("train", _PLAN["train"]), ("validation", _PLAN["validation"]), ("test", _PLAN["test_good"])):
            for i in range(n):
                _save(root / cls / split / GOOD / f"{i:03d}.png", painter.image(False))
        config = []
        for d_index, defect in enumerate(defects):
            counts["test"][defect] = _PLAN["per_defect"]
            for i in range(_PLAN["per_defect"]):
                anomalous.append(_save(root / cls / "test" / defect / f"{i:03d}.png", painter.image(False, _side(i))))
                # image i has i + 1 defects, one mask file each, with that defect's pixel value
                for channel in range(i + 1):
                    value = 200 + 10 * d_index + channel
                    path = _save(root / cls / "ground_truth" / defect / f"{i:03d}" / f"{channel:03d}.png", painter.mask(_side(i) + channel, value))
                    if channel == 0:
                        masks.append(path.parent)
            for channel in range(_PLAN["per_defect"]):
                config.append({"defect_name": f"{defect}_{channel}", "pixel_value": 200 + 10 * d_index + channel,
                               "saturation_threshold": 0.5 if channel == 0 else 20, "relative_saturation": channel == 0})
        (root / cls / "defects_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        info.defects_config[cls] = config
    return anomalous, masks


def _write_3d(root, classes, painter, info):
    anomalous, masks = [], []
    for cls, (_, defects) in classes.items():
        counts = info.counts.setdefault(cls, _normal_counts(validation=True))
        plan = [("train", GOOD, _PLAN["train"]), ("validation", GOOD, _PLAN["validation"]), ("test", GOOD, _PLAN["test_good"])]
        plan += [("test", d, _PLAN["per_defect"]) for d in defects]
        for split, defect, n in plan:
            if defect != GOOD:
                counts[split][defect] = n
            for i in range(n):
                side = _side(i) if defect != GOOD else 0
                folder = root / cls / split / defect
                rgb = _save(folder / "rgb" / f"{i:03d}.png", painter.image(False, side))
                _write_xyz(folder / "xyz" / f"{i:03d}.tiff", painter)
                if split == "test":
                    gt = _save(folder / "gt" / f"{i:03d}.png", painter.mask(side) if side else painter.mask(0))
                    if defect != GOOD:
                        anomalous.append(rgb)
                        masks.append(gt)
    return anomalous, masks


def _write_xyz(path: Path, painter: _Painter) -> None:
    h = w = painter.size
    ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    z = 0.5 + 0.05 * painter.rng.standard_normal((h, w))
    xyz = np.stack([xs, ys, z], axis=2).astype(np.float32)
    xyz[:, :3] = 0  # invalid points at the border, as the sensor leaves them
    path.parent.mkdir(parents=True, exist_ok=True)
    # three samples per pixel in one page, the way the official xyz tiffs read back as H x W x 3
    tifffile.imwrite(path, xyz, photometric="rgb", planarconfig="contig")


def _plant(variant: str, layout: str, root: Path, image: Path, mask: Path, first_class: str) -> Path:
    if variant == "missing_mask":
        if mask.is_dir():
            shutil.rmtree(mask)
        else:
            mask.unlink()
        return mask if layout == "visa" else image
    if variant == "corrupt_image":
        data = image.read_bytes()
        image.write_bytes(data[: max(16, len(data) // 3)] + b"\x00garbage" * 4)
        return image
    misnamed = root / (first_class.capitalize() + "_")
    (root / first_class).rename(misnamed)
    return misnamed


# Real-IAD: per class, objects of (split, anomaly_class); each object photographed in the five views.
REAL_IAD_OBJECTS = (("train", "OK"), ("train", "OK"), ("test", "OK"), ("test", "AK"), ("test", "ZW"))
REAL_IAD_CLASSES = ("audiojack", "toy_brick")


def write_real_iad_fixture(root: str | Path, *, classes: tuple[str, ...] = REAL_IAD_CLASSES, seed: int = 0,
                           size: int = 32) -> FixtureInfo:
    """A tiny Real-IAD root in the official layout (harness.data.layouts.real_iad): jpg views under
    ``realiad_1024/<cls>/{OK,NG/<code>}/S<nnnn>/``, a png mask beside each anomalous view, and the
    split files ``realiad_jsons/realiad_jsons/<cls>.json`` (all views) and
    ``realiad_jsons/realiad_jsons_sv/<cls>.json`` (view C1 only). ``counts`` are for all five views.
    Object n of a class has defect squares of side ``4 + 2 * n`` in each anomalous view."""
    from harness.data.layouts.real_iad import VIEWS

    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"fixture root {root} is not empty; pick a new folder")
    painter = _Painter(np.random.default_rng(seed), size)
    info = FixtureInfo("real_iad", "real_iad", root, {})
    for cls in classes:
        entries = {"train": [], "test": []}
        for number, (split, code) in enumerate(REAL_IAD_OBJECTS, start=1):
            defect = GOOD if code == "OK" else code
            per_split = info.counts.setdefault(cls, {}).setdefault(split, {})
            per_split[defect] = per_split.get(defect, 0) + len(VIEWS)
            entries[split] += [_real_iad_view(root / "realiad_1024" / cls, cls, number, code, view, painter) for view in VIEWS]
        meta = {"prefix": cls, "normal_class": "OK"}
        for folder, views in (("realiad_jsons", VIEWS), ("realiad_jsons_sv", ("C1",))):
            chosen = {split: [e for e in listed if any(f"_{v}_" in e["image_path"] for v in views)] for split, listed in entries.items()}
            path = root / "realiad_jsons" / folder / f"{cls}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"meta": meta, **chosen}, indent=1), encoding="utf-8")
    return info


def _real_iad_view(class_dir: Path, cls: str, number: int, code: str, view: str, painter: _Painter) -> dict:
    """Write one view (and its mask when anomalous); return its JSON entry."""
    status = "OK" if code == "OK" else f"NG_{code}"
    folder = Path(status.replace("_", "/")) / f"S{number:04d}"
    stem = f"{cls}_{number:04d}_{status}_{view}_2023092209{number:02d}{view[1:]:0>2}"  # <object>_C<v>_<timestamp>
    side = 0 if code == "OK" else _side(number)
    _save(class_dir / folder / f"{stem}.jpg", painter.image(False, side))
    mask_path = None
    if side:
        mask_path = (folder / f"{stem}.png").as_posix()
        _save(class_dir / mask_path, painter.mask(side))
    return {"category": cls, "anomaly_class": code, "image_path": (folder / f"{stem}.jpg").as_posix(), "mask_path": mask_path}
