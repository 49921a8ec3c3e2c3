"""Adapters and the Mixture of Adapters (UniLEAD eqs. 6-9; spec Part A, UniLEAD items 1-5).

BottleneckAdapter: Linear(D -> d), activation, Gated Residual Adapter nonlinearity at width d,
Linear(d -> D) with a zero-initialised up-projection (so a fresh adapter outputs zeros).
GatedResidual: h + g * act(h) with g a learnable per-channel vector initialised to zero
("vector", default) or a per-token sigmoid(Linear(d -> d)(h)) ("token_sigmoid").
SqueezeExcitation: mean over one image's tokens -> Linear(D -> D/r) -> ReLU -> Linear -> sigmoid,
scaling the channels of the mixed output.
MixtureOfAdapters: a router picks/weights adapters per token (or per image); only selected
adapters run in the sparse modes; the mixed output goes through SE. It returns the residual
branch A(F''); the layer adds it to F'' (F = identity, Part A item 1).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from methods.base import cv_squared, routing_statistics
from methods.blocks.routers import ROUTING_MODES, route_single

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
GRA_GATES = ("vector", "token_sigmoid")
ROUTER_GRANULARITIES = ("token", "image")


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class GatedResidual(nn.Module):
    """Gated Residual Adapter nonlinearity at the bottleneck: h + gate * act(h)."""

    def __init__(self, width: int, gate: str = "vector", activation: str = "relu"):
        super().__init__()
        if gate not in GRA_GATES:
            raise ValueError(f"unknown GRA gate {gate!r}; choose one of {', '.join(GRA_GATES)}")
        self.kind = gate
        self.activation = make_activation(activation)
        if gate == "vector":
            self.gate = nn.Parameter(torch.zeros(width))
        else:
            self.gate_proj = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        gate = self.gate if self.kind == "vector" else torch.sigmoid(self.gate_proj(h))
        return h + gate * self.activation(h)


class BottleneckAdapter(nn.Module):
    """Linear(D->d), activation, GRA, Linear(d->D) with the up-projection zero-initialised."""

    def __init__(self, dim: int, width: int, activation: str = "relu", gra_gate: str = "vector"):
        super().__init__()
        self.width = int(width)
        self.down = nn.Linear(dim, width)
        self.activation = make_activation(activation)
        self.gra = GatedResidual(width, gra_gate, activation)
        self.up = nn.Linear(width, dim)
        self.reset_up_projection()

    def reset_up_projection(self) -> None:
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.gra(self.activation(self.down(x))))


class SqueezeExcitation(nn.Module):
    """Channel recalibration of (B, L, D) tokens, squeezing over each image's tokens (UniLEAD eq. 7)."""

    def __init__(self, dim: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, dim // int(reduction))
        self.squeeze = nn.Linear(dim, hidden)
        self.excite = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean(dim=1)))))
        return x * scale.unsqueeze(1)


class MixtureOfAdapters(nn.Module):
    """UniLEAD's MoA: routed heterogeneous bottleneck adapters + SE; forward (B, L, D) -> branch (B, L, D).

    After each call ``last_routing`` holds (gate_mean, selection_freq, entropy) per sample and
    ``last_balance_loss`` the CV^2 of the router's importance (0 when the weight is 0). These are
    plain attributes, not buffers, so DDP never broadcasts them.
    """

    def __init__(
        self,
        dim: int,
        widths: Sequence[int],
        routing: str = "softmax",
        router: str = "token",
        activation: str = "relu",
        gra_gate: str = "vector",
        se_reduction: int | None = 16,
        compute_balance_loss: bool = False,
        temperature: float = 1.0,
    ):
        super().__init__()
        if not widths:
            raise ValueError("a mixture of adapters needs at least one bottleneck width")
        if routing not in ROUTING_MODES:
            raise ValueError(f"unknown routing mode {routing!r}; choose one of {', '.join(ROUTING_MODES)}")
        if router not in ROUTER_GRANULARITIES:
            raise ValueError(f"unknown router granularity {router!r}; choose one of {', '.join(ROUTER_GRANULARITIES)}")
        self.widths = [int(w) for w in widths]
        self.routing, self.granularity = routing, router
        self.temperature = float(temperature)
        self.compute_balance_loss = bool(compute_balance_loss)
        self.adapters = nn.ModuleList(BottleneckAdapter(dim, w, activation, gra_gate) for w in self.widths)
        # One adapter needs no router; `first` never consults it.
        self.router = nn.Linear(dim, len(self.widths)) if len(self.widths) > 1 and routing != "first" else None
        self.se = SqueezeExcitation(dim, se_reduction) if se_reduction else None
        self.last_routing: tuple[Tensor, Tensor, Tensor] | None = None
        self.last_balance_loss: Tensor | None = None

    @property
    def expert_names(self) -> list[str]:
        return [f"adapter_d{w}" for w in self.widths]

    def _logits(self, x: Tensor) -> Tensor | None:
        if self.router is None:
            return None
        if self.granularity == "image":
            return self.router(x.mean(dim=1)).repeat_interleave(x.shape[1], dim=0)
        return self.router(x.reshape(-1, x.shape[-1]))

    def forward(self, x: Tensor) -> Tensor:
        b, l, d = x.shape
        k = len(self.adapters)
        flat = x.reshape(b * l, d)
        logits = self._logits(x)
        mode = self.routing if self.router is not None else "first"
        decision = route_single(
            logits, mode, tokens=b * l, experts=k, training=self.training, temperature=self.temperature, device=x.device
        )
        if decision.sparse:
            mixed = flat.new_zeros(b * l, d)
            for i, adapter in enumerate(self.adapters):
                rows = (decision.index == i).nonzero(as_tuple=True)[0]
                if rows.numel():
                    out = adapter(flat.index_select(0, rows)) * decision.weight.index_select(0, rows)[:, None].to(flat.dtype)
                    mixed = mixed.index_add(0, rows, out)
        else:
            mixed = sum(decision.gates[:, i : i + 1].to(flat.dtype) * adapter(flat) for i, adapter in enumerate(self.adapters))
        mixed = mixed.reshape(b, l, d)
        if self.se is not None:
            mixed = self.se(mixed)
        with torch.no_grad():
            self.last_routing = routing_statistics(decision.gates.detach(), decision.probs.detach(), decision.selected, l)
        if self.compute_balance_loss and logits is not None:
            self.last_balance_loss = cv_squared(decision.probs.sum(dim=0))
        else:
            self.last_balance_loss = None
        return mixed
