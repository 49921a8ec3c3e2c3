"""Dinomaly's decoder pieces (spec section 7; AnomalyMoE's patch experts reuse them, spec 4.3).

LinearAttention2: q and k through the elu + 1 kernel, out_i = phi(q_i) . sum_s phi(k_s) v_s^T
divided by phi(q_i) . sum_s phi(k_s), per head; no softmax, no 1/sqrt(d) scale.
ViTBlock: pre-norm block x + attn(LN(x)), then x + MLP(LN(x)); GELU MLP, qkv bias, LayerNorm eps
1e-8, no dropout or drop path.
NoisyBottleneck (the official ``bMlp``): Linear -> GELU -> Linear with the same Dropout on its
input, its hidden layer and its output; the dropout is the only corruption (no added noise).
dinomaly_init_: Linear weights trunc-normal std 0.01 cut at +-0.03, biases 0; LayerNorm 1 and 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYER_NORM_EPS = 1e-8


class LinearAttention2(nn.Module):
    """Multi-head linear attention with the elu + 1 feature map (the official LinearAttention2)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"LinearAttention2: dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        kv = torch.einsum("bhsd,bhse->bhde", k, v)
        normaliser = torch.einsum("bhsd,bhd->bhs", q, k.sum(dim=2))
        out = torch.einsum("bhsd,bhde->bhse", q, kv) / normaliser.unsqueeze(-1)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    """Pre-norm transformer block with LinearAttention2 and a GELU MLP of ``mlp_ratio * dim``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, eps: float = LAYER_NORM_EPS):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = LinearAttention2(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class NoisyBottleneck(nn.Module):
    """Dinomaly's bMlp: dropout -> Linear -> GELU -> dropout -> Linear -> dropout (one Dropout, three sites)."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.fc1(self.drop(x)))
        return self.drop(self.fc2(self.drop(x)))


def dinomaly_init_(module: nn.Module, std: float = 0.01) -> None:
    """The official trainable-module init: Linear trunc-normal(std, cut at +-3 std), bias 0; LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, a=-3 * std, b=3 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
