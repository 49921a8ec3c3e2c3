"""Learned 2-D position embedding (spec section 1.1, step 4).

A row table (H x D/2) and a column table (W x D/2), both initialised uniform(0, 1), concatenated
per grid position to D channels. UniAD adds it to attention queries and keys, never to values.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LearnedPositionEmbedding2d(nn.Module):
    """Position embedding of a (height x width) token grid: forward() -> (height*width, dim), row-major."""

    def __init__(self, height: int, width: int, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"position embedding dim must be even (half rows, half columns), got {dim}")
        self.height, self.width = int(height), int(width)
        self.row_embed = nn.Parameter(torch.empty(self.height, dim // 2))
        self.col_embed = nn.Parameter(torch.empty(self.width, dim // 2))
        nn.init.uniform_(self.row_embed)
        nn.init.uniform_(self.col_embed)

    def forward(self) -> Tensor:
        cols = self.col_embed.unsqueeze(0).expand(self.height, -1, -1)
        rows = self.row_embed.unsqueeze(1).expand(-1, self.width, -1)
        return torch.cat([cols, rows], dim=-1).reshape(self.height * self.width, -1)
