"""Pixels to tensors: the one place images are resized and normalised, and masks resized."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from harness.config import ConfigError
from harness.data.depth import depth_tensor  # the official depth preparation (UniMMAD)
from harness.data.images import mask_channel_values, read_mask_stack, read_rgb
from harness.data.sample import Sample


def image_tensor(sample: Sample, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, size, size) float32: square bilinear resize with no crop (UniAD's protocol), then normalise."""
    rgb = read_rgb(sample.images["rgb"], size=(size, size))  # decoded and resized in Pillow, one copy
    pixels = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (pixels - mean_t) / std_t


def mask_array(sample: Sample, size: int) -> np.ndarray:
    """(size, size) bool: the union of the sample's mask channels, nearest-resized to the evaluation size."""
    stack = read_mask_stack(sample, size=(size, size))
    return stack.any(axis=0)


def ground_truth(samples: Sequence[Sample], size: int, defects_config: dict | None) -> dict:
    """The masks argument(s) of MetricAccumulator.update for a batch, at the evaluation size.

    One union mask per image, except for MVTec LOCO (a defects_config is present), where every
    defect keeps its own channel and its pixel value so sPRO can apply its saturation threshold.
    """
    if not defects_config:
        return {"masks": np.stack([mask_array(s, size) for s in samples])}
    return {
        "masks": [read_mask_stack(s, size=(size, size)) for s in samples],
        "defect_ids": [mask_channel_values(s) for s in samples],
        "defects_config": defects_config,
    }


# ------------------------------------------------------------------------------ batch sources


class BatchSource:
    """Batches of one split for the loop's stages, whatever the method's input kind.

    ``batches(split, batch_rows, device, epoch)`` yields (rows, batch) for each list of sample
    indices in ``batch_rows``; ``epoch`` is the training epoch (augmented image input) or None
    (evaluation and fitting: never augmented). Subclasses provide the batch's input tensors.
    """

    def __init__(self, samples: dict[str, list[Sample]], class_to_index: dict[str, int]):
        self.samples = samples
        self.class_to_index = class_to_index

    def batches(self, split: str, batch_rows: Sequence[Sequence[int]], device: torch.device, epoch: int | None = None):
        raise NotImplementedError

    def _batch(self, split: str, rows: Sequence[int], inputs: dict, device: torch.device) -> dict:
        samples = [self.samples[split][i] for i in rows]
        return {
            **inputs,
            "label": torch.tensor([int(s.label) for s in samples], dtype=torch.long, device=device),
            "class_index": torch.tensor([self.class_to_index[s.class_name] for s in samples], device=device),
            "index": torch.tensor(list(rows), dtype=torch.long, device=device),
        }


class FeatureBatches(BatchSource):
    """``input_kind == "features"``: rows of the (cached) frozen-backbone features of each split."""

    def __init__(self, samples, class_to_index, features: dict):
        super().__init__(samples, class_to_index)
        self.features = features  # split -> FeatureSet

    def batches(self, split, batch_rows, device, epoch=None):
        for rows in batch_rows:
            levels = [f.to(device, non_blocking=True) for f in self.features[split].rows(rows)]
            yield rows, self._batch(split, rows, {"features": levels}, device)


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one training image's augmentation: a function of (trial seed, epoch, sample index) only."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class ImageSet(torch.utils.data.Dataset):
    """One split's images for a DataLoader: key (index, epoch) -> a dict of this sample's input tensors.

    ``"images"``: (3, S, S) normalised rgb; with more modalities than rgb, ``"modalities"``: name ->
    (3, S, S) in the spec's order (depth prepared by harness.data.depth). With an epoch the rgb image
    goes through ``augment(image, generator)`` seeded by ``augmentation_seed(seed, epoch, index)``, so a
    worker process computes the same image as any other; a dict it returns adds its views as keys.
    """

    def __init__(self, samples: Sequence[Sample], spec, augment, seed: int):
        self.samples, self.spec, self.augment, self.seed = samples, spec, augment, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int | None]) -> dict:
        index, epoch = key
        sample = self.samples[index]
        image = image_tensor(sample, self.spec.image_size, self.spec.mean, self.spec.std)
        item = {"images": image}
        if tuple(self.spec.modalities) != ("rgb",):
            item["modalities"] = {name: self._modality(sample, name, image) for name in self.spec.modalities}
        if epoch is None:
            return item
        generator = torch.Generator()
        generator.manual_seed(augmentation_seed(self.seed, epoch, index))
        views = self.augment(image, generator)
        item.update(views if isinstance(views, dict) else {"images": views})
        if "modalities" in item and "rgb" in item["modalities"]:
            item["modalities"]["rgb"] = item["images"]
        return item

    def _modality(self, sample: Sample, name: str, rgb: torch.Tensor) -> torch.Tensor:
        if name == "rgb":
            return rgb
        return depth_tensor(sample.images["xyz"], self.spec.image_size, foreground_mask=self.spec.depth_foreground_mask)


def check_modalities(samples: dict[str, list[Sample]], modalities: Sequence[str], dataset: str) -> None:
    """Before any work: every sample has the files its modalities are read from (depth needs xyz)."""
    needs = {"rgb": "rgb", "depth": "xyz"}
    unknown = [m for m in modalities if m not in needs]
    if unknown:
        raise ConfigError(f"unknown modality {unknown[0]!r}; known modalities: {', '.join(needs)}")
    for name in modalities:
        for split, split_samples in samples.items():
            lacking = [s for s in split_samples if needs[name] not in s.images]
            if lacking:
                raise ConfigError(
                    f"modality {name!r} needs each sample's {needs[name]!r} file, but {len(lacking)} {split} sample(s) of "
                    f"dataset {dataset!r} have none (first: {lacking[0].sample_id}); use a dataset with point clouds "
                    f"(mvtec_3d, embedded_3d) or set method_config.modalities to [rgb]"
                )


class ImageBatches(BatchSource):
    """``input_kind == "images"``: images read, resized, normalised (and augmented) by a DataLoader's
    worker processes, in exactly the batches the loop asks for (its batch sampler); component masks
    (split -> ComponentMasks) are added by row when the method reads them."""

    def __init__(self, samples, class_to_index, spec, augment, seed: int, workers: int, components: dict | None = None):
        super().__init__(samples, class_to_index)
        self.sets = {split: ImageSet(split_samples, spec, augment, seed) for split, split_samples in samples.items()}
        self.workers = workers
        self.components = components or {}

    def batches(self, split, batch_rows, device, epoch=None):
        keys = [[(i, epoch) for i in rows] for rows in batch_rows]
        loader = torch.utils.data.DataLoader(self.sets[split], batch_sampler=keys, num_workers=self.workers)
        for rows, items in zip(batch_rows, loader):
            inputs = _to_device(items, device)
            if split in self.components:
                masks, counts = self.components[split].rows(rows)
                inputs.update(components=masks.to(device), component_count=counts.to(device))
            yield rows, self._batch(split, rows, inputs, device)


def _to_device(value, device: torch.device):
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value.to(device, non_blocking=True)
