"""UniMMAD's FCM (official ``MultiScaleFusionWithEmbedding``, spec 3.2 item 3): the general encoder's
three levels fused, embedded at 1/32 and decoded back to three levels by RD4AD's reverse decoder.

With WRN-50-2 (256/512/1024 at strides 4/8/16) and the paper's width 512:
- level 1 -> BasicBlock 256->512 stride 2 (shortcut a bare 1x1 stride-2 conv); level 2 -> BasicBlock
  512->512 (bare 1x1 shortcut); level 3 -> up-BasicBlock 1024->512 (2x2 transposed conv, shortcut a
  4x4 stride-2 padding-1 transposed conv with bias): all three at 512@1/8.
- three ``MultiKernelBottleneck`` branches (K = 1, 3, 5): per level a depthwise KxK then a pointwise
  512->170 conv with GroupNorm + ReLU, concatenated (510), then a 2x2 stride-2 conv (bias) to 512@1/16
  with GroupNorm + ReLU (the inner bottleneck);
- ``OutFuse3``: the three branches concatenated (1536), 1x1 to 512, 2x2 stride-2 conv to 2048@1/32, each
  with GroupNorm + ReLU (the outer bottleneck);
- RD4AD's ``de_wide_resnet50_2`` (``ReverseResNetDecoder``, 3/4/6 bottlenecks) to 256/512/1024 at
  1/4, 1/8, 1/16, then a bias-free 1x1 per level to the encoder's channels.
Only the decoder gets torchvision's ResNet initialisation (as the official ``de_resnet``); the other
layers keep PyTorch's defaults. GroupNorm groups: the largest of 32, 16, 8, 4, 2, 1 dividing the width.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from methods.blocks.resnet import BasicBlock, conv1x1
from methods.blocks.resnet_decoder import ReverseResNetDecoder


def group_norm_groups(channels: int) -> int:
    """The official ``_choose_gn_groups``: the largest of 32, 16, 8, 4, 2 dividing ``channels``, else 1."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


def norm_act(channels: int) -> nn.Sequential:
    """GroupNorm then ReLU (the official ``norm_act`` with its default ``"gn"``)."""
    return nn.Sequential(nn.GroupNorm(group_norm_groups(channels), channels), nn.ReLU(inplace=True))


class DepthwiseSeparable(nn.Sequential):
    """KxK depthwise conv, 1x1 pointwise conv (both bias-free), GroupNorm + ReLU."""

    def __init__(self, channels: int, out_channels: int, kernel_size: int):
        super().__init__(
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False),
            nn.Conv2d(channels, out_channels, 1, bias=False),
            norm_act(out_channels),
        )


class MultiKernelBottleneck(nn.Module):
    """One K branch of the inner bottleneck (official ``BottleNeckK``): three levels at 1/8 -> width at 1/16."""

    def __init__(self, kernel_size: int, width: int):
        super().__init__()
        part = width // 3
        self.levels = nn.ModuleList(DepthwiseSeparable(width, part, kernel_size) for _ in range(3))
        self.post = nn.Sequential(nn.Conv2d(3 * part, width, kernel_size=2, stride=2), norm_act(width))

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        return self.post(torch.cat([branch(x) for branch, x in zip(self.levels, levels)], dim=1))


class OutFuse3(nn.Module):
    """The outer bottleneck: three branches concatenated, 1x1 to width, 2x2 stride-2 conv to the embedding."""

    def __init__(self, width: int, embedding_channels: int, branches: int = 3):
        super().__init__()
        self.proj = nn.Sequential(conv1x1(branches * width, width), norm_act(width))
        self.head = nn.Sequential(nn.Conv2d(width, embedding_channels, kernel_size=2, stride=2, bias=False), norm_act(embedding_channels))

    def forward(self, branches: Sequence[Tensor]) -> Tensor:
        return self.head(self.proj(torch.cat(list(branches), dim=1)))


class MultiScaleFusion(nn.Module):
    """FCM: encoder levels (strides 4/8/16) -> fused at 1/8 -> embedded at 1/32 -> decoded to the three levels."""

    def __init__(
        self,
        channels: Sequence[int],
        width: int,
        embedding_channels: int,
        decoder_channels: Sequence[int],
        decoder_widths: Sequence[int],
        decoder_blocks: Sequence[int],
        kernel_sizes: Sequence[int] = (1, 3, 5),
    ):
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        self.level1 = BasicBlock(c1, width, stride=2, shortcut=conv1x1(c1, width, stride=2))
        self.level2 = BasicBlock(c2, width, stride=1, shortcut=conv1x1(c2, width))
        self.level3 = BasicBlock(c3, width, stride=2, upsample=True, shortcut=nn.ConvTranspose2d(c3, width, kernel_size=4, stride=2, padding=1))
        self.branches = nn.ModuleList(MultiKernelBottleneck(int(k), width) for k in kernel_sizes)
        self.out_fuse = OutFuse3(width, embedding_channels, len(self.branches))
        self.decoder = ReverseResNetDecoder(embedding_channels, decoder_channels, decoder_widths, decoder_blocks)
        self.final = nn.ModuleList(conv1x1(int(d), int(c)) for d, c in zip(decoder_channels, channels))

    def forward(self, levels: Sequence[Tensor]) -> list[Tensor]:
        fused = [self.level1(levels[0]), self.level2(levels[1]), self.level3(levels[2])]
        embedding = self.out_fuse([branch(fused) for branch in self.branches])
        return [project(x) for project, x in zip(self.final, self.decoder(embedding))]
