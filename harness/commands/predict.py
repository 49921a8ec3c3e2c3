"""Score images with a stored run: its config and final model from the result store, the method
(and, for feature input, its backbone with the same weights) rebuilt, then per-image maps and a
scores CSV written to an output folder.

Images are files or folders (searched recursively; ground_truth, gt and xyz folders are skipped, and
so is a png beside a jpg of the same stem: Real-IAD keeps each view's mask next to it).
Images that are samples of the run's dataset keep their sample ids, classes and labels; the rest
take their class from --class, a folder named after one of the run's classes, or the run's only
class. Images are scored in sample-id order, in the loop's fixed evaluation batches (the run's
batch_size; backbone features in the same batches of 16 as the feature cache), so the run's own
test images give exactly the run's stored scores; another set of images is batched the same way.
A class-normalised method (AnomalyMoE) normalises each class over the images scored together, as
the loop does over the test set.

Examples:
  harness predict --run d54bb43294b71896 --results results ~/new_images/
  harness predict --run d54bb43294b71896 part.png --class coins --maps npy --output scored
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.config import ConfigError

NAME = "predict"
HELP = "score images with a stored run and write anomaly maps, overlays and a scores CSV"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SKIPPED_FOLDERS = ("ground_truth", "gt", "xyz")  # masks and point clouds in the MVTec (3D-AD) layouts
MAP_FORMATS = ("both", "png", "npy")


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--run", required=True, metavar="RUN_ID", help="a complete run of the result store")
    parser.add_argument("--results", default="./results", metavar="DIR", help="the result store (default ./results)")
    parser.add_argument("--output", default=None, metavar="DIR", help="output folder (default ./predict-RUN_ID)")
    parser.add_argument("--class", dest="class_name", default=None, help="the class of images that are not samples of the run's dataset")
    parser.add_argument("--maps", choices=MAP_FORMATS, default="both",
                        help="npy: float16 maps as stored; png: heat map and overlay; both (default)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: the run's own count, which exact scores need)")


@dataclass
class StoredRun:
    """What predict reads of one run: its rows in the store and its checkpoint file."""

    run_id: str
    row: dict
    trial: dict
    method_config: dict
    class_names: list[str]
    checkpoint: Path


def run(args) -> int:
    from rich.console import Console

    from harness.commands.train import torch_threads

    console = Console(stderr=True)
    stored = stored_run(args.results, args.run)
    torch_threads(args.threads or stored.row.get("torch_threads"))  # CPU kernels round differently per thread count
    index = run_dataset(stored)
    samples = image_samples(args.images, stored, index, args.class_name)
    with console.status(f"rebuilding {stored.row['method']} ({stored.row['preset']}) of run {stored.run_id}"):
        scorer = rebuild(stored, index)
    check_image_input(scorer.method, samples, index, stored)
    with console.status(f"scoring {len(samples)} images"):
        scores, maps = scorer.score(samples)
    output = Path(args.output or f"predict-{stored.run_id}")
    written = write_outputs(output, samples, scores, maps, args.maps)
    matched = sum(1 for s in samples if s.dataset == stored.trial["dataset"])
    console.print(
        f"scored {len(samples)} images ({matched} of them samples of the run's dataset) in batches of "
        f"{stored.method_config['batch_size']}; {written} in {output}"
    )
    return 0


# ------------------------------------------------------------------------------ the stored run


def stored_run(results: str, run_id: str) -> StoredRun:
    """The complete run ``run_id`` of the store at ``results``, or one clear error saying what is missing."""
    from harness.results.store import ResultStore

    root = Path(results).expanduser()
    if not (root / "runs").is_dir():
        raise ConfigError(f"--results {results}: not a result store (no runs/ folder); pass the folder a sweep or `harness train --results` wrote")
    store = ResultStore(root)
    rows = [row for row in store.runs().to_pylist() if row["run_id"] == run_id]
    if not rows:
        known = sorted(store.completed_run_ids())
        raise ConfigError(f"--run {run_id}: no such run in {store.root}; complete runs: {', '.join(known[:8]) or '(none)'}"
                          + (" ..." if len(known) > 8 else ""))
    if run_id not in store.completed_run_ids():
        reason = (rows[0].get("failure_reason") or "its files are damaged or out of date").splitlines()[0]
        raise ConfigError(f"--run {run_id}: the run is not complete in {store.root} ({reason})")
    checkpoint = store.checkpoint_path(run_id)
    if not checkpoint.is_file():
        raise ConfigError(
            f"--run {run_id}: no final checkpoint at {checkpoint}; the run was recorded without it "
            "(a sweep with `checkpoints: none`, or a store written before checkpoints were kept): run it again"
        )
    row = rows[0]
    class_names = sorted(set(store.read("sample_scores", [run_id]).column("class_name").to_pylist()))
    return StoredRun(run_id, row, json.loads(row["config_json"]), json.loads(row["method_config_json"]), class_names, checkpoint)


def run_dataset(stored: StoredRun):
    """The run's dataset as the loop indexed it, or None when it cannot be read or has changed since."""
    from harness.data import load_dataset
    from harness.training.trial_config import dataset_arguments

    try:
        index = load_dataset(**dataset_arguments(stored.trial))
    except (ValueError, OSError):  # dataset, card and config errors: the images are scored as new ones
        return None
    return index if index.fingerprint() == stored.row["dataset_fingerprint"] else None


