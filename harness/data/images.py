"""Pixel readers for samples: Pillow for images and masks, tifffile for xyz point clouds.

Conventions from ../shared/spec/datasets-and-metrics.md: grayscale MVTec classes become 3
channels; a mask pixel is a defect where its value is != 0 (VisA masks are not binary); MVTec
LOCO keeps one channel per mask file, whose single non-zero value is the defect's pixel_value in
defects_config.json; 3D-AD xyz is H x W x 3 float32 with zeros at invalid points; 16-bit images
(PNG or TIFF, Pillow modes I;16, I;16B, I;16L, I) are scaled to 8 bits (value / 257), never
saturated. A file that cannot be read raises ImageReadError naming its path.
torchvision's C++ image ops are unavailable here, hence Pillow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from harness.data.sample import Sample

Size = int | tuple[int, int]  # an int is a square side; a tuple is (height, width)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
JPEG_SUFFIXES = (".jpg", ".jpeg")


class ImageReadError(ValueError):
    """An image, mask or point cloud that cannot be read; the message names the file."""

    def __init__(self, path: str | Path, error: Exception):
        self.path = Path(path)
        super().__init__(f"{path}: cannot be decoded ({type(error).__name__}: {error}); re-extract or re-download it")


@contextmanager
def naming_the_file(path: str | Path) -> Iterator[None]:
    """Any failure to read ``path`` becomes an ImageReadError that names it."""
    try:
        yield
    except ImageReadError:
        raise
    except Exception as error:  # Pillow, zlib and tifffile raise many types for a damaged file
        raise ImageReadError(path, error) from error


def _hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    with naming_the_file(path), Image.open(path) as img:
        return img.height, img.width


def check_image(path: str | Path) -> tuple[int, int]:
    """(height, width) from the header, after the cheap integrity checks: PNG chunk CRCs through
    IEND (no inflating) and a JPEG's end-of-image marker. Raises ImageReadError naming the file."""
    path = Path(path)
    with naming_the_file(path):
        with Image.open(path) as img:
            size = img.height, img.width
            if img.format == "PNG":
                img.verify()
        if path.suffix.lower() in JPEG_SUFFIXES and not _has_jpeg_end(path):
            raise OSError("the file ends before the JPEG end-of-image marker: it is truncated")
    return size


def _has_jpeg_end(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4096))
        return b"\xff\xd9" in handle.read()  # trailing bytes after the marker are tolerated


def to_8bit_rgb(img: Image.Image) -> Image.Image:
    """An RGB image of 8-bit channels; 16-bit grayscale is scaled by 1/257 (65535 -> 255), not clipped."""
    if img.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8))
    return img.convert("RGB")


def read_rgb(path: str | Path, size: Size | None = None) -> np.ndarray:
    """An image as uint8 H x W x 3 (grayscale, palette and 16-bit images converted), optionally resized bilinearly."""
    with naming_the_file(path), Image.open(path) as img:
        img = to_8bit_rgb(img)
        if size is not None:
            h, w = _hw(size)
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).copy()


def read_values(path: str | Path) -> np.ndarray:
    """A file's raw pixel values (masks: any integer type, as stored)."""
    with naming_the_file(path), Image.open(path) as img:
        return np.asarray(img)


def read_mask(path: str | Path, size: Size | None = None) -> np.ndarray:
    """One mask file as bool H x W: True where the value is != 0; resized with nearest neighbour."""
    values = read_values(path)
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
        arr = read_values(path)
        values.append(int(arr.max()) if arr.size else 0)
    return values


def read_xyz(path: str | Path, size: Size | None = None) -> np.ndarray:
    """An organised point cloud as float32 H x W x 3 (x, y, z); zeros mark invalid points.

    Resizing uses nearest neighbour so that invalid points never blend into valid ones.
    """
    with naming_the_file(path):
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
