"""Adapters and the Mixture of Adapters (UniLEAD eqs. 6-9; spec Part A, UniLEAD items 1-5).

BottleneckAdapter: Linear(D -> d), activation, Gated Residual Adapter nonlinearity at width d,
Linear(d -> D) with a zero-initialised up-projection (so a fresh adapter outputs zeros).
GatedResidual: h + g * act(W h + b) with W block-diagonal (16 x 16 blocks; ``linear``: full
d x d; ``elementwise``: the older h + g * act(h), a per-channel scale after a ReLU), g a
per-channel vector ("vector", default) or a per-token sigmoid(Linear(d -> d)(h)) ("token_sigmoid").
SqueezeExcitation: mean over one image's tokens -> Linear(D -> D/r) -> ReLU -> Linear -> sigmoid,
scaling the channels of the mixed output.
MixtureOfAdapters: a router picks/weights adapters per token (or per image); only selected
adapters run in the sparse modes at evaluation (gumbel_top1 training runs them all for its
dense straight-through backward); the mixed output goes through SE. It returns the residual
branch A(F''); the layer adds it to F'' (F = identity, Part A item 1).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from methods.base import cv_squared, routing_statistics
from methods.blocks.routers import GUMBEL_BACKWARDS, ROUTING_MODES, route_single

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
GRA_GATES = ("vector", "token_sigmoid")
GRA_FORMS = ("block_linear", "linear", "elementwise")
ROUTER_GRANULARITIES = ("token", "image")


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class GatedResidual(nn.Module):
    """Gated Residual Adapter at the bottleneck width d (UniLEAD sec. 3.3: "integrates nonlinearity
    and residual modulation"; the paper gives no equation).

    ``form``:
    - ``block_linear`` (default): h + g * act(W h + b), W block-diagonal with 16 x 16 blocks
      (one full block for d = 16; a full d x d when d is not a multiple of 16), b a bias;
    - ``linear``: the same with a full d x d W (adds 0.068 GFLOPs to the paper preset, 1.98 G);
    - ``elementwise``: h + g * act(h), the form before issue 8. With ReLU after the down-projection
      h >= 0, so this is exactly (1 + g) * h, a per-channel scale and no nonlinearity.
    W is xavier-uniform per block, b zero, so act(W h + b) has its kink inside the data. The gate g
    (``gate``: a per-channel vector, or a per-token sigmoid(Linear(d -> d)(h))) starts at
    ``GATE_INIT`` for the transform forms: a zero gate would leave W without gradient until g moved.
    """

    GATE_INIT = 0.1
    BLOCK = 16

    def __init__(self, width: int, gate: str = "vector", activation: str = "relu", form: str = "block_linear"):
        super().__init__()
        if gate not in GRA_GATES:
            raise ValueError(f"unknown GRA gate {gate!r}; choose one of {', '.join(GRA_GATES)}")
        if form not in GRA_FORMS:
            raise ValueError(f"unknown GRA form {form!r}; choose one of {', '.join(GRA_FORMS)}")
        self.kind, self.form, self.width = gate, form, int(width)
        self.activation = make_activation(activation)
        if form == "elementwise":
            self.weight = self.bias = None
        else:
            block = self.BLOCK if form == "block_linear" and self.width % self.BLOCK == 0 else self.width
            self.weight = nn.Parameter(torch.empty(self.width // block, block, block))
            self.bias = nn.Parameter(torch.zeros(self.width))
        if gate == "vector":
            self.gate = nn.Parameter(torch.zeros(self.width))
        else:
            self.gate_proj = nn.Linear(self.width, self.width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            block = self.weight.shape[-1]
            bound = (6.0 / (2 * block)) ** 0.5  # xavier-uniform over one block (fan_in = fan_out = block)
            nn.init.uniform_(self.weight, -bound, bound)
            nn.init.zeros_(self.bias)
            if self.kind == "vector":
                nn.init.constant_(self.gate, self.GATE_INIT)

    def transform(self, h: Tensor) -> Tensor:
        """W h + b (block-diagonal or full W); h itself for the elementwise form."""
        if self.weight is None:
            return h
        groups, block, _ = self.weight.shape
        blocks = h.reshape(*h.shape[:-1], groups, block)
        return torch.einsum("...gi,gio->...go", blocks, self.weight).reshape(h.shape) + self.bias

    def forward(self, h: Tensor) -> Tensor:
        gate = self.gate if self.kind == "vector" else torch.sigmoid(self.gate_proj(h))
        return h + gate * self.activation(self.transform(h))


class BottleneckAdapter(nn.Module):
    """Linear(D->d), activation, GRA, Linear(d->D) with the up-projection zero-initialised."""

    def __init__(self, dim: int, width: int, activation: str = "relu", gra_gate: str = "vector", gra_form: str = "block_linear"):
        super().__init__()
        self.width = int(width)
        self.down = nn.Linear(dim, width)
        self.activation = make_activation(activation)
        self.gra = GatedResidual(width, gra_gate, activation, gra_form)
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
        gra_form: str = "block_linear",
        gumbel_backward: str = "dense",
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
        if gumbel_backward not in GUMBEL_BACKWARDS:
            raise ValueError(f"unknown gumbel_backward {gumbel_backward!r}; choose one of {', '.join(GUMBEL_BACKWARDS)}")
        self.gumbel_backward = gumbel_backward
        self.compute_balance_loss = bool(compute_balance_loss)
        self.adapters = nn.ModuleList(BottleneckAdapter(dim, w, activation, gra_gate, gra_form) for w in self.widths)
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

    def _straight_through_dense(self, flat: Tensor, decision) -> Tensor:
        """gumbel_top1 training: the value of the selected adapter, the gradient of the soft mixture.

        Every adapter runs on every token; the forward value is exactly the hard (noisy-argmax)
        adapter's output, and the backward is that of sum_k soft_k * A_k(x), so each adapter and
        the router get gradient from every token (UniLEAD sec. 4.6: partial gradient flow through
        several adapters).
        """
        outputs = torch.stack([adapter(flat) for adapter in self.adapters], dim=1)  # (N, K, D)
        hard = outputs.gather(1, decision.index[:, None, None].expand(-1, 1, outputs.shape[-1]))[:, 0]
        soft = torch.einsum("nk,nkd->nd", decision.soft.to(flat.dtype), outputs)
        # hard + (soft - soft) is hard bit for bit; only the soft mixture carries gradient.
        return hard.detach() + (soft - soft.detach())

    def forward(self, x: Tensor) -> Tensor:
        b, l, d = x.shape
        k = len(self.adapters)
        flat = x.reshape(b * l, d)
        logits = self._logits(x)
        mode = self.routing if self.router is not None else "first"
        decision = route_single(
            logits,
            mode,
            tokens=b * l,
            experts=k,
            training=self.training,
            temperature=self.temperature,
            device=x.device,
            dense_backward=self.gumbel_backward == "dense",
        )
        if decision.soft is not None:
            mixed = self._straight_through_dense(flat, decision)
        elif decision.sparse:
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