# ---------------------------------------------------------------------------------- the images


def image_files(arguments: list[str]) -> list[tuple[str, Path]]:
    """(name, path) of every image named: a file is its stem, a folder's images ``folder/relative path``."""
    found = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_file():
            found.append((path.stem, path))
        elif path.is_dir():
            for image in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                relative = image.relative_to(path)
                if not image.name.startswith(".") and not set(relative.parts[:-1]) & set(SKIPPED_FOLDERS) and not _mask_beside_jpg(image):
                    found.append(((Path(path.resolve().name) / relative.with_suffix("")).as_posix(), image))
        else:
            raise ConfigError(f"IMAGE {argument}: no such file or folder")
    if not found:
        raise ConfigError(f"IMAGE {' '.join(arguments)}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return found


def _mask_beside_jpg(path: Path) -> bool:
    """A png with a jpg of its stem in the same folder: a Real-IAD mask, not an image to score."""
    return path.suffix.lower() == ".png" and any(path.with_suffix(suffix).is_file() for suffix in (".jpg", ".jpeg", ".JPG"))


def image_samples(arguments: list[str], stored: StoredRun, index, class_name: str | None):
    """One Sample per image, sorted by sample id (the loop's order); every image's header checked first."""
    from harness.data.images import check_image

    if class_name is not None and class_name not in stored.class_names:
        raise ConfigError(f"--class {class_name}: not a class of run {stored.run_id}; its classes: {', '.join(stored.class_names)}")
    known = {s.images["rgb"].resolve(): s for s in index.samples} if index is not None else {}
    samples = []
    for name, path in image_files(arguments):
        check_image(path)
        dataset_sample = known.get(path.resolve())
        samples.append(dataset_sample or new_sample(name, path, stored, class_name))
    samples.sort(key=lambda s: s.sample_id)
    for first, second in zip(samples, samples[1:]):
        if first.sample_id == second.sample_id:
            raise ConfigError(f"IMAGE: {first.images['rgb']} and {second.images['rgb']} both name the image {first.sample_id!r}; rename one")
    return samples


def new_sample(name: str, path: Path, stored: StoredRun, class_name: str | None):
    from harness.data.sample import Sample

    return Sample("predict", image_class(path, stored, class_name), "test", "", name, -1, {"rgb": path})


def image_class(path: Path, stored: StoredRun, class_name: str | None) -> str:
    """--class, else the nearest folder named after a class of the run, else the run's only class."""
    if class_name is not None:
        return class_name
    for folder in reversed(path.resolve().parts[:-1]):
        if folder in stored.class_names:
            return folder
    if len(stored.class_names) == 1:
        return stored.class_names[0]
    raise ConfigError(
        f"IMAGE {path}: its class is not known (no folder on its path is named after one of the run's classes "
        f"{', '.join(stored.class_names)}); pass --class NAME"
    )


# -------------------------------------------------------------------------------- the scoring


@dataclass
class Scorer:
    """The rebuilt method and what its batches are made from (the loop's batch sources)."""

    stored: StoredRun
    method: object
    backbone: object | None
    index: object
    device: object

    def score(self, samples: list) -> tuple[np.ndarray, np.ndarray]:
        """Image scores (N,) float32 and maps (N, eval_size, eval_size) float16, row i for samples[i]."""
        import torch

        from harness.training.context import WorkerContext
        from harness.training.loop import evaluation_batches

        batches = evaluation_batches(len(samples), int(self.stored.method_config["batch_size"]), WorkerContext(device=self.device))
        predicted = []
        for rows, batch in self.batch_source(samples).batches("test", batches, self.device):
            with torch.no_grad():
                predicted.append((rows, self.method.predict(batch)))
        if self.method.class_normalised:
            predicted = class_normalised(self.method, samples, predicted)
        scores = np.concatenate([p.image_scores.float().cpu().numpy() for _, p in predicted])
        maps = np.concatenate([p.anomaly_maps.float().cpu().numpy().astype(np.float16) for _, p in predicted])
        return scores, maps

    def batch_source(self, samples: list):
        from harness.training.inputs import FeatureBatches, ImageBatches

        classes = {name: i for i, name in enumerate(self.stored.class_names)}
        if self.backbone is not None:
            from harness.training.feature_cache import extract_features

            features = extract_features(samples, self.backbone, int(self.stored.method_config["image_size"]))
            return FeatureBatches({"test": samples}, classes, {"test": features})
        workers = int(self.stored.method_config.get("loader_workers", 2))
        return ImageBatches({"test": samples}, classes, self.method.image_spec(), self.method.augment, self.stored.trial["seed"],
                            workers, self.component_masks(samples))

    def component_masks(self, samples: list) -> dict | None:
        spec = self.method.component_spec()
        if spec is None:
            return None
        from harness.components import component_masks

        train = sorted(self.index.split("train"), key=lambda s: s.sample_id)
        trial = self.stored.trial
        return {"test": component_masks(trial["dataset"], self.stored.row["dataset_fingerprint"], "test", samples, spec, train_samples=train)}


def class_normalised(method, samples: list, predicted: list) -> list:
    """finish() with each class's per-level minima and maxima over the images scored together."""
    from harness.training.loop import finished_predictions, level_ranges

    batches = [([samples[i] for i in rows], prediction) for rows, prediction in predicted]
    finished = finished_predictions(method, batches, level_ranges(batches))
    return [(rows, prediction) for (rows, _), (_, prediction) in zip(predicted, finished)]


def rebuild(stored: StoredRun, index) -> Scorer:
    """The method as the loop built it (same seed, same backbone weights), with the run's final state loaded."""
    import torch

    import methods
    from harness.training.context import WorkerContext
    from harness.training.loop import seed_everything

    trial, row = stored.trial, stored.row
    cls = methods.get(trial["method"])
    if str(cls.version) != str(row["method_version"]):
        raise ConfigError(f"--run {stored.run_id}: trained by {trial['method']} version {row['method_version']}, "
                          f"this installation has version {cls.version}; its state would not mean the same here")
    device = WorkerContext().device
    seed_everything(trial["seed"])
    backbone = stored_backbone(stored).to(device) if cls.input_kind == "features" else None
    seed_everything(trial["seed"])
    channels = list(backbone.channels) if backbone is not None else []
    reductions = list(backbone.reductions) if backbone is not None else []
    method = methods.build(trial["method"], trial["preset"], trial.get("method_config"), feature_channels=channels, feature_reductions=reductions)
    method.set_class_names(stored.class_names)
    state = torch.load(stored.checkpoint, map_location=device, weights_only=True)
    method.load_state_dict(state["model"])
    method.to(device).eval()
    return Scorer(stored, method, backbone, index, device)


def stored_backbone(stored: StoredRun):
    """The run's frozen backbone, refused when its weights are not the ones the run was trained on."""
    from harness.backbones import create_backbone

    config = stored.method_config
    backbone = create_backbone(config["backbone"], config["backbone_levels"], weights=config.get("backbone_weights", "auto"))
    expected = stored.row.get("backbone_weights_sha256")
    if expected and backbone.weights_sha256 != expected:
        raise ConfigError(
            f"--run {stored.run_id}: the backbone {config['backbone']} resolves here to {backbone.weights_source} "
            f"(weights id {backbone.weights_id}), but the run was trained on {stored.row.get('backbone_weights')} "
            f"(weights id {expected[:16]}); give the same weights (backbone_weights, $HARNESS_WEIGHTS_DIR) to score with it"
        )
    return backbone


def check_image_input(method, samples: list, index, stored: StoredRun) -> None:
    """Depth needs each image's point cloud and component masks the training split: both come from the
    run's dataset, so such a method scores only that dataset's samples (or, for masks, images beside it)."""
    if method.input_kind != "images":
        return
    spec = method.image_spec()
    if "depth" in spec.modalities:
        lacking = [s for s in samples if "xyz" not in s.images]
        if lacking:
            raise ConfigError(
                f"IMAGE {lacking[0].images['rgb']}: {stored.row['method']} of run {stored.run_id} reads depth, and this image "
                f"is not a sample of the run's dataset {stored.trial['dataset']} (whose point clouds predict reads); "
                f"{len(lacking)} such image(s)"
            )
    if method.component_spec() is not None and index is None:
        raise ConfigError(
            f"--run {stored.run_id}: {stored.row['method']} reads component masks built from the training split of "
            f"{stored.trial['dataset']}, which cannot be read here unchanged (data_root {stored.trial.get('data_root')})"
        )


# -------------------------------------------------------------------------------- the outputs


def write_outputs(output: Path, samples: list, scores: np.ndarray, maps: np.ndarray, formats: str) -> str:
    """scores.csv plus, per image, maps/<id>.npy and/or heat/<id>.png and overlay/<id>.png; what was written."""
    output.mkdir(parents=True, exist_ok=True)
    low, high = float(maps.min()), float(maps.max())  # one colour scale for every image scored together
    rows = []
    for sample, score, anomaly_map in zip(samples, scores, maps):
        files = {}
        if formats in ("both", "npy"):
            files["map_npy"] = save(output / "maps" / f"{sample.sample_id}.npy", lambda p: np.save(p, anomaly_map))
        if formats in ("both", "png"):
            heat = heat_rgb(anomaly_map, low, high)
            files["heat_png"] = save(output / "heat" / f"{sample.sample_id}.png", lambda p: save_png(p, heat))
            files["overlay_png"] = save(output / "overlay" / f"{sample.sample_id}.png", lambda p: save_png(p, overlay(sample, heat)))
        rows.append(score_row(sample, score, files, output))
    with open(output / "scores.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    kinds = {"both": "float16 maps, heat maps, overlays", "png": "heat maps, overlays", "npy": "float16 maps"}[formats]
    return f"scores.csv and {kinds} (heat scale {low:.4g} to {high:.4g})"


def score_row(sample, score: float, files: dict, output: Path) -> dict:
    return {
        "sample_id": sample.sample_id,
        "class_name": sample.class_name,
        "score": repr(float(score)),  # the exact float32 value, as the store keeps it
        "label": "" if sample.label < 0 else sample.label,
        "defect_type": sample.defect_type,
        "image": str(sample.images["rgb"]),
        **{name: str(path.relative_to(output)) for name, path in files.items()},
    }


def save(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    return path


def heat_rgb(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W, 3) uint8: the map through matplotlib's jet colour map on [low, high]."""
    from matplotlib import colormaps

    scaled = (anomaly_map.astype(np.float32) - low) / max(high - low, 1e-12)
    return (colormaps["jet"](np.clip(scaled, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def overlay(sample, heat: np.ndarray) -> np.ndarray:
    """The image resized to the map's size, half and half with its heat map."""
    from harness.data.images import read_rgb

    image = read_rgb(sample.images["rgb"], size=heat.shape[:2])
    return ((image.astype(np.uint16) + heat) // 2).astype(np.uint8)


def save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path)

