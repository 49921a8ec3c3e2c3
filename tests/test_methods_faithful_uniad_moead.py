"""UniAD and MoEAD as their official code (issue 8 item 10): block order, mask, backbone, initialisations, attention.

The MoEAD reference below is written from the facts of the official ``Wide_Transformer.forward``
and ``CustomizedMoEPositionwiseFF`` (spec section 5), in the official (tokens, batch, channels)
layout with torch's own nn.MultiheadAttention, and shares our module's weights.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import harness  # noqa: F401
import methods
from harness.profiling import count_macs
from methods.blocks.attention import ATTENTION_IMPLS, NeighbourMaskedAttention, neighbour_mask
from methods.blocks.experts import MixtureOfExperts
from methods.moead import SharedMoEDecoder
from test_methods_models import B4_CHANNELS, B4_REDUCTIONS, one_torch_thread  # noqa: F401  (autouse fixture)

DIM, HEADS, HIDDEN, GRID, WINDOW, ROUNDS = 32, 4, 64, (5, 5), 3, 3


# ----------------------------------------------------------------------------- MoEAD block order
def official_mha(ours: NeighbourMaskedAttention) -> nn.MultiheadAttention:
    """torch's nn.MultiheadAttention carrying our attention's weights (packed in_proj = q; k; v)."""
    mha = nn.MultiheadAttention(ours.dim, ours.heads, dropout=0.0)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        mha.out_proj.weight.copy_(ours.out_proj.weight)
        mha.out_proj.bias.copy_(ours.out_proj.bias)
    return mha.eval()


def official_moe(moe: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
    """inp + dropout(FMoE(inp)): top-2 of the raw gate logits, softmax over the two, experts mixed densely (eval)."""
    logits = moe.router.gate(x)
    values, index = logits.topk(moe.router.top_k, dim=-1)
    weights = values.softmax(-1)
    outs = torch.stack([expert(x) for expert in moe.experts], dim=-2)  # (..., E, D)
    chosen = torch.gather(outs, -2, index[..., None].expand(*index.shape, x.shape[-1]))
    return x + (weights[..., None] * chosen).sum(-2)


def official_moead(ours: SharedMoEDecoder, tokens: torch.Tensor) -> torch.Tensor:
    """MoEAD's forward, each round: memory attention, LN, previous-output attention, LN, MoE 1, LN, MoE 2, LN."""
    mask = torch.zeros(ours.blocked.shape).masked_fill(ours.blocked, float("-inf"))
    attn1, attn2 = official_mha(ours.memory_attention), official_mha(ours.previous_attention)
    src = ours.input_proj(tokens.transpose(0, 1))  # (L, B, D)
    pos = ours.position().unsqueeze(1)
    output_decoder = src
    for i in range(ours.rounds):
        tgt = ours.query.weight.unsqueeze(1).expand(-1, src.shape[1], -1)
        tgt = ours.norms[4 * i](tgt + attn1(tgt + pos, src + pos, src, attn_mask=mask)[0])
        tgt = ours.norms[4 * i + 1](tgt + attn2(tgt + pos, output_decoder + pos, output_decoder, attn_mask=mask)[0])
        output_decoder = ours.norms[4 * i + 2](official_moe(ours.moe1, tgt))
        output_decoder = ours.norms[4 * i + 3](official_moe(ours.moe2, output_decoder))
    return ours.output_proj(output_decoder).transpose(0, 1)


def small_decoder(**kwargs) -> SharedMoEDecoder:
    torch.manual_seed(0)
    decoder = SharedMoEDecoder(12, DIM, HEADS, HIDDEN, GRID, WINDOW, ROUNDS, 4, 2, 0.1, [True, True, True], **kwargs)
    with torch.no_grad():  # non-trivial norms and experts, so every sub-layer's place shows in the output
        for p in decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return decoder.eval()


def test_moead_block_order_matches_a_hand_written_reference_of_the_official_order():
    decoder = small_decoder()
    tokens = torch.randn(3, GRID[0] * GRID[1], 12)
    with torch.no_grad():
        ours, reference = decoder(tokens), official_moead(decoder, tokens)
    assert (ours - reference).abs().max().item() < 1e-5
    assert torch.allclose(ours, reference, atol=2e-6, rtol=1e-5)


