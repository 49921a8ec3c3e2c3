"""Feed-forward experts: UniAD's FFN (spec 1.1 step 5) and MoEAD's top-2 mixture of FFN experts (section 5).

MixtureOfExperts dispatches in plain PyTorch: gather each expert's tokens, run the expert,
scatter-add the outputs weighted by the renormalised top-k gate; it ends with MoEAD's internal
residual after dropout, x + dropout(mixed) (MoEAD's ``CustomizedMoEPositionwiseFF``, post-norm
branch). Its balance loss is the CV^2 of the RAW router-logit sums over tokens, as MoEAD's code
computes it (not probabilities). Experts start as fastmoe's ``FMoELinear`` starts them.
"""

from __future__ import annotations

import math

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


EXPERT_INITS = ("fastmoe", "xavier")


class MixtureOfExperts(nn.Module):
    """MoEAD's MoE-FFN: per-token top-k of E FFN experts plus the input (internal residual): (B, L, D) -> (B, L, D).

    ``expert_init`` "fastmoe" (spec section 5; MoEAD's experts are fastmoe ``FMoELinear``s, which
    UniAD's xavier initialiser does not touch): each expert weight is kaiming_uniform(a=sqrt(5))
    over a (1, out, in) tensor, whose fan_in is out*in, so uniform(+-1/sqrt(out*in)), std about
    0.0011 at 256/1024; biases zero. Each MoE layer therefore starts close to the identity.
    "xavier": xavier-uniform per expert Linear (std about 0.0395), biases zero. The router's gate
    is an nn.Linear in both: xavier, bias zero.

    After each call ``last_routing`` holds per-sample (gate_mean, selection_freq, entropy) and
    ``last_balance_loss`` the CV^2 balance loss (plain attributes, never buffers).
    """

    def __init__(self, dim: int, hidden: int, experts: int = 4, top_k: int = 2, dropout: float = 0.0,
                 expert_init: str = "fastmoe"):
        super().__init__()
        if expert_init not in EXPERT_INITS:
            raise ValueError(f"expert_init={expert_init!r}: expected one of {', '.join(EXPERT_INITS)}")
        self.expert_init = expert_init
        self.router = TopKRouter(dim, experts, top_k)
        self.experts = nn.ModuleList(FeedForward(dim, hidden, dropout) for _ in range(experts))
        self.dropout = nn.Dropout(dropout)
        # MoEAD's MoE layer builds a LayerNorm it never applies; kept so the count is 4,935,704.
        self.unused_norm = nn.LayerNorm(dim)
        self.last_routing: tuple[Tensor, Tensor, Tensor] | None = None
        self.last_balance_loss: Tensor | None = None
        self.reset_after_xavier()

    @torch.no_grad()
    def reset_after_xavier(self) -> None:
        """Apply ``expert_init`` to the experts (run again by xavier_init_ after it re-drew every Linear)."""
        for expert in self.experts:
            for linear in (expert.fc1, expert.fc2):
                if self.expert_init == "fastmoe":
                    packed = torch.empty(1, *linear.weight.shape)
                    linear.weight.copy_(nn.init.kaiming_uniform_(packed, a=math.sqrt(5))[0])
                else:
                    nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)

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
        return x + self.dropout(mixed.reshape(b, l, d))
