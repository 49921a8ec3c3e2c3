"""Neighbour-masked attention (spec section 1.1 "Neighbour-masked attention", section 9 item 8).

The mask BLOCKS a window around each token on the token grid, the token itself included: a query
may attend anywhere except its own neighbourhood, which removes the identity shortcut. UniAD uses
the same mask in the encoder self-attention and both decoder attentions.

The attention is written out (projections, QK^T, softmax, AV) rather than using
nn.MultiheadAttention so the profiler can see the masked QK^T product that fvcore and calflops
miss; its parameter layout (q, k, v and out projections with biases) has exactly the size of
nn.MultiheadAttention(dim, heads): 4*D*D + 4*D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MASK_SPANS = ("official", "exact")
ATTENTION_IMPLS = ("sdpa", "baddbmm", "matmul")
ATTENTION_INITS = ("packed_xavier", "per_projection_xavier")


def neighbour_window(config_value, grid: tuple[int, int]) -> int:
    """The neighbourhood size for a grid: an int from config, or "auto" = min(grid) // 2 (7 at 14x14, 8 at 16x16 as ADer)."""
    window = max(1, min(grid) // 2) if config_value in (None, "auto") else int(config_value)
    if window < 1 or window >= min(grid):
        raise ValueError(
            f"neighbour_window={config_value!r} gives a {window}x{window} window on a {grid[0]}x{grid[1]} token grid; "
            f"it must be between 1 and {min(grid) - 1} or every token would be blocked from all others"
        )
    return window


def neighbour_mask(height: int, width: int, window: int, span: str = "official") -> Tensor:
    """Boolean (H*W, H*W) mask, True where attention is BLOCKED: key inside the query's window (itself included).

    span "official" (UniAD's ``generate_mask``): rows i - window//2 .. i + window//2 inclusive, so an
    odd window blocks window x window and an even one (8, the 256-px setting) blocks (window+1)^2.
    span "exact": exactly window x window, rows i - window//2 .. i - window//2 + window - 1.
    """
    if span not in MASK_SPANS:
        raise ValueError(f"neighbour_mask_span={span!r}: expected one of {', '.join(MASK_SPANS)}")
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    half = window // 2
    extent = 2 * half + 1 if span == "official" else window
    drow = rows[None, :] - rows[:, None] + half
    dcol = cols[None, :] - cols[:, None] + half
    blocked = (drow >= 0) & (drow < extent) & (dcol >= 0) & (dcol < extent)
    if bool(blocked.all(dim=1).any()):
        raise ValueError(
            f"a {window} neighbour window (span {span!r}, {extent}x{extent} blocked) covers the whole "
            f"{height}x{width} token grid: some token could attend to nothing"
        )
    return blocked


class NeighbourMaskedAttention(nn.Module):
    """Multi-head attention over (B, L, D) tensors with an optional boolean blocking mask (Lq, Lk).

    ``impl`` picks one of three formulations of the same function (benchmarks/bench_attention.py
    times them; outputs agree within 2e-7): "sdpa" (``F.scaled_dot_product_attention`` with the
    additive mask; the fastest on one CPU thread, 0.56-0.88x of baddbmm's time over runs), "baddbmm" as PyTorch's
    nn.MultiheadAttention computes it for UniAD (q pre-scaled, the additive float mask added inside
    one batched matmul) and "matmul" (QK^T, then scale, then an out-of-place masked_fill).
    ``init`` "packed_xavier" is UniAD's: nn.MultiheadAttention draws one xavier-uniform 3D x D
    in_proj (bound from fan_in D, fan_out 3D) with zero bias; "per_projection_xavier" draws each D x D
    projection on its own (about sqrt(2) larger). The out projection is xavier D x D, bias zero.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, impl: str = "sdpa", init: str = "packed_xavier"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={impl!r}: expected one of {', '.join(ATTENTION_IMPLS)}")
        if init not in ATTENTION_INITS:
            raise ValueError(f"attention_init={init!r}: expected one of {', '.join(ATTENTION_INITS)}")
        self.dim, self.heads, self.impl, self.init = int(dim), int(heads), impl, init
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.reset_after_xavier()

    @torch.no_grad()
    def reset_after_xavier(self) -> None:
        """Apply ``init`` (run again by xavier_init_ after it has re-drawn every Linear)."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if self.init == "packed_xavier":
            packed = nn.init.xavier_uniform_(torch.empty(3 * self.dim, self.dim))
            for proj, rows in zip(projections, packed.split(self.dim)):
                proj.weight.copy_(rows)
        else:
            for proj in projections:
                nn.init.xavier_uniform_(proj.weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        for proj in (*projections, self.out_proj):
            nn.init.zeros_(proj.bias)

    def _heads(self, x: Tensor, proj: nn.Linear) -> Tensor:
        b, l, _ = x.shape
        return proj(x).reshape(b, l, self.heads, self.dim // self.heads).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        b, lq, d = query.shape
        hd = d // self.heads
        q, k, v = self._heads(query, self.q_proj), self._heads(key, self.k_proj), self._heads(value, self.v_proj)
        additive = None if mask is None else torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(mask, float("-inf"))
        if self.impl == "sdpa":
            p = self.dropout.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive, dropout_p=p)
        elif self.impl == "baddbmm":
            q = (q * hd**-0.5).reshape(b * self.heads, lq, hd)
            kt = k.reshape(b * self.heads, -1, hd).transpose(1, 2)
            scores = torch.bmm(q, kt) if additive is None else torch.baddbmm(additive, q, kt)
            weights = self.dropout(scores.softmax(dim=-1))
            out = torch.bmm(weights, v.reshape(b * self.heads, -1, hd)).reshape(b, self.heads, lq, hd)
        else:
            scores = torch.matmul(q, k.transpose(-2, -1)) * hd**-0.5
            if mask is not None:
                scores = scores.masked_fill(mask, float("-inf"))
            out = torch.matmul(self.dropout(scores.softmax(dim=-1)), v)
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, d))
