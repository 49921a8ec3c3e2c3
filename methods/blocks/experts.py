"""Feed-forward experts: UniAD's FFN (spec 1.1 step 5) and MoEAD's top-2 mixture of FFN experts (section 5).

MixtureOfExperts dispatches in plain PyTorch: gather each expert's tokens, run the expert,
scatter-add the outputs weighted by the renormalised top-k gate; it ends with MoEAD's internal
residual (x + mixed). Its balance loss is the CV^2 of the RAW router-logit sums over tokens, as
MoEAD's code computes it (not probabilities).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.base import cv_squared, routing_statistics
from methods.blocks.routers import TopKRouter


class FeedForward(nn.Module):
    """Linear(D -> F), ReLU, dropout, Linear(F -> D): the transformer FFN (525,568 parameters at 256/1024)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class MixtureOfExperts(nn.Module):
    """MoEAD's MoE-FFN: per-token top-k of E FFN experts plus the input (internal residual): (B, L, D) -> (B, L, D).

    After each call ``last_routing`` holds per-sample (gate_mean, selection_freq, entropy) and
    ``last_balance_loss`` the CV^2 balance loss (plain attributes, never buffers).
    """

    def __init__(self, dim: int, hidden: int, experts: int = 4, top_k: int = 2, dropout: float = 0.0):
        super().__init__()
        self.router = TopKRouter(dim, experts, top_k)
        self.experts = nn.ModuleList(FeedForward(dim, hidden, dropout) for _ in range(experts))
        # MoEAD's MoE layer builds a LayerNorm it never applies; kept so the count is 4,935,704.
        self.unused_norm = nn.LayerNorm(dim)
        self.last_routing: tuple[Tensor, Tensor, Tensor] | None = None
        self.last_balance_loss: Tensor | None = None

    @property
    def expert_names(self) -> list[str]:
        return [f"expert_{i}" for i in range(len(self.experts))]

    def forward(self, x: Tensor) -> Tensor:
        b, l, d = x.shape
        flat = x.reshape(b * l, d)
        index, weight, logits = self.router(flat)
        mixed = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (index == e).nonzero(as_tuple=True)
            if rows.numel():
                out = expert(flat.index_select(0, rows)) * weight[rows, slot][:, None].to(flat.dtype)
                mixed = mixed.index_add(0, rows, out)
        with torch.no_grad():
            experts = len(self.experts)
            selected = F.one_hot(index, experts).sum(1).bool()
            gates = torch.zeros(b * l, experts, device=x.device).scatter_add(1, index, weight.float())
            self.last_routing = routing_statistics(gates, logits.float().softmax(-1), selected, l)
        self.last_balance_loss = cv_squared(logits.sum(dim=0))
        return flat.reshape(b, l, d) + mixed.reshape(b, l, d)
