"""Real-IAD layout (Wang et al., CVPR 2024): per-class JSON split files over five camera views.

Facts from the official repository (Tencent/AnomalyDetection_Real-IAD, its README and
``datasets/explicit_dataset.py``) and the loaders of Dinomaly and anomalib:

- images under ``<root>/realiad_1024/<cls>/OK/S<nnnn>/<cls>_<nnnn>_OK_C<v>_<time>.jpg`` and
  ``.../NG/<code>/S<nnnn>/<cls>_<nnnn>_NG_<code>_C<v>_<time>.jpg`` with a png mask beside each
  anomalous view (``realiad_256``, ``realiad_512``, ``realiad_raw`` hold other resolutions);
- one JSON file per class, ``<json_dir>/<cls>.json``: ``{"meta": {"prefix", "normal_class"},
  "train": [...], "test": [...]}``, every entry holding exactly ``category``, ``anomaly_class``,
  ``image_path`` and ``mask_path`` (null for normal views); paths are relative to
  ``<image_dir>/<prefix>``; ``normal_class`` is ``OK`` and other classes are two-letter defect codes;
- ``realiad_jsons`` is the multi-view setting the multi-class papers report (all five views as
  separate images); ``realiad_jsons_sv`` (single view) and ``realiad_jsons_fuiad_<ratio>``
  (fully unsupervised: anomalies in the training split) are the other settings. The released zip
  nests them in ``<root>/realiad_jsons/``; the official README draws them beside it: both are read.

Options (``OPTIONS``, recorded with the dataset): ``views`` (a subset of C1..C5, all by default),
``json_dir`` and ``image_dir``. A normal view gets defect type ``good``; an anomalous one keeps its
code. The view, the JSON's anomaly class and the object id (what the official evaluation groups the
five views by) are kept in ``Sample.extra``. Masks are paired through the JSON, checked to share
the image's stem, and read with ``!= 0`` like every mask.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.data.cards import GOOD
from harness.data.layouts import LayoutScan, class_folder, sample_id, subfolders
from harness.data.sample import ANOMALOUS, NORMAL, Sample

VIEWS = ("C1", "C2", "C3", "C4", "C5")
JSON_DIRS = ("realiad_jsons", "realiad_jsons_sv", "realiad_jsons_fuiad_0.0", "realiad_jsons_fuiad_0.1",
             "realiad_jsons_fuiad_0.2", "realiad_jsons_fuiad_0.4")
IMAGE_DIRS = ("realiad_1024", "realiad_512", "realiad_256", "realiad_raw")
OPTIONS = {"views": VIEWS, "json_dir": "realiad_jsons", "image_dir": "realiad_1024"}
ROOT_EXTRAS: frozenset[str] = frozenset(JSON_DIRS + IMAGE_DIRS)
JSON_NEST = "realiad_jsons"  # the released realiad_jsons.zip puts every JSON folder inside this one
ENTRY_KEYS = ("category", "anomaly_class", "image_path", "mask_path")
SPLIT_KEYS = ("train", "test")
_VIEW_TAG = re.compile(r"_(C\d+)_")


def resolve_options(given: dict) -> dict:
    """OPTIONS with the given ones put in, each checked; the error names the option and what it takes."""
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; Real-IAD options are: {', '.join(OPTIONS)}")
    options = {**OPTIONS, **given}
    options["views"] = _views(options["views"])
    for key, allowed in (("json_dir", JSON_DIRS), ("image_dir", IMAGE_DIRS)):
        if options[key] not in allowed:
            raise ValueError(f"option {key!r} is {options[key]!r}; expected one of {', '.join(allowed)}")
    return options


def _views(value) -> tuple[str, ...]:
    listed = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value or ())
    bad = [v for v in listed if v not in VIEWS]
    if bad or not listed:
        shown = ", ".join(map(repr, bad)) if bad else "no view"
        raise ValueError(f"option 'views' has {shown}; expected a non-empty subset of the camera views {', '.join(VIEWS)}")
    return tuple(v for v in VIEWS if v in listed)


@dataclass
class _Reading:
    """What every entry of a scan needs: where the images are, the options, and what was found so far."""

    root: Path
    dataset: str
    options: dict
    image_dir: Path
    result: LayoutScan = field(default_factory=LayoutScan)
    seen: dict[Path, str] = field(default_factory=dict)  # image -> the entry that listed it first


def split_source(index, cls: str, split: str) -> tuple[Path, str] | None:
    """For verify's empty-split problem: the class's JSON split file (read by ``scan``, so among the
    index's aux files) and what it lacks; None when the file is not there."""
    split_file = next((p for p in index.aux_files if p.suffix == ".json" and p.stem == cls), None)
    if split_file is None:
        return None
    views = f" of the views {', '.join(index.options['views'])}" if "views" in index.options else ""
    return split_file, f"the {split!r} list of the split file {split_file} names no image{views}"


def scan(root: Path, dataset: str, classes: list[str], options: dict | None = None) -> LayoutScan:
    options = resolve_options(dict(options or {}))
    reading = _Reading(root, dataset, options, root / options["image_dir"])
    result, image_dir = reading.result, reading.image_dir
    json_dir = _json_folder(root, options["json_dir"], result)
    if not image_dir.is_dir():
        result.problem("missing-folder", f"image folder {image_dir} does not exist (option image_dir {options['image_dir']!r})", image_dir)
    if json_dir is None or not image_dir.is_dir():
        return result
    for cls in classes:
        if class_folder(image_dir, cls, result) is not None:
            _scan_class(reading, cls, json_dir / f"{cls}.json")
    for folder in subfolders(image_dir):
        if folder.name not in classes and not (json_dir / f"{folder.name}.json").is_file():
            result.problem("unknown-folder", f"folder {folder} is neither a chosen class nor named by a {json_dir.name} JSON file; "
                           f"if it is a misnamed class folder, rename it, otherwise move it out of {image_dir}", folder, class_name=folder.name)
    return result


def _json_folder(root: Path, name: str, result: LayoutScan) -> Path | None:
    candidates = (root / JSON_NEST / name, root / name)
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        result.problem("missing-folder", f"JSON folder for option json_dir {name!r} not found: expected {candidates[0]} or {candidates[1]}",
                       candidates[0])
    return folder


def _scan_class(reading: _Reading, cls: str, json_path: Path) -> None:
    document = _read_json(json_path, cls, reading.result)
    if document is None:
        return
    meta = document["meta"]
    for split in SPLIT_KEYS:
        for index, entry in enumerate(document[split]):
            where = f"{json_path} {split}[{index}]"
            problem = _entry_problem(entry, cls)
            if problem:
                reading.result.problem("bad-json", f"{where}: {problem}", json_path, class_name=cls, split=split)
                continue
            _add_entry(reading, split, reading.image_dir / meta["prefix"], entry["anomaly_class"] == meta["normal_class"], entry, where)


def _read_json(path: Path, cls: str, result: LayoutScan) -> dict | None:
    """The parsed split file, or None with the problem recorded: a missing file, bad JSON, a bad top level."""
    if not path.is_file():
        result.problem("missing-json", f"class {cls!r}: split file {path} does not exist", path, class_name=cls)
        return None
    result.aux_files.append(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        result.problem("bad-json", f"class {cls!r}: {path} is not readable JSON: {err}", path, class_name=cls)
        return None
    problem = _top_level_problem(document)
    if problem:
        result.problem("bad-json", f"class {cls!r}: {path}: {problem}", path, class_name=cls)
        return None
    return document


def _top_level_problem(document) -> str:
    if not isinstance(document, dict) or any(k not in document for k in ("meta", *SPLIT_KEYS)):
        return "expected an object with the keys 'meta', 'train' and 'test'"
    meta = document["meta"]
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in ("prefix", "normal_class")):
        return "'meta' must hold the strings 'prefix' and 'normal_class'"
    bad = [k for k in SPLIT_KEYS if not isinstance(document[k], list)]
    return f"{' and '.join(map(repr, bad))} must be a list of entries" if bad else ""


def _entry_problem(entry, cls: str) -> str:
    if not isinstance(entry, dict) or set(entry) != set(ENTRY_KEYS):
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        return f"an entry holds exactly the keys {', '.join(ENTRY_KEYS)}; got {got}"
    if entry["category"] != cls:
        return f"category is {entry['category']!r} in the split file of class {cls!r}"
    if not all(isinstance(entry[k], str) and entry[k] for k in ("anomaly_class", "image_path")):
        return "anomaly_class and image_path must be non-empty strings"
    if entry["mask_path"] is not None and not (isinstance(entry["mask_path"], str) and entry["mask_path"]):
        return f"mask_path must be a path or null, got {entry['mask_path']!r}"
    return ""


def _add_entry(reading: _Reading, split: str, base: Path, normal: bool, entry: dict, where: str) -> None:
    """One listed view as a Sample, when it is a chosen view and its files are there."""
    cls, result = entry["category"], reading.result
    image = base / entry["image_path"]
    defect = GOOD if normal else entry["anomaly_class"]
    at = {"class_name": cls, "split": split, "defect_type": defect}
    view = _VIEW_TAG.search(image.stem)
    if view is None or view.group(1) not in VIEWS:
        result.problem("bad-view", f"{where}: image name {image.name!r} has no camera view tag _C1_ .. _C5_", image, **at)
        return
    if view.group(1) not in reading.options["views"]:
        return
    if image in reading.seen:
        result.problem("bad-json", f"{where}: image {image} is listed twice (first at {reading.seen[image]})", image, **at)
        return
    reading.seen[image] = where
    if not image.is_file():
        result.problem("missing-image", f"{where}: class {cls!r}, split {split!r}: image {image} does not exist", image, **at)
        return
    masks = _masks(base, image, entry, normal, split, where, at, result)
    result.folders.setdefault((cls, split, defect), image.parent.parent)
    extra = {"view": view.group(1), "object_id": image.stem[: view.start()], "anomaly_class": entry["anomaly_class"]}
    result.samples.append(Sample(reading.dataset, cls, split, defect, sample_id(reading.root, image), NORMAL if normal else ANOMALOUS,
                                 {"rgb": image}, masks, extra))


def _masks(base, image, entry, normal, split, where, at, result) -> tuple[Path, ...]:
    """The listed mask of an anomalous view; a test view without one is a missing mask (training
    views of the fully unsupervised settings may come without)."""
    mask_path = entry["mask_path"]
    if normal:
        if mask_path is not None:
            result.problem("bad-json", f"{where}: normal image {image} lists a mask {mask_path!r}; it is ignored",
                           image, severity="warning", **at)
        return ()
    if mask_path is None:
        if split == "test":
            result.problem("missing-mask", f"{where}: anomalous image {image} (anomaly_class {entry['anomaly_class']!r}) lists no mask_path",
                           image, **at)
        return ()
    mask = base / mask_path
    if mask.stem not in (image.stem, f"{image.stem}_mask"):
        result.problem("mask-stem-mismatch", f"{where}: mask {mask} does not share the stem of image {image}", mask, **at)
        return ()
    if not mask.is_file():
        result.problem("missing-mask", f"{where}: mask {mask} of image {image} does not exist", mask, **at)
        return ()
    return (mask,)
