"""The depth modality of an MVTec 3D-AD scan, prepared as UniMMAD's official loader does (spec methods.md 3.1).

What the official code does (yuanzhao-CVLAB/UniMMAD, ``data/mmad_datasets.py``,
``UniDataset.read_img``, unchanged since the first upload; checked at commit cb269af):

- it reads a pre-computed ``.npy`` per scan (shipped in the authors' re-packaged dataset, not made
  by any script in the repository) and takes channel 0 as the depth and the last channel as the
  foreground weight ``fg``;
- ``"depth"``: ``mean_fg = sum(fg * depth) / sum(fg)``; ``depth = fg * depth + (1 - fg) * mean_fg``
  (the background is filled with the foreground mean); ``depth = (depth - mean_fg) * 100``;
- ``"wofg_depth"``: ``mean = depth.mean()`` over every pixel, ``depth = (depth - mean) * 100``, no fill;
- then ``F.interpolate(..., mode="bilinear", align_corners=False)`` to the square image size (no
  antialiasing), ``repeat(3, 1, 1)`` to three identical channels; no ImageNet normalisation.

Where we differ, because the ``.npy`` files and the script that made them are not published:
depth is the z channel of the organised point cloud ``xyz/NNN.tiff``, and the foreground is the
valid points (a point whose three coordinates are not all zero, the dataset's own marking of missing
points); no background plane is fitted. The means are taken in float64, the result is float32.
A scan with no valid point (the official code would divide by zero) or a non-finite value is
refused with an ImageReadError naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.images import ImageReadError, read_xyz, valid_points

DEPTH_SCALE = 100.0  # the official code's (depth - mean) * 100


def depth_tensor(xyz_path: str | Path, size: int, foreground_mask: bool = True) -> torch.Tensor:
    """(3, size, size) float32: the scan's prepared depth, three identical channels.

    foreground_mask False is the official "wofg_depth" variant: centred on the mean of every pixel.
    """
    xyz = _checked_xyz(xyz_path)
    depth = xyz[..., 2].astype(np.float64)
    centred = foreground_filled(depth, valid_points(xyz)) if foreground_mask else depth - depth.mean()
    image = torch.from_numpy((centred * DEPTH_SCALE).astype(np.float32))[None, None]
    resized = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
    return resized[0].repeat(3, 1, 1)


def foreground_filled(depth: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """depth - mean(foreground depth), with the background set to 0 (it holds the foreground mean)."""
    mean = depth[foreground].mean()
    return np.where(foreground, depth, mean) - mean


def _checked_xyz(path: str | Path) -> np.ndarray:
    try:
        xyz = read_xyz(path)
    except ImageReadError:
        raise
    except ValueError as error:  # a readable file that is not an H x W x 3 point cloud
        raise ImageReadError(path, error) from error
    if not np.isfinite(xyz).all():
        raise ImageReadError(path, ValueError("the point cloud holds NaN or infinite values; invalid points must be 0"))
    if not valid_points(xyz).any():
        raise ImageReadError(path, ValueError("the point cloud has no valid point (every x, y, z is 0)"))
    return xyz
