"""Pixel readers for samples: Pillow for images and masks, tifffile for xyz point clouds.

Conventions from ../shared/spec/datasets-and-metrics.md: grayscale MVTec classes become 3
channels; a mask pixel is a defect where its value is != 0 (VisA masks are not binary); MVTec
LOCO keeps one channel per mask file, whose single non-zero value is the defect's pixel_value in
defects_config.json; 3D-AD xyz is H x W x 3 float32 with zeros at invalid points.
torchvision's C++ image ops are unavailable here, hence Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from harness.data.sample import Sample

Size = int | tuple[int, int]  # an int is a square side; a tuple is (height, width)


def _hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    with Image.open(path) as img:
        return img.height, img.width


def read_rgb(path: str | Path, size: Size | None = None) -> np.ndarray:
    """An image as uint8 H x W x 3 (grayscale and palette images converted), optionally resized bilinearly."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if size is not None:
            h, w = _hw(size)
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).copy()


def read_mask(path: str | Path, size: Size | None = None) -> np.ndarray:
    """One mask file as bool H x W: True where the value is != 0; resized with nearest neighbour."""
    with Image.open(path) as img:
        values = np.asarray(img)
    if values.ndim == 3:
        values = values.max(axis=2)
    mask = values != 0
    return _resize_bool(mask, size) if size is not None else mask


def _resize_bool(mask: np.ndarray, size: Size) -> np.ndarray:
    h, w = _hw(size)
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(img) != 0


def read_mask_stack(sample: Sample, size: Size | None = None) -> np.ndarray:
    """The sample's mask as bool (C, H, W): C=1 all-zero at the image size for a normal image,
    one channel per mask file otherwise (several for MVTec LOCO)."""
    if not sample.masks:
        h, w = _hw(size) if size is not None else image_size(sample.images["rgb"])
        return np.zeros((1, h, w), dtype=bool)
    return np.stack([read_mask(p, size) for p in sample.masks])


def mask_channel_values(sample: Sample) -> list[int]:
    """Per mask channel, its defect pixel value (the largest non-zero value; 0 for an empty file).

    For MVTec LOCO this is the key into defects_config.json (pixel_value) that sPRO needs.
    """
    values = []
    for path in sample.masks:
        with Image.open(path) as img:
            arr = np.asarray(img)
        values.append(int(arr.max()) if arr.size else 0)
    return values


def read_xyz(path: str | Path, size: Size | None = None) -> np.ndarray:
    """An organised point cloud as float32 H x W x 3 (x, y, z); zeros mark invalid points.

    Resizing uses nearest neighbour so that invalid points never blend into valid ones.
    """
    xyz = np.asarray(tifffile.imread(path), dtype=np.float32)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f"{path}: expected an H x W x 3 point cloud, got shape {xyz.shape}")
    if size is not None:
        h, w = _hw(size)
        rows = (np.arange(h) * xyz.shape[0] // h).clip(0, xyz.shape[0] - 1)
        cols = (np.arange(w) * xyz.shape[1] // w).clip(0, xyz.shape[1] - 1)
        xyz = xyz[rows][:, cols]
    return np.ascontiguousarray(xyz)


def valid_points(xyz: np.ndarray) -> np.ndarray:
    """bool H x W: True where the point is valid (not all three coordinates zero)."""
    return np.any(xyz != 0, axis=2)
