"""AnomalyMoE's component masks as an offline, cached stage (spec 4.3 "Offline component masks"; section 9
decision 22): computed once per dataset split from frozen features, stored under a content key, reused.

``component_masks(dataset, fingerprint, split, samples, spec)`` gives a ``ComponentMasks``; the k-means
models are fitted on the training split and reused for any other split (whose key includes the training
split's). Files live under ``harness.paths.cache_root()/components/<spec key>/<split>-<split key>.npz``.

What follows the official code and what does not (docs: the method's page lists these too):
- followed: per-image greedy coreset at ``coreset_fraction`` (1%), MiniBatchKMeans with ``clusters`` (5)
  per class, batch 2048, n_init 10; centred cosine heat clamped at 0, bilinear upsampling with
  align_corners; 8-bit heat; Otsu masks; the background-cluster test on the first training image.
- backbone: any harness backbone level (``spec.backbone``/``level``) instead of DINO-v1 ViT-S/16's last
  layer at 448 px; images resized square without the official 448 -> 392 centre crop, so the masks
  cover the image the method sees.
- k-means is fitted once on all of a class's training coresets (seeded; n_init 10 takes effect); the
  official script streams ``partial_fit`` image by image (one k-means++ start from the first image).
- coreset: the same greedy iterations, its first point by largest mean distance, not largest norm of
  distances; one seeded projection for every image instead of a fresh unseeded one per image.
- no DenseCRF by default; ``dense_crf=True`` runs the official refinement when ``pydensecrf`` imports.
- the JET-colormap JPG written and re-read as grayscale is not reproduced: Otsu and the background test
  read the 8-bit heat (or CRF probability) itself.
- per image, a kept cluster whose Otsu mask is empty or whose blurred maximum is not above 64 is no
  component (the official loader keeps every kept cluster's mask, empty or not); so an image can have
  zero components, a blank one does, and the count says how many mask slots hold one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from harness.components import segment, store
from harness.components.segment import ComponentError
from harness.components.store import ComponentMasks
from harness.config import ConfigIssue, ConfigProblems
from harness.data.sample import Sample
from harness.paths import cache_root
from methods.base import ComponentSpec

FORMAT_VERSION = 1
HEAT_CHUNK = 16  # images whose heat is held at once
TRAIN = "train"

__all__ = ["ComponentError", "ComponentMasks", "component_masks", "component_spec_issues", "components_folder"]


def components_folder() -> Path:
    return cache_root() / "components"


def component_spec_issues(spec: ComponentSpec) -> list[ConfigIssue]:
    """Every problem of a ComponentSpec, keyed by its field names."""
    issues = []
    if not isinstance(spec.backbone, str) or not spec.backbone:
        issues.append(ConfigIssue("backbone", spec.backbone, "a timm model name, e.g. tf_efficientnet_lite0"))
    for name, minimum in (("level", 0), ("image_size", 16), ("mask_size", 1), ("clusters", 1), ("seed", 0)):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            issues.append(ConfigIssue(name, value, f"an integer >= {minimum}"))
    fraction = spec.coreset_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        issues.append(ConfigIssue("coreset_fraction", fraction, "a number in (0, 1]"))
    if not isinstance(spec.weights, str) or not spec.weights:
        issues.append(ConfigIssue("weights", spec.weights, "auto, packaged, hub, random or a state-dict path"))
    return issues


def component_masks(
    dataset_name: str,
    fingerprint: str,
    split: str,
    samples: Sequence[Sample],
    spec: ComponentSpec,
    *,
    train_samples: Sequence[Sample] | None = None,
    use_cache: bool = True,
    progress: Callable[[int], None] | None = None,
    dense_crf: bool = False,
) -> ComponentMasks:
    """The split's component masks, row i for ``samples[i]``, from the cache when present.

    A split other than "train" needs ``train_samples``: its classes' k-means models are the training
    split's (read from the cache, or computed and cached first). ``progress(n)`` is called with the
    number of this split's images just done. A damaged cache file is computed again with a warning.
    """
    issues = component_spec_issues(spec)
    if issues:
        raise ConfigProblems("component spec", issues)
    if dense_crf and not segment.dense_crf_available():
        raise ComponentError("dense_crf=True needs the pydensecrf package (pip install pydensecrf2), which does not import here")
    backbone = _backbone(spec)
    base = _spec_key(dataset_name, fingerprint, spec, backbone.weights_id, dense_crf)
    train = None
    if split != TRAIN:
        if train_samples is None:
            raise ValueError(f"component masks of split {split!r} need train_samples: the k-means models are fitted on the training split")
        train = component_masks(dataset_name, fingerprint, TRAIN, train_samples, spec, use_cache=use_cache, dense_crf=dense_crf)
    ids = [s.sample_id for s in samples]
    key = _split_key(base, split, ids, train.key if train is not None else "")
    path = components_folder() / base / f"{split}-{key[:16]}.npz"
    if use_cache:
        hit = store.read(path, key, ids)
        if hit is not None:
            if progress is not None and ids:
                progress(len(ids))
            return hit
    result = _compute(samples, spec, backbone, key, train, dense_crf, progress)
    if use_cache:
        store.write(path, result)
        result.path = path
    return result


# ----------------------------------------------------------------------------------- keys

def _spec_key(dataset_name: str, fingerprint: str, spec: ComponentSpec, weights_id: str, dense_crf: bool) -> str:
    payload = {"format": FORMAT_VERSION, "dataset": dataset_name, "fingerprint": fingerprint, "spec": asdict(spec),
               "weights_id": weights_id, "dense_crf": dense_crf}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _split_key(base: str, split: str, sample_ids: Sequence[str], train_key: str) -> str:
    payload = "\n".join([base, split, train_key, *sample_ids])
    return hashlib.sha256(payload.encode()).hexdigest()


def _backbone(spec: ComponentSpec):
    """The frozen backbone at the spec's one level; random weights drawn from the spec's seed."""
    from harness.backbones import create_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        try:
            return create_backbone(spec.backbone, [spec.level], weights=spec.weights)
        except (IndexError, AssertionError) as error:
            raise ComponentError(f"component spec level: got {spec.level}; expected a feature level of {spec.backbone} ({error})") from None


# -------------------------------------------------------------------------------- compute

def _compute(samples, spec: ComponentSpec, backbone, key: str, train: ComponentMasks | None, dense_crf: bool, progress) -> ComponentMasks:
    n, k, m = len(samples), spec.clusters, spec.mask_size
    masks = np.zeros((n, k, m, m), dtype=bool)
    counts = np.zeros(n, dtype=np.int64)
    slots = np.full((n, k), -1, dtype=np.int16)
    centre_classes, centres, kept = [], [], []
    for class_name, rows in _rows_by_class(samples).items():
        class_samples = [samples[i] for i in rows]
        features = _features(class_samples, backbone, spec.image_size, progress)
        model = train.class_model(class_name) if train is not None else None
        if train is not None and model is None:
            raise ComponentError(f"class {class_name!r} has no training images, so no k-means model for its component masks")
        if model is None:
            model = _fit_class(class_name, class_samples, features, spec, dense_crf)
        centre_classes.append(class_name)
        centres.append(model[0])
        kept.append(model[1])
        for start in range(0, len(rows), HEAT_CHUNK):
            chunk = slice(start, start + HEAT_CHUNK)
            grays = _grays(class_samples[chunk], features[chunk], model[0], m, dense_crf)
            for row, gray in zip(rows[chunk], grays):
                masks[row], slots[row], counts[row] = segment.image_components(gray, model[1])
    channels = int(backbone.channels[0])
    return ComponentMasks(
        key=key, sample_ids=[s.sample_id for s in samples], class_names=[s.class_name for s in samples],
        masks=masks, counts=counts, slots=slots, centre_classes=centre_classes,
        centres=np.stack(centres) if centres else np.zeros((0, k, channels), dtype=np.float32),
        kept=np.stack(kept) if kept else np.zeros((0, k), dtype=bool),
    )


def _rows_by_class(samples: Sequence[Sample]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        rows.setdefault(sample.class_name, []).append(i)
    return rows


def _features(samples, backbone, image_size: int, progress) -> torch.Tensor:
    """(n, C, h, w) float32 frozen features of one level, read and batched as the feature cache does."""
    from harness.training.feature_cache import extract_features

    return torch.from_numpy(extract_features(samples, backbone, image_size, progress).levels[0])


def _fit_class(class_name: str, samples, features: torch.Tensor, spec: ComponentSpec, dense_crf: bool) -> tuple[np.ndarray, np.ndarray]:
    """One class's k-means centres on its training coresets, and the clusters its first training image keeps."""
    coreset = torch.cat([segment.coreset_patches(f, spec.coreset_fraction, spec.seed) for f in features])
    centres = segment.fit_centres(coreset.numpy(), spec.clusters, spec.seed, class_name)
    first = min(range(len(samples)), key=lambda i: samples[i].sample_id)
    gray = _grays([samples[first]], features[first : first + 1], centres, spec.mask_size, dense_crf)[0]
    return centres, segment.foreground_clusters(gray)


def _grays(samples, features: torch.Tensor, centres: np.ndarray, mask_size: int, dense_crf: bool) -> np.ndarray:
    """(n, k, m, m) uint8: each cluster's heat (or its DenseCRF probability) as 8 bits."""
    heat = segment.cluster_heat(features, torch.from_numpy(centres), mask_size)
    if not dense_crf:
        return segment.as_gray(heat)
    from harness.data.images import read_rgb

    refined = [segment.crf_refined(read_rgb(s.images["rgb"], size=(mask_size, mask_size)), h.numpy()) for s, h in zip(samples, heat)]
    return segment.as_gray(np.stack(refined))
