"""MoEAD (Meng et al., ECCV'24), reproduced as the fact sheet describes (spec section 5).

No encoder: the projected (jittered) tokens are the memory. One shared decoder block (an
attention from the shared learned queries to the memory, an attention to the previous round's
output, two shared MoE-FFN sub-layers) applied for 4 rounds; every round has its own 4
LayerNorms (16 in all). Each MoE-FFN: 4 experts FFN 256->1024->256, per-token top-2 of the raw
router logits with softmax over the two, internal residual, then that round's LayerNorm;
dispatched in plain PyTorch (no fastmoe). Balance loss: CV^2 of the raw-logit sums over tokens;
each call overwrites it, so only the last round's survives; averaged over the two MoE layers,
weight 1e-2. Paper preset: 4,935,704 parameters (2 MHA 526,336; queries 50,176; 16 LayerNorms
8,192; 2 x (4 experts 525,568 + gate 1,028 + an unused LayerNorm 512); projections 139,792;
position 3,584). Training: UniAD's recipe with AdamW lr 2e-4. Map and score: as UniAD.

Decision (MoEAD's exact sub-layer order is not in the fact sheet): per round
t = LN0(q + attn_memory(q)); t = LN1(moe1(t)); t = LN2(t + attn_previous(t)); out = LN3(moe2(t)),
mirroring UniAD's decoder layer with an MoE-FFN after each attention. The routing record has one
"layer" per (round, MoE layer) call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from methods import register
from methods.blocks.attention import NeighbourMaskedAttention, neighbour_mask
from methods.blocks.experts import MixtureOfExperts
from methods.blocks.position import LearnedPositionEmbedding2d
from methods.config_schema import Int, Real, Rule
from methods.reconstruction import TokenReconstructionMethod
from methods.uniad import _CPU as _UNIAD_CPU
from methods.uniad import _PAPER as _UNIAD_PAPER
from methods.uniad import UniAD

_PAPER = {
    **{k: v for k, v in _UNIAD_PAPER.items() if k not in ("encoder_layers", "decoder_layers")},
    "rounds": 4,
    "experts": 4,
    "top_k": 2,
    "balance_loss_weight": 1e-2,
    "lr": 2e-4,
}
_CPU = {
    **{k: v for k, v in _UNIAD_CPU.items() if k not in ("encoder_layers", "decoder_layers")},
    "rounds": 2,
    "experts": 4,
    "top_k": 2,
    "balance_loss_weight": 1e-2,
}


class SharedMoEDecoder(nn.Module):
    """MoEAD's reconstruction module: tokens (B, L, C) -> (B, L, C) through one shared block applied ``rounds`` times."""

    def __init__(self, channels: int, dim: int, heads: int, hidden: int, grid: tuple[int, int], window: int,
                 rounds: int, experts: int, top_k: int, dropout: float, mask_sites):
        super().__init__()
        tokens = grid[0] * grid[1]
        self.rounds = int(rounds)
        self.input_proj = nn.Linear(channels, dim)
        self.position = LearnedPositionEmbedding2d(grid[0], grid[1], dim)
        self.query = nn.Embedding(tokens, dim)
        self.memory_attention = NeighbourMaskedAttention(dim, heads, dropout)
        self.previous_attention = NeighbourMaskedAttention(dim, heads, dropout)
        self.moe1 = MixtureOfExperts(dim, hidden, experts, top_k, dropout)
        self.moe2 = MixtureOfExperts(dim, hidden, experts, top_k, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4 * self.rounds))
        self.dropout = nn.Dropout(dropout)
        self.output_proj = nn.Linear(dim, channels)
        blocked = neighbour_mask(grid[0], grid[1], window)
        self.register_buffer("blocked", blocked, persistent=False)
        self.mask_sites = [bool(s) for s in mask_sites]
        self.routing_stats: list[tuple[str, Any, Tensor | None]] = []

    def _mask(self, site: int) -> Tensor | None:
        return self.blocked if self.mask_sites[site] else None

    def forward(self, tokens: Tensor) -> Tensor:
        self.routing_stats = []
        pos = self.position().unsqueeze(0)
        memory = self.input_proj(tokens)
        query = self.query.weight.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        out = memory
        for r in range(self.rounds):
            n0, n1, n2, n3 = self.norms[4 * r : 4 * r + 4]
            t = n0(query + self.dropout(self.memory_attention(query + pos, memory + pos, memory, self._mask(1))))
            t = n1(self.moe1(t))
            self.routing_stats.append((f"round{r}.moe1", self.moe1.last_routing, self.moe1.last_balance_loss))
            t = n2(t + self.dropout(self.previous_attention(t + pos, out + pos, out, self._mask(2))))
            out = n3(self.moe2(t))
            self.routing_stats.append((f"round{r}.moe2", self.moe2.last_routing, self.moe2.last_balance_loss))
        return self.output_proj(out)

    def balance_loss(self) -> Tensor:
        """Mean of the two MoE layers' last (i.e. last round's) CV^2 losses, as MoEAD's code keeps them."""
        return (self.moe1.last_balance_loss + self.moe2.last_balance_loss) / 2


@register("moead")
class MoEAD(TokenReconstructionMethod):
    """MoEAD: a shared MoE decoder block reused for several rounds over UniAD's features."""

    config_schema = {
        **{k: v for k, v in UniAD.config_schema.items() if k not in ("encoder_layers", "decoder_layers")},
        "rounds": Int(min=1),
        "experts": Int(min=1),
        "top_k": Int(min=1),
        "balance_loss_weight": Real(min=0),
    }
    config_rules = (
        *UniAD.config_rules,
        Rule("top_k", lambda c: c["top_k"] <= c["experts"], "at most experts (each token picks top_k of them)"),
    )

    version = 1
    presets = {"paper": _PAPER, "cpu": _CPU}

    def build_reconstruction(self, channels: int) -> nn.Module:
        c = self.config
        return SharedMoEDecoder(
            channels, int(c["hidden_dim"]), int(c["num_heads"]), int(c["ffn_dim"]), self.grid, self.window,
            int(c["rounds"]), int(c["experts"]), int(c["top_k"]), float(c["dropout"]), c["neighbour_mask_sites"],
        )

    def compute_losses(self, reconstruction: Tensor, target: Tensor) -> dict[str, Tensor]:
        mse = torch.mean((reconstruction - target) ** 2)
        balance = self.reconstruction.balance_loss()
        return {"loss": mse + float(self.config["balance_loss_weight"]) * balance, "reconstruction": mse, "balance": balance}
