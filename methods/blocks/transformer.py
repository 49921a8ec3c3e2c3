"""UniAD's reconstruction transformer (spec section 1.1 steps 1-8, "Decoder layer"), shared by UniAD and UniLEAD.

Tokens (B, L, C) from the neck -> input_proj Linear(C -> D) -> encoder layers (neighbour-masked
self-attention, FFN slot) -> decoder layers (each with its own learned queries: attention 1 on the
encoder output, attention 2 on the previous decoder output, FFN slot) -> LayerNorm ->
output_proj Linear(D -> C). Post-norm sub-layers (residual, then LayerNorm). The position
embedding is added to queries and keys, never to values. The FFN slot is built by a factory, so
UniLEAD swaps in a Mixture of Adapters; ``share_layers`` builds one encoder and one decoder layer
and applies each of them ``layers`` times (MoEAD-style reuse, spec 2.2).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from methods.blocks.attention import NeighbourMaskedAttention, neighbour_mask
from methods.blocks.position import LearnedPositionEmbedding2d


def xavier_init_(module: nn.Module) -> None:
    """UniAD's initialisation: xavier-uniform weights and zero biases on every Linear/Conv (spec 1.1
    "Initialisation"); then modules whose official parameters are not nn.Linears re-draw them
    (``reset_after_xavier``: attention's packed in_proj, fastmoe experts) and adapters re-zero
    their up-projections."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for hook in ("reset_after_xavier", "reset_up_projection"):
        for m in module.modules():
            if hasattr(m, hook):
                getattr(m, hook)()


class EncoderLayer(nn.Module):
    """Post-norm encoder layer: x = LN(x + attn(x+pos, x+pos, x)); x = LN(x + ffn(x))."""

    def __init__(self, dim: int, feedforward: nn.Module, dropout: float, attention: Callable[[], nn.Module]):
        super().__init__()
        self.attention = attention()
        self.feedforward = feedforward
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None) -> Tensor:
        q = x + pos
        x = self.norm1(x + self.dropout1(self.attention(q, q, x, mask)))
        return self.norm2(x + self.dropout2(self.feedforward(x)))


class DecoderLayer(nn.Module):
    """UniAD's layer-wise-query decoder layer (learned queries attend to the encoder output, then
    to the previous decoder output, then the FFN slot); each sub-layer residual + LayerNorm."""

    def __init__(self, dim: int, tokens: int, feedforward: nn.Module, dropout: float, attention: Callable[[], nn.Module]):
        super().__init__()
        self.query = nn.Embedding(tokens, dim)
        self.memory_attention = attention()
        self.previous_attention = attention()
        self.feedforward = feedforward
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, previous: Tensor, memory: Tensor, pos: Tensor, masks: Sequence[Tensor | None]) -> Tensor:
        query = self.query.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        t = self.norm1(query + self.dropout1(self.memory_attention(query + pos, memory + pos, memory, masks[0])))
        t = self.norm2(t + self.dropout2(self.previous_attention(t + pos, previous + pos, previous, masks[1])))
        return self.norm3(t + self.dropout3(self.feedforward(t)))


def routed_modules(module: nn.Module) -> list[nn.Module]:
    """Modules inside ``module`` that record routing (Mixture of Adapters / Experts), in definition order."""
    return [m for m in module.modules() if hasattr(m, "last_routing")]


class ReconstructionTransformer(nn.Module):
    """UniAD's transformer over a (grid_h x grid_w) token grid: tokens (B, L, C) -> reconstruction (B, L, C).

    ``feedforward_factory(site)`` builds the FFN slot of the layer named ``site`` ("encoder.0", ...).
    ``mask_sites``: which of (encoder self-attention, decoder attention 1, decoder attention 2) use
    the neighbour mask; ``mask_span`` how an even window is blocked (see neighbour_mask);
    ``attention_impl`` / ``attention_init`` go to every NeighbourMaskedAttention. After a forward,
    ``routing_stats`` lists (layer name, per-sample routing statistics, balance loss or None) of
    every routed call in call order.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        heads: int,
        grid: tuple[int, int],
        encoder_layers: int,
        decoder_layers: int,
        feedforward_factory: Callable[[str], nn.Module],
        dropout: float = 0.1,
        window: int = 7,
        mask_sites: Sequence[bool] = (True, True, True),
        share_layers: bool = False,
        mask_span: str = "official",
        attention_impl: str = "sdpa",
        attention_init: str = "packed_xavier",
    ):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        tokens = self.grid[0] * self.grid[1]
        self.encoder_rounds, self.decoder_rounds = int(encoder_layers), int(decoder_layers)
        self.share_layers = bool(share_layers)
        self.input_proj = nn.Linear(in_channels, dim)
        self.position = LearnedPositionEmbedding2d(self.grid[0], self.grid[1], dim)
        n_enc = min(1, self.encoder_rounds) if share_layers else self.encoder_rounds
        n_dec = min(1, self.decoder_rounds) if share_layers else self.decoder_rounds
        attention = partial(NeighbourMaskedAttention, dim, heads, dropout, impl=attention_impl, init=attention_init)
        self.encoder = nn.ModuleList(
            EncoderLayer(dim, feedforward_factory(f"encoder.{i}"), dropout, attention) for i in range(n_enc)
        )
        self.decoder = nn.ModuleList(
            DecoderLayer(dim, tokens, feedforward_factory(f"decoder.{i}"), dropout, attention) for i in range(n_dec)
        )
        self.decoder_norm = nn.LayerNorm(dim)
        self.output_proj = nn.Linear(dim, in_channels)
        self.register_buffer("blocked", neighbour_mask(self.grid[0], self.grid[1], window, mask_span), persistent=False)
        self.mask_sites = tuple(bool(s) for s in mask_sites)
        if len(self.mask_sites) != 3:
            raise ValueError(f"neighbour_mask_sites needs 3 booleans (encoder, decoder attention 1, decoder attention 2), got {mask_sites!r}")
        self.routing_stats: list[tuple[str, tuple | None, Tensor | None]] = []

    def _mask(self, site: int) -> Tensor | None:
        return self.blocked if self.mask_sites[site] else None

    def _log_routing(self, name: str, layer: nn.Module) -> None:
        # Captured after every call: a shared layer overwrites its statistics in the next round.
        for i, module in enumerate(routed_modules(layer)):
            self.routing_stats.append((name if i == 0 else f"{name}.{i}", module.last_routing, module.last_balance_loss))

    def forward(self, tokens: Tensor) -> Tensor:
        self.routing_stats = []
        pos = self.position().unsqueeze(0)
        memory = self.input_proj(tokens)
        for i in range(self.encoder_rounds):
            layer = self.encoder[0 if self.share_layers else i]
            memory = layer(memory, pos, self._mask(0))
            self._log_routing(f"encoder.{i}", layer)
        out = memory
        for i in range(self.decoder_rounds):
            layer = self.decoder[0 if self.share_layers else i]
            out = layer(out, memory, pos, (self._mask(1), self._mask(2)))
            self._log_routing(f"decoder.{i}", layer)
        return self.output_proj(self.decoder_norm(out))
