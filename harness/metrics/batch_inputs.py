"""Normalising one batch handed to ``MetricAccumulator.update``: numpy or torch, stacks or lists."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(values: Any) -> np.ndarray:
    """A numpy view or copy of an array-like or torch tensor (any device)."""
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().cpu()
        if str(values.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float32 holds it exactly
            values = values.float()
        values = values.numpy()
    return np.asarray(values)


def per_image_list(values: Any, count: int, name: str, default: Any) -> list:
    """One entry per image: a sequence as given, one string repeated, or ``default`` when None."""
    if values is None:
        return [default(i) for i in range(count)] if callable(default) else [default] * count
    if isinstance(values, str):
        return [values] * count
    values = list(values)
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries but the batch has {count} image scores")
    return values


def _one_per_image(items: list, count: int, name: str) -> list:
    if len(items) != count:
        raise ValueError(f"{name} holds {len(items)} entries but the batch has {count} image scores")
    return items


def maps_per_image(anomaly_maps: Any, count: int) -> list[np.ndarray]:
    """One (H, W) map per image from a (B, H, W) or (B, 1, H, W) stack or a list."""
    if isinstance(anomaly_maps, (list, tuple)):
        maps = [to_numpy(m) for m in anomaly_maps]
    else:
        stack = to_numpy(anomaly_maps)
        if stack.ndim == 4 and stack.shape[1] == 1:
            stack = stack[:, 0]
        if stack.ndim != 3:
            raise ValueError(f"anomaly_maps must be (B, H, W); got shape {stack.shape}")
        maps = list(stack)
    return _one_per_image(maps, count, "anomaly_maps")


def mask_channels_per_image(masks: Any, count: int, maps: list[np.ndarray]) -> list[np.ndarray]:
    """One (C, H, W) stack per image (C = 1 for ordinary masks)."""
    if masks is None:
        return [np.zeros((1, *m.shape), dtype=bool) for m in maps]
    if isinstance(masks, (list, tuple)):
        per_image = [to_numpy(m) for m in masks]
        per_image = [m[None] if m.ndim == 2 else m for m in per_image]
    else:
        stack = to_numpy(masks)
        if stack.ndim == 3:
            stack = stack[:, None]
        if stack.ndim != 4:
            raise ValueError(f"masks must be (B, H, W) or (B, C, H, W); got shape {stack.shape}")
        per_image = list(stack)
    return _one_per_image(per_image, count, "masks")
