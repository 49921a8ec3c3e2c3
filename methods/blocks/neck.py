"""Multi-level feature neck: UniAD's MFCN (spec section 1.1, "Neck MFCN").

Every backbone level is resized to the grid of the output stride (the official ``outstrides``; by
default the coarsest level's, stride 16 for UniAD's EfficientNet-B4 levels, so 14x14 at 224) with
bilinear interpolation, align_corners=True, and the levels are concatenated along channels
(24+32+56+160 = 272 for B4). No parameters.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiLevelFeatureNeck(nn.Module):
    """Align backbone levels to one level's grid and concatenate them: list[(B,C_l,H_l,W_l)] -> (B, sum C_l, H, W).

    ``stride``: the output stride, one of the levels' reductions; None takes the coarsest level's.
    """

    def __init__(self, channels: Sequence[int], reductions: Sequence[int], stride: int | None = None):
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.reductions = [int(r) for r in reductions]
        self.out_channels = sum(self.channels)
        if stride is None:
            self.target_level = max(range(len(self.reductions)), key=lambda i: self.reductions[i])
        elif int(stride) in self.reductions:
            self.target_level = self.reductions.index(int(stride))
        else:
            raise ValueError(f"token_stride={stride}: expected the stride of one of the backbone levels, {sorted(set(self.reductions))}")

    def grid_size(self, image_size: int) -> tuple[int, int]:
        """Token grid (H, W) for a square input of ``image_size`` pixels."""
        stride = self.reductions[self.target_level]
        side = -(-int(image_size) // stride)  # ceil: timm's conv stems pad odd sizes up
        return side, side

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        size = tuple(features[self.target_level].shape[-2:])
        aligned = [
            f if tuple(f.shape[-2:]) == size else F.interpolate(f, size=size, mode="bilinear", align_corners=True)
            for f in features
        ]
        return torch.cat(aligned, dim=1)