def test_moead_old_block_order_is_a_named_switch_and_differs():
    official, old = small_decoder(), small_decoder(block_order="moe_after_each_attention")
    old.load_state_dict(official.state_dict())
    tokens = torch.randn(2, GRID[0] * GRID[1], 12)
    with torch.no_grad():
        assert not torch.allclose(old(tokens), official_moead(official, tokens), atol=1e-3)
    assert methods.preset_config("moead", "paper")["block_order"] == "official"
    assert methods.preset_config("moead", "cpu")["block_order"] == "official"
    with pytest.raises(ValueError, match="block_order"):
        small_decoder(block_order="sideways")


def test_moe_output_goes_through_dropout_before_the_residual():
    """CustomizedMoEPositionwiseFF: output = inp + dropout(core_out); with p = 1 only the residual is left."""
    moe = MixtureOfExperts(DIM, HIDDEN, 4, 2, dropout=1.0).train()
    with torch.no_grad():
        for expert in moe.experts:
            expert.fc2.bias.fill_(1.0)  # with the hidden layer dropped, each expert outputs its bias
    x = torch.randn(2, 7, DIM)
    assert torch.equal(moe(x), x)
    moe.dropout.p = 0.0
    assert torch.allclose(moe(x), x + 1.0)  # the two gate weights sum to 1


# ----------------------------------------------------------------------------- neighbour mask
def blocked_rows_and_cols(mask: torch.Tensor, grid: int, row: int, col: int) -> tuple[list[int], list[int]]:
    cells = mask[row * grid + col].reshape(grid, grid).nonzero()
    return sorted(set(cells[:, 0].tolist())), sorted(set(cells[:, 1].tolist()))


