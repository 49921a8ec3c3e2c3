"""RD4AD's one-class bottleneck embedding and reverse ResNet decoder (spec section 6; official ``resnet.BN_layer``
and ``de_resnet.de_wide_resnet50_2``), for any three encoder levels at strides 4/8/16.

With WRN-50-2 (channels 256/512/1024) and the paper's widths:
- OCBE, multi-scale fusion: level 1 -> conv3x3 s2 (256->512) BN ReLU -> conv3x3 s2 (512->1024) BN ReLU;
  level 2 -> conv3x3 s2 (512->1024) BN ReLU; concatenated with level 3: 3072 channels at 1/16.
- OCBE, one-class embedding: 3 bottlenecks (width 1024, the first of stride 2 with a 1x1 s2
  shortcut) to 2048 channels at 1/32 (8x8 at 256 px).
- ``conv4``/``bn4``: the official ``BN_layer`` also builds a 1x1 conv 4096->2048 and its batch
  norm that ``forward`` never calls (8,392,704 parameters); kept when ``unused_conv4`` so the
  trainable count is the official module's.
- Decoder: 3 stages of 3, 4 and 6 upsampling bottlenecks (widths 512, 256, 128) giving 1024 at
  1/16, 512 at 1/8 and 256 at 1/4; returned shallowest first, the encoder's order. Every stage
  ends in a ReLU (WRN-50-2's levels are non-negative too); ``output_relu=False`` leaves out the
  last one of each stage, for encoders whose levels are signed (EfficientNet's linear bottlenecks).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from methods.blocks.resnet import bottleneck_stage, conv1x1, conv3x3, resnet_init_


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [conv3x3(in_channels, out_channels, stride=2), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class OneClassBottleneckEmbedding(nn.Module):
    """OCBE: fuse the three encoder levels at 1/16, then embed them with strided bottlenecks at 1/32."""

    def __init__(self, channels: Sequence[int], embedding_channels: int, width: int, blocks: int, unused_conv4: bool = True):
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        # Built before the fusion convolutions, as the official module registers them.
        self.embedding = bottleneck_stage(3 * c3, width, embedding_channels, blocks, stride=2)
        self.fuse_level1 = nn.Sequential(*_conv_bn_relu(c1, c2), *_conv_bn_relu(c2, c3))
        self.fuse_level2 = nn.Sequential(*_conv_bn_relu(c2, c3))
        if unused_conv4:
            self.conv4 = conv1x1(4 * c3, embedding_channels)
            self.bn4 = nn.BatchNorm2d(embedding_channels)
        resnet_init_(self)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        fused = torch.cat([self.fuse_level1(features[0]), self.fuse_level2(features[1]), features[2]], dim=1)
        return self.embedding(fused).contiguous()


class ReverseResNetDecoder(nn.Module):
    """The reverse (student) decoder: upsampling bottleneck stages from the embedding to each encoder level."""

    def __init__(self, embedding_channels: int, channels: Sequence[int], widths: Sequence[int], blocks: Sequence[int], output_relu: bool = True):
        super().__init__()
        if not len(channels) == len(widths) == len(blocks):
            raise ValueError(f"one width and block count per level: channels {list(channels)}, widths {list(widths)}, blocks {list(blocks)}")
        stages, in_channels = [], int(embedding_channels)
        for out_channels, width, depth in zip(reversed(list(channels)), widths, blocks):  # deepest level first
            stages.append(bottleneck_stage(in_channels, int(width), int(out_channels), int(depth), stride=2, upsample=True, out_relu=output_relu))
            in_channels = int(out_channels)
        self.stages = nn.ModuleList(stages)
        resnet_init_(self)

    def forward(self, embedding: Tensor) -> list[Tensor]:
        outputs, x = [], embedding
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]
