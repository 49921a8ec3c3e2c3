"""ResNet building blocks as torchvision defines them, plus the transposed variant RD4AD's decoder uses (spec section 6).

Bottleneck: torchvision's V1.5 bottleneck (1x1 -> 3x3 carrying the stride -> 1x1, batch norm
after each convolution, ReLU after the first two and after the residual sum), with its width
given explicitly (a wide ResNet's width is twice the standard planes). With ``upsample`` it is
the bottleneck of RD4AD's ``de_resnet``: the strided 3x3 becomes a 2x2 transposed convolution of
stride 2 and the shortcut a 2x2 transposed convolution plus batch norm. ``out_relu=False`` leaves out
the ReLU after the residual sum (for reconstructing signed features; torchvision always has it).
``resnet_init_`` is torchvision's ResNet initialisation, which RD4AD's ``BN_layer`` and
``de_resnet`` repeat: kaiming-normal (fan_out, ReLU) for every ``nn.Conv2d``, batch-norm weight 1
and bias 0. ``nn.ConvTranspose2d`` is not an ``nn.Conv2d``, so transposed convolutions keep
PyTorch's default initialisation, as in the official code.
BasicBlock: torchvision's two-3x3 block; with ``upsample`` the first 3x3 is the 2x2 stride-2 transposed
convolution of RD4AD's ``de_resnet.BasicBlock``; the shortcut is whatever module the caller gives
(UniMMAD's FCM uses a bare 1x1 convolution and a 4x4 transposed convolution, spec 3.2).
"""

from __future__ import annotations

from torch import Tensor, nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def deconv2x2(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """The 2x2 stride-2 transposed convolution that doubles a map's size (RD4AD's ``deconv2x2``)."""
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)


class Bottleneck(nn.Module):
    """in -> 1x1 (width) -> 3x3 stride s, or 2x2 transposed stride 2 when upsampling (width) -> 1x1 (out), + shortcut."""

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int = 1, upsample: bool = False, out_relu: bool = True):
        super().__init__()
        if upsample and stride != 2:
            raise ValueError(f"an upsampling bottleneck doubles the map size (stride 2), got stride {stride}")
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = deconv2x2(width, width) if upsample else conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.out_relu = out_relu
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            resample = deconv2x2(in_channels, out_channels) if upsample else conv1x1(in_channels, out_channels, stride)
            self.shortcut = nn.Sequential(resample, nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        out = out + identity
        return self.relu(out) if self.out_relu else out


class BasicBlock(nn.Module):
    """in -> 3x3 stride s, or 2x2 transposed stride 2 when upsampling -> BN ReLU -> 3x3 -> BN, + shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, upsample: bool = False, shortcut: nn.Module | None = None):
        super().__init__()
        if upsample and stride != 2:
            raise ValueError(f"an upsampling basic block doubles the map size (stride 2), got stride {stride}")
        self.conv1 = deconv2x2(in_channels, out_channels) if upsample else conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + identity)


def bottleneck_stage(
    in_channels: int, width: int, out_channels: int, blocks: int, stride: int, upsample: bool = False, out_relu: bool = True
) -> nn.Sequential:
    """torchvision's ``_make_layer``: the first block changes size and channels, the others keep them;
    ``out_relu`` applies to the stage's last block."""
    layers = [Bottleneck(in_channels, width, out_channels, stride, upsample, out_relu=out_relu or blocks > 1)]
    layers += [Bottleneck(out_channels, width, out_channels, out_relu=out_relu or i < blocks - 1) for i in range(1, blocks)]
    return nn.Sequential(*layers)


def resnet_init_(module: nn.Module) -> nn.Module:
    """torchvision's ResNet initialisation (see the module docstring); returns ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return module