@pytest.mark.parametrize("window, side", [(7, 7), (8, 9)])
def test_neighbour_mask_blocks_rows_i_minus_to_i_plus_half_window_as_generate_mask(window, side):
    """UniAD's generate_mask blocks i - w//2 .. i + w//2 inclusive: 7 -> 7x7, 8 -> 9x9 (16x16 grid)."""
    mask = neighbour_mask(16, 16, window)
    rows, cols = blocked_rows_and_cols(mask, 16, 8, 8)
    assert rows == cols == list(range(8 - window // 2, 8 + window // 2 + 1))
    assert int(mask[8 * 16 + 8].sum()) == side * side
    assert int(mask[0].sum()) == (window // 2 + 1) ** 2  # a corner: rows/cols 0 .. w//2
    assert torch.equal(mask, mask.T)


def test_neighbour_mask_exact_span_is_the_old_window_by_window_switch():
    mask = neighbour_mask(16, 16, 8, span="exact")
    assert int(mask[8 * 16 + 8].sum()) == 64
    assert blocked_rows_and_cols(mask, 16, 8, 8)[0] == list(range(4, 12))
    assert torch.equal(neighbour_mask(14, 14, 7, span="exact"), neighbour_mask(14, 14, 7))
    assert methods.preset_config("uniad", "paper")["neighbour_mask_span"] == "official"
    with pytest.raises(ValueError, match="whole"):
        neighbour_mask(8, 8, 8)  # 9x9 blocked on an 8x8 grid: a token could attend to nothing


def test_uniad_at_256_px_builds_the_official_9x9_mask():
    model = methods.build("uniad", "paper", {"image_size": 256, "neighbour_window": "auto"},
                          feature_channels=B4_CHANNELS, feature_reductions=B4_REDUCTIONS)
    assert model.window == 8
    assert int(model.reconstruction.blocked[8 * 16 + 8].sum()) == 81


# ----------------------------------------------------------------------------- backbone
@pytest.mark.parametrize("name", ["uniad", "moead"])
def test_paper_presets_use_the_tf_ported_b4_with_the_official_levels(name):
    from harness.profiling import _feature_shape

    config = methods.preset_config(name, "paper")
    assert config["backbone"].split(".")[0] == "tf_efficientnet_b4"
    channels, reductions = _feature_shape(config)
    assert channels == B4_CHANNELS and reductions == B4_REDUCTIONS


# ----------------------------------------------------------------------------- initialisations
def test_attention_q_k_v_are_nn_multiheadattentions_packed_xavier_draw():
    """One xavier-uniform (3D x D) in_proj split into q, k, v: the same numbers for the same seed, bias zero."""
    torch.manual_seed(3)
    attention = NeighbourMaskedAttention(256, 8)
    torch.manual_seed(3)
    nn.Linear(256, 256), nn.Linear(256, 256), nn.Linear(256, 256), nn.Linear(256, 256)  # the RNG the Linears drew
    expected = nn.init.xavier_uniform_(torch.empty(768, 256))
    packed = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
    assert torch.equal(packed, expected)
    assert all(not p.bias.detach().any() for p in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj))


@pytest.mark.parametrize("name", ["uniad", "moead"])
@pytest.mark.parametrize("init, bound", [("packed_xavier", math.sqrt(6 / (256 + 768))), ("per_projection_xavier", math.sqrt(6 / 512))])
def test_attention_init_of_the_built_paper_models(name, init, bound):
    torch.manual_seed(0)
    model = methods.build(name, "paper", {"attention_init": init}, feature_channels=B4_CHANNELS, feature_reductions=B4_REDUCTIONS)
    attentions = [m for m in model.modules() if isinstance(m, NeighbourMaskedAttention)]
    weights = torch.cat([torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).flatten() for a in attentions]).detach()
    assert float(weights.abs().max()) <= bound
    assert float(weights.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    out = torch.cat([a.out_proj.weight.flatten() for a in attentions]).detach()
    assert float(out.std()) == pytest.approx(math.sqrt(6 / 512) / math.sqrt(3), rel=0.02)  # xavier 256x256


def test_fastmoe_expert_init_is_kaiming_a_sqrt5_over_a_one_out_in_tensor():
    """FMoELinear.reset_parameters: kaiming_uniform(a=sqrt(5)) of (1, out, in) -> fan_in out*in; bias zeros."""
    torch.manual_seed(5)
    moe = MixtureOfExperts(256, 1024, 4, 2)
    torch.manual_seed(5)
    nn.Linear(256, 4)
    for _ in range(4):
        nn.Linear(256, 1024), nn.Linear(1024, 256)
    nn.LayerNorm(256)
    for expert in moe.experts:
        for linear in (expert.fc1, expert.fc2):
            expected = nn.init.kaiming_uniform_(torch.empty(1, *linear.weight.shape), a=math.sqrt(5))[0]
            assert torch.equal(linear.weight, expected)
            assert not linear.bias.detach().any()


@pytest.mark.parametrize("expert_init, std", [("fastmoe", 1 / 512 / math.sqrt(3)), ("xavier", math.sqrt(6 / 1280) / math.sqrt(3))])
def test_moead_paper_experts_start_as_configured(expert_init, std):
    torch.manual_seed(0)
    model = methods.build("moead", "paper", {"expert_init": expert_init}, feature_channels=B4_CHANNELS, feature_reductions=B4_REDUCTIONS)
    moes = [m for m in model.modules() if isinstance(m, MixtureOfExperts)]
    weights = torch.cat([p.flatten() for m in moes for e in m.experts for p in (e.fc1.weight, e.fc2.weight)]).detach()
    assert float(weights.std()) == pytest.approx(std, rel=0.02)  # fastmoe ~0.00113, xavier ~0.0395
    assert float(weights.abs().max()) <= std * math.sqrt(3)
    gate = torch.cat([m.router.gate.weight.flatten() for m in moes]).detach()
    assert float(gate.abs().max()) <= math.sqrt(6 / 260)  # the router stays an xavier nn.Linear
    assert methods.preset_config("moead", "cpu")["expert_init"] == "fastmoe"


# ----------------------------------------------------------------------------- attention formulations
def test_attention_formulations_agree_forward_and_backward():
    mask = neighbour_mask(14, 14, 7)
    x = torch.randn(2, 196, 64)
    results = {}
    for impl in ATTENTION_IMPLS:
        torch.manual_seed(0)
        attention = NeighbourMaskedAttention(64, 8, impl=impl)
        xi = x.clone().requires_grad_(True)
        out = attention(xi + 1, xi + 1, xi, mask)
        out.square().sum().backward()
        results[impl] = (out.detach(), xi.grad, attention.q_proj.weight.grad)
    reference = results["baddbmm"]
    for impl, got in results.items():
        for a, b in zip(got, reference):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), impl
    assert methods.preset_config("uniad", "paper")["attention_impl"] == "sdpa"  # the fastest (bench_attention.py)


def test_profiler_counts_the_masked_qk_whatever_the_attention_formulation():
    mask = neighbour_mask(14, 14, 7)
    x = torch.randn(1, 196, 64)
    counts = {}
    for impl in ATTENTION_IMPLS:
        attention = NeighbourMaskedAttention(64, 8, impl=impl).eval()
        counts[impl] = count_macs(attention, x, x, x, mask)
        assert attention.impl == impl  # restored after counting
    assert len({(c.true, c.masked_qk) for c in counts.values()}) == 1
    assert counts["sdpa"].masked_qk == 196 * 196 * 64
    assert counts["sdpa"].true == 4 * 196 * 64 * 64 + 2 * 196 * 196 * 64
