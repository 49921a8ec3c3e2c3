"""Neighbour-masked attention (spec section 1.1 "Neighbour-masked attention", section 9 item 8).

The mask BLOCKS a k x k window around each token on the token grid, the token itself included:
a query may attend anywhere except its own neighbourhood, which removes the identity shortcut.
UniAD uses the same mask in the encoder self-attention and both decoder attentions.

The attention is written out (projections, QK^T, softmax, AV) rather than using
nn.MultiheadAttention so the profiler can see the masked QK^T product that fvcore and calflops
miss; its parameter layout (q, k, v and out projections with biases) has exactly the size of
nn.MultiheadAttention(dim, heads): 4*D*D + 4*D.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def neighbour_window(config_value, grid: tuple[int, int]) -> int:
    """The neighbourhood size for a grid: an int from config, or "auto" = min(grid) // 2 (7 at 14x14, 8 at 16x16 as ADer)."""
    window = max(1, min(grid) // 2) if config_value in (None, "auto") else int(config_value)
    if window < 1 or window >= min(grid):
        raise ValueError(
            f"neighbour_window={config_value!r} gives a {window}x{window} window on a {grid[0]}x{grid[1]} token grid; "
            f"it must be between 1 and {min(grid) - 1} or every token would be blocked from all others"
        )
    return window


def neighbour_mask(height: int, width: int, window: int) -> Tensor:
    """Boolean (H*W, H*W) mask, True where attention is BLOCKED: key inside the query's window (itself included).

    The window spans rows i - window//2 .. i - window//2 + window - 1 (centred for odd sizes).
    """
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    start = window // 2
    drow = rows[None, :] - rows[:, None] + start
    dcol = cols[None, :] - cols[:, None] + start
    return (drow >= 0) & (drow < window) & (dcol >= 0) & (dcol < window)


class NeighbourMaskedAttention(nn.Module):
    """Multi-head attention over (B, L, D) tensors with an optional boolean blocking mask (Lq, Lk)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.dim, self.heads = int(dim), int(heads)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        b, lq, d = query.shape
        lk = key.shape[1]
        h, hd = self.heads, d // self.heads
        q = self.q_proj(query).reshape(b, lq, h, hd).transpose(1, 2)
        k = self.k_proj(key).reshape(b, lk, h, hd).transpose(1, 2)
        v = self.v_proj(value).reshape(b, lk, h, hd).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * hd**-0.5
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        weights = self.dropout(scores.softmax(dim=-1))
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, lq, d)
        return self.out_proj(out)
