"""Anomaly maps and image scores (spec 1.3 for UniAD/MoEAD; Part A UniLEAD item 6; UniLEAD eqs. 4-5).

feature_error_map: per-position L2 norm over channels of (reconstruction - target), bilinearly
upsampled (align_corners=True) to the evaluation size.
max_of_average_pooled: UniAD's ``max`` score, the maximum of a stride-1 average pooling whose
window is 16 px at 224 px (scaled with eval_size / 224 at other evaluation sizes).
gaussian_smooth: separable Gaussian with an explicit sigma AND kernel size (both recorded); boundary
"reflect" mirrors about the edge pixel (scipy's "mirror"), "symmetric" repeats it (scipy's default
"reflect", what ``scipy.ndimage.gaussian_filter`` does), "zeros" pads with zeros (Dinomaly's Conv2d).
max_mean_topk: UniLEAD's w1*max + w2*mean + w3*mean(top-k).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from methods.base import topk_fraction_mean


def feature_error_map(reconstruction: Tensor, target: Tensor, eval_size: int) -> Tensor:
    """(B, C, h, w) pair -> (B, eval_size, eval_size) float32 map of ||rec - target||_2 over channels."""
    error = (reconstruction.float() - target.float()).pow(2).sum(dim=1, keepdim=True).sqrt()
    return F.interpolate(error, size=(eval_size, eval_size), mode="bilinear", align_corners=True)[:, 0]


def pool_window(eval_size: int, window_at_224: int = 16) -> int:
    """UniAD's 16 px pooling window, scaled to the evaluation size."""
    return max(1, int(round(window_at_224 * eval_size / 224)))


def max_of_average_pooled(maps: Tensor, window: int) -> Tensor:
    """(B, H, W) -> (B,): max of the stride-1 window x window average pooling."""
    return F.avg_pool2d(maps.unsqueeze(1), window, stride=1).flatten(1).amax(dim=1)


SMOOTHING_BOUNDARIES = ("reflect", "symmetric", "zeros")  # zeros: Dinomaly's padded Conv2d


def gaussian_smooth(maps: Tensor, sigma: float, kernel_size: int, boundary: str = "reflect") -> Tensor:
    """(B, H, W) maps smoothed by a separable Gaussian (padding: see the module docstring); sigma <= 0 returns them unchanged."""
    if sigma <= 0 or kernel_size <= 1:
        return maps
    if kernel_size % 2 == 0:
        raise ValueError(f"smoothing kernel size must be odd, got {kernel_size}")
    if boundary not in SMOOTHING_BOUNDARIES:
        raise ValueError(f"smoothing boundary must be one of {', '.join(SMOOTHING_BOUNDARIES)}, got {boundary!r}")
    radius = kernel_size // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = maps.unsqueeze(1)
    out = F.conv2d(_pad(out, radius, -1, boundary), kernel.view(1, 1, 1, -1))
    out = F.conv2d(_pad(out, radius, -2, boundary), kernel.view(1, 1, -1, 1))
    return out[:, 0]


def _pad(x: Tensor, radius: int, dim: int, boundary: str) -> Tensor:
    """Pad ``radius`` values on both sides of ``dim``: torch's reflect or zeros, or symmetric (the edge value repeated)."""
    if boundary in ("reflect", "zeros"):
        mode = "reflect" if boundary == "reflect" else "constant"
        return F.pad(x, (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius), mode=mode)
    size = x.shape[dim]
    if radius > size:
        raise ValueError(f"symmetric padding of {radius} needs maps of at least {radius} pixels, got {size}")
    return torch.cat([x.narrow(dim, 0, radius).flip(dim), x, x.narrow(dim, size - radius, radius).flip(dim)], dim=dim)


def default_kernel_size(sigma: float, truncate: float = 4.0) -> int:
    """scipy's kernel size for a sigma: radius int(truncate * sigma + 0.5), so 9 for sigma 1 and 33 for sigma 4."""
    return 2 * int(truncate * float(sigma) + 0.5) + 1


def max_mean_topk(maps: Tensor, weights: Sequence[float], topk_fraction: float) -> Tensor:
    """UniLEAD eq. 5 on (B, H, W) maps: w1 * max + w2 * mean + w3 * mean of the top fraction of pixels."""
    if len(weights) != 3:
        raise ValueError(f"score_weights needs 3 numbers (max, mean, top-k mean), got {list(weights)!r}")
    flat = maps.flatten(1)
    w1, w2, w3 = (float(w) for w in weights)
    return w1 * flat.amax(dim=1) + w2 * flat.mean(dim=1) + w3 * topk_fraction_mean(maps, topk_fraction)
