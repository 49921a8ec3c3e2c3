"""Feature jitter (spec section 1.1 "Feature jitter"; UniLEAD eq. 2).

During training only, with probability ``prob`` per batch, each token f (C channels) gets
Gaussian noise with standard deviation ``scale * ||f||_2 / C``, as UniAD's code does (UniLEAD's
eq. 2 writes the variance as scale^2 ||f||^2 / C; we follow the code, spec section 9 item 9).
The reconstruction target stays the un-jittered feature.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureJitter(nn.Module):
    """Adds norm-scaled Gaussian noise to tokens (B, L, C) in training mode; identity in eval mode."""

    def __init__(self, scale: float = 20.0, prob: float = 1.0):
        super().__init__()
        self.scale = float(scale)
        self.prob = float(prob)

    def forward(self, tokens: Tensor) -> Tensor:
        if not self.training or self.scale <= 0 or self.prob <= 0:
            return tokens
        if self.prob < 1.0 and float(torch.rand(())) > self.prob:
            return tokens
        channels = tokens.shape[-1]
        std = tokens.norm(dim=-1, keepdim=True) / channels * self.scale
        return tokens + torch.randn_like(tokens) * std
