"""AnomalyMoE's global experts (spec 4.3 "6 global-level experts"; decision 17): EfficientAD-style nets on the image.

image_autoencoder: three 4x4 stride-2 convs (3 -> c0 -> c1 -> c2, padding 1), a 3x3 conv, then the
latent convs ([kernel, stride] pairs, padding 1; the official 9/7 twice takes 49 -> 7 -> 1, a 1x1
latent); no ReLU after the last latent conv. Decoder: for each size in ``upsample_sizes`` a bilinear
upsample, a 4x4 conv (padding 2), ReLU and Dropout; then bilinear to the token grid, a 3x3 conv + ReLU
and a 3x3 conv to ``out_channels``. At 392 px with (32, 64, 128) and sizes (3, 7, 15, 31, 63, 31)
this is 5,574,368 parameters and 768@28^2.
student_network: 3x3 conv 3 -> s0 at full resolution, ReLU, average pool p0, 3x3 conv s0 -> s1, ReLU,
average pool p1, 1x1 s1 -> s1, ReLU, 3x3 s1 -> s1, ReLU, 3x3 s1 -> out, ReLU, 1x1 out -> out. With
(256, 512), pools (2, 7) and 768 out: 7,940,096 parameters, 392 px -> 28^2.
Convs keep torch's default init (the official trunc-normal init touches only Linear layers).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn


def image_autoencoder(
    channels: Sequence[int],
    latent_convs: Sequence[Sequence[int]],
    upsample_sizes: Sequence[int],
    grid: int,
    out_channels: int,
    dropout: float,
) -> nn.Sequential:
    """The EfficientAD-style autoencoder: image (B, 3, S, S) -> (B, out_channels, grid, grid)."""
    c0, c1, c2 = (int(c) for c in channels)
    layers: list[nn.Module] = []
    for cin, cout in ((3, c0), (c0, c1), (c1, c2)):
        layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
    layers += [nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(inplace=True)]
    for i, (kernel, stride) in enumerate(latent_convs):
        layers.append(nn.Conv2d(c2, c2, int(kernel), stride=int(stride), padding=1))
        if i < len(latent_convs) - 1:
            layers.append(nn.ReLU(inplace=True))
    for size in upsample_sizes:
        layers += [nn.Upsample(size=int(size), mode="bilinear"), nn.Conv2d(c2, c2, 4, padding=2), nn.ReLU(inplace=True), nn.Dropout(dropout)]
    layers += [
        nn.Upsample(size=int(grid), mode="bilinear"),
        nn.Conv2d(c2, c2, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c2, out_channels, 3, padding=1),
    ]
    return nn.Sequential(*layers)


def student_network(channels: Sequence[int], pools: Sequence[int], out_channels: int) -> nn.Sequential:
    """The student CNN: image (B, 3, S, S) -> (B, out_channels, S / (p0 * p1), ...)."""
    s0, s1 = (int(c) for c in channels)
    p0, p1 = (int(p) for p in pools)
    return nn.Sequential(
        nn.Conv2d(3, s0, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(p0, stride=p0),
        nn.Conv2d(s0, s1, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(p1, stride=p1),
        nn.Conv2d(s1, s1, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(s1, s1, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(s1, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 1),
    )


def latent_size(image_size: int, latent_convs: Sequence[Sequence[int]]) -> int:
    """The autoencoder's latent side for an image side (three halvings, then each latent conv, padding 1)."""
    side = int(image_size)
    for _ in range(3):
        side = (side + 2 - 4) // 2 + 1
    for kernel, stride in latent_convs:
        side = (side + 2 - int(kernel)) // int(stride) + 1
    return side
