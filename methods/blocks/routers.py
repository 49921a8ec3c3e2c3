"""Routers: UniLEAD's four routing modes (spec Part A, UniLEAD item 5) and MoEAD's top-k gate (section 5).

``route_single`` turns router logits (N, K) into one-adapter-per-token or dense gates:
- ``softmax``: every adapter, weighted by softmax(logits) (dense);
- ``top1``: the argmax adapter, its output scaled by its softmax probability so the router
  receives gradient;
- ``gumbel_top1``: in training, Gumbel-softmax with temperature tau, straight-through over the
  dense mixture: forward value = the noisy-argmax adapter's output, backward = gradient of the
  soft mixture sum_k soft_k * A_k, so every adapter and the router get gradient (``dense``, the
  default); ``selected`` is the older form (only the chosen adapter runs, weight 1 with the
  gradient of its soft probability). In eval, argmax, no noise, only that adapter runs;
- ``first``: always adapter 0 with weight 1 (no router).

``TopKRouter`` is MoEAD's per-token Linear(D -> E): top-k of the raw logits, softmax over the k.
``top_k_scatter`` is AnomalyMoE's per-image form: the same top-k softmax, scattered into a sparse E-vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROUTING_MODES = ("softmax", "gumbel_top1", "top1", "first")
GUMBEL_BACKWARDS = ("dense", "selected")


@dataclass
class RoutingDecision:
    """How tokens are routed: dense gates (N, K), or per-token index + weight for sparse modes.

    probs (N, K) is the router's softmax (one-hot for ``first``), used for statistics and the
    balance loss; gates (N, K) the weight each adapter's output gets (zeros where unselected).
    soft (N, K), set only for gumbel_top1 training with the dense backward, is the Gumbel-softmax
    sample whose mixture carries the gradient while ``index`` fixes the forward value.
    """

    gates: Tensor
    probs: Tensor
    selected: Tensor
    index: Tensor | None = None
    weight: Tensor | None = None
    soft: Tensor | None = None

    @property
    def sparse(self) -> bool:
        return self.index is not None


def route_single(
    logits: Tensor | None,
    mode: str,
    *,
    tokens: int,
    experts: int,
    training: bool,
    temperature: float = 1.0,
    device=None,
    dense_backward: bool = True,
) -> RoutingDecision:
    """Routing decision for ``tokens`` tokens over ``experts`` adapters (logits None only for ``first``).

    ``dense_backward`` (gumbel_top1 training only): return the soft sample so the caller runs a
    straight-through estimator over the dense mixture; False keeps the selected-adapter-only form.
    """
    if mode not in ROUTING_MODES:
        raise ValueError(f"unknown routing mode {mode!r}; choose one of {', '.join(ROUTING_MODES)}")
    if mode == "first" or logits is None:
        if mode != "first":
            raise ValueError(f"routing mode {mode!r} needs router logits")
        index = torch.zeros(tokens, dtype=torch.long, device=device)
        onehot = F.one_hot(index, experts).float()
        return RoutingDecision(onehot, onehot, onehot.bool(), index, torch.ones(tokens, device=device))
    probs = logits.float().softmax(dim=-1)
    if mode == "softmax":
        selected = F.one_hot(probs.argmax(-1), experts).bool()
        return RoutingDecision(probs, probs, selected)
    if mode == "top1" or not training:
        index = probs.argmax(-1)
        weight = probs.gather(1, index[:, None])[:, 0] if mode == "top1" else torch.ones_like(probs[:, 0])
    else:
        gumbel = -torch.empty_like(probs).exponential_().log()
        soft = ((logits.float() + gumbel) / float(temperature)).softmax(dim=-1)
        index = soft.argmax(-1)
        if dense_backward:
            onehot = F.one_hot(index, experts).to(soft.dtype)
            return RoutingDecision(onehot, probs, onehot.bool(), index, torch.ones_like(soft[:, 0]), soft)
        chosen = soft.gather(1, index[:, None])[:, 0]
        weight = chosen - chosen.detach() + 1.0  # straight-through: value 1, gradient of the soft sample
    onehot = F.one_hot(index, experts)
    return RoutingDecision(onehot * weight[:, None], probs, onehot.bool(), index, weight)


class TopKRouter(nn.Module):
    """Per-token Linear(dim -> experts); top-k of the raw logits, softmax over the k selected (MoEAD)."""

    def __init__(self, dim: int, experts: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError(f"top_k={top_k} must be between 1 and the number of experts ({experts})")
        self.gate = nn.Linear(dim, experts)
        self.experts, self.top_k = int(experts), int(top_k)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """tokens (N, D) -> (index (N, k), weight (N, k), logits (N, E))."""
        logits = self.gate(tokens)
        values, index = logits.topk(self.top_k, dim=-1)
        return index, values.softmax(dim=-1), logits


def top_k_scatter(logits: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """Raw logits (N, E) -> (weights (N, E), selected (N, E) bool): softmax over the ``top_k`` largest
    logits scattered back into a sparse E-vector summing to 1, zeros elsewhere (AnomalyMoE, spec 4.2)."""
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k={top_k} must be between 1 and the number of experts ({logits.shape[-1]})")
    values, index = logits.topk(top_k, dim=-1)
    weights = torch.zeros_like(logits).scatter(-1, index, values.softmax(dim=-1))
    selected = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, True)
    return weights, selected
