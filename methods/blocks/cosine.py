"""Cosine distances between encoder features and their reconstructions (RD4AD, spec section 6; Dinomaly, section 7).

global_cosine_distance: per sample, 1 - cos of the two whole maps flattened to vectors (the
"global" cosine of RD4AD's ``loss_fucntion`` and of Dinomaly's loss), one value per sample.
pixel_cosine_distance_maps: per position, 1 - cos over channels, each level upsampled bilinearly
(align_corners=True) to one size (RD4AD's ``cal_anomaly_map``), stacked as (B, levels, H, W).
Both use torch's cosine similarity with its eps of 1e-8, as the official code does.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def global_cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """(B, C, H, W) pair -> (B,): 1 - cosine similarity of each sample's flattened maps."""
    return 1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def pixel_cosine_distance_maps(a: Sequence[Tensor], b: Sequence[Tensor], size: int) -> Tensor:
    """Levels of (B, C_l, H_l, W_l) pairs -> (B, levels, size, size) maps of 1 - cos over channels."""
    maps = [
        F.interpolate((1 - F.cosine_similarity(x.float(), y.float(), dim=1)).unsqueeze(1), size=(size, size), mode="bilinear", align_corners=True)
        for x, y in zip(a, b)
    ]
    return torch.cat(maps, dim=1)
