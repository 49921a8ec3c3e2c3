"""Pixels to tensors: the one place images are resized and normalised, and masks resized."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

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
