"""UniAD, MoEAD and UniLEAD graphs: exact parameter counts, building blocks, training and prediction."""

from __future__ import annotations

import pytest
import torch

import harness  # noqa: F401
import methods
from methods.blocks.adapters import BottleneckAdapter, MixtureOfAdapters
from methods.blocks.attention import NeighbourMaskedAttention, neighbour_mask
from methods.blocks.jitter import FeatureJitter

B4_CHANNELS, B4_REDUCTIONS = [24, 32, 56, 160], [2, 4, 8, 16]
TINY_CHANNELS, TINY_REDUCTIONS = [8, 16], [8, 16]
TINY = {"image_size": 128, "eval_size": 64, "hidden_dim": 32, "num_heads": 2, "ffn_dim": 64, "neighbour_window": 3, "dropout": 0.0,
        "neighbour_mask_sites": [True, True, True]}  # the paper's masks (the cpu preset runs without)

@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run far faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def paper(name, overrides=None):
    return methods.build(name, "paper", overrides, feature_channels=B4_CHANNELS, feature_reductions=B4_REDUCTIONS)


def tiny(name, overrides=None, preset="cpu"):
    extra = {"encoder_layers": 1, "decoder_layers": 2} if name != "moead" else {"rounds": 2}
    return methods.build(name, preset, {**TINY, **extra, **(overrides or {})}, feature_channels=TINY_CHANNELS, feature_reductions=TINY_REDUCTIONS)


def tiny_batch(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "features": [torch.randn(batch, 8, 16, 16, generator=g), torch.randn(batch, 16, 8, 8, generator=g)],
        "label": torch.zeros(batch, dtype=torch.long),
        "class_index": torch.zeros(batch, dtype=torch.long),
    }


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        ("uniad", None, 7_717_392),
        ("moead", None, 4_935_704),
        # spec 2.2 rows + the GRAs: per layer a gate vector (240) and block-diagonal W + bias (16 * 240 + 240)
        ("unilead", {"se_reduction": 0}, 4_514_224 + 8 * 18 * 240),
        ("unilead", None, 4_616_496),
        ("unilead", {"gra_form": "elementwise"}, 4_583_856),  # gate vectors only (the pre-issue-8 form)
        ("unilead", {"keep_ffn": True, "se_reduction": 0}, 8_718_768 + 8 * 18 * 240),
        ("unilead", {"share_layers": True, "se_reduction": 0}, 1_236_472 + 2 * 18 * 240),
    ],
)
def test_reconstruction_module_parameter_counts_of_the_paper_preset(name, overrides, expected):
    assert count(paper(name, overrides).reconstruction_module()) == expected


def test_neighbour_mask_blocks_the_window_including_the_token_itself():
    mask = neighbour_mask(14, 14, 7)
    centre = 7 * 14 + 7
    assert mask[centre, centre]
    assert int(mask[centre].sum()) == 49
    blocked = mask[centre].reshape(14, 14).nonzero().tolist()
    assert min(r for r, _ in blocked) == 4 and max(r for r, _ in blocked) == 10
    assert int(mask[0].sum()) == 16  # corner: rows/cols 0..3
    assert not mask[centre, 0]


def test_masked_attention_output_ignores_values_inside_the_window():
    torch.manual_seed(0)
    attention = NeighbourMaskedAttention(16, 2).eval()
    x = torch.randn(1, 25, 16)
    mask = neighbour_mask(5, 5, 3)
    out = attention(x, x, x, mask)
    changed = x.clone()
    changed[0, 12 + 1] += 10.0  # right-hand neighbour of the centre token (12)
    changed_out = attention(x, x, changed, mask)
    assert torch.allclose(out[0, 12], changed_out[0, 12], atol=1e-6)
    assert not torch.allclose(out[0, 0], changed_out[0, 0])


def attention_masks(model):
    """The mask each neighbour-masked attention received during one predict, in call order."""
    masks = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: masks.append(inp[3])) for m in model.modules() if isinstance(m, NeighbourMaskedAttention)]
    model.predict(tiny_batch())
    for h in hooks:
        h.remove()
    return masks


@pytest.mark.parametrize("name, calls", [("uniad", 1 + 2 * 2), ("unilead", 1 + 2 * 2), ("moead", 2 * 2)])
def test_every_attention_site_uses_the_neighbour_mask(name, calls):
    masks = attention_masks(tiny(name).eval())
    assert len(masks) == calls
    expected = neighbour_mask(8, 8, 3)
    assert all(m is not None and torch.equal(m, expected) for m in masks)


@pytest.mark.parametrize("name", ["uniad", "unilead", "moead"])
def test_the_neighbour_mask_can_be_switched_off_at_every_site(name):
    cpu_masks = {"uniad": [False] * 3, "unilead": [False] * 3, "moead": [True] * 3}  # what the tuning data chose
    assert methods.get(name).presets["cpu"]["neighbour_mask_sites"] == cpu_masks[name]
    masks = attention_masks(tiny(name, {"neighbour_mask_sites": [False, False, False]}).eval())
    assert masks and all(m is None for m in masks)


def test_jitter_only_in_training_and_scaled_by_token_norm():
    jitter = FeatureJitter(scale=20.0, prob=1.0)
    tokens = torch.randn(4, 50, 272)
    assert torch.equal(jitter.eval()(tokens), tokens)
    noisy = jitter.train()(tokens)
    noise_std = (noisy - tokens).std(dim=-1)
    expected = 20.0 * tokens.norm(dim=-1) / 272
    assert torch.allclose(noise_std, expected, rtol=0.25)


def test_adapter_up_projections_start_at_zero_so_the_mixture_starts_silent():
    model = tiny("unilead")
    adapters = [m for m in model.modules() if isinstance(m, BottleneckAdapter)]
    assert adapters and all(not a.up.weight.detach().any() and not a.up.bias.detach().any() for a in adapters)
    moa = next(m for m in model.modules() if isinstance(m, MixtureOfAdapters))
    with torch.no_grad():
        assert float(moa(torch.randn(2, 64, 32)).abs().max()) == 0.0


@pytest.mark.parametrize(
    "name, overrides",
    [("uniad", None), ("moead", None), ("unilead", None), ("unilead", {"routing": "top1"}), ("unilead", {"routing": "gumbel_top1"}), ("unilead", {"routing": "first", "router": "image"})],
)
def test_a_few_training_steps_reduce_the_loss_on_a_fixed_batch(name, overrides):
    torch.manual_seed(0)
    model = tiny(name, {**(overrides or {}), "jitter_scale": 0.0, "lr": 3e-3}).train()
    optimizer, scheduler, interval = model.configure_optimizers()
    assert interval == "epoch" and scheduler is not None
    batch = tiny_batch()
    losses = []
    for _ in range(8):
        out = model(batch)
        assert {"loss", "reconstruction"} <= set(out)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("name", ["uniad", "moead", "unilead"])
def test_predict_shapes_dtypes_and_eval_mode(name):
    model = tiny(name).train()
    prediction = model.predict(tiny_batch(batch=3))
    assert prediction.image_scores.shape == (3,) and prediction.image_scores.dtype == torch.float32
    assert prediction.anomaly_maps.shape == (3, 64, 64) and prediction.anomaly_maps.dtype == torch.float32
    assert model.training  # predict restores the caller's mode
    assert torch.isfinite(prediction.anomaly_maps).all()
    again = model.predict(tiny_batch(batch=3))
    assert torch.equal(again.image_scores, prediction.image_scores)  # no jitter or dropout at inference
    assert (prediction.routing is None) == (name == "uniad")


def test_unilead_score_combines_max_mean_and_topk():
    model = tiny("unilead", {"score_weights": [1.0, 0.0, 0.0], "score_topk_fraction": 0.01, "smoothing_sigma": 0.0})
    maps = torch.zeros(1, 64, 64)
    maps[0, 3, 4] = 2.0
    assert float(model.image_scores(maps)) == pytest.approx(2.0)
    model.config["score_weights"] = [0.0, 1.0, 0.0]
    assert float(model.image_scores(maps)) == pytest.approx(2.0 / 4096)
    model.config["score_weights"] = [0.0, 0.0, 1.0]
    assert float(model.image_scores(maps)) == pytest.approx(2.0 / 41)  # top ceil(1% of 4096) = 41 pixels


def test_unilead_cpu_score_is_the_top_5_percent_mean_and_paper_score_the_papers():
    maps = torch.zeros(1, 64, 64)
    maps[0, :2, :] = 1.0  # 128 hot pixels: the top 5 % (205) mean is 128 / 205
    cpu = tiny("unilead", {"smoothing_sigma": 0.0})
    assert float(cpu.image_scores(maps)) == pytest.approx(128 / 205)
    paper = tiny("unilead", {"smoothing_sigma": 0.0}, preset="paper")
    assert float(paper.image_scores(maps)) == pytest.approx((1.0 + 128 / 4096 + 1.0) / 3)  # 1/3 max + mean + top-1 % (41 px, all hot)


def test_moead_balance_loss_enters_the_total_with_weight_1e_2():
    model = tiny("moead").train()
    out = model(tiny_batch())
    assert float(out["loss"].detach()) == pytest.approx(float((out["reconstruction"] + 1e-2 * out["balance"]).detach()), rel=1e-5)


def test_gumbel_temperature_anneals_per_epoch():
    model = tiny("unilead", {"routing": "gumbel_top1", "gumbel_temperature": 1.0, "gumbel_temperature_min": 0.5, "gumbel_anneal_epochs": 10})
    moa = [m for m in model.modules() if isinstance(m, MixtureOfAdapters)]
    model.on_epoch_start(5)
    assert all(m.temperature == pytest.approx(0.75) for m in moa)
    model.on_epoch_start(50)
    assert all(m.temperature == pytest.approx(0.5) for m in moa)


def test_token_stride_picks_the_grid_the_levels_are_resized_to_and_defaults_to_the_coarsest():
    from methods.blocks.neck import MultiLevelFeatureNeck

    levels = [torch.randn(1, c, 160 // r, 160 // r) for c, r in ((24, 4), (40, 8), (112, 16))]
    coarsest, fine = MultiLevelFeatureNeck([24, 40, 112], [4, 8, 16]), MultiLevelFeatureNeck([24, 40, 112], [4, 8, 16], 8)
    assert coarsest.grid_size(160) == (10, 10) and coarsest(levels).shape == (1, 176, 10, 10)
    assert fine.grid_size(160) == (20, 20) and fine(levels).shape == (1, 176, 20, 20)
    assert torch.equal(fine(levels)[:, 24:64], levels[1])  # the stride-8 level passes through untouched
    official = MultiLevelFeatureNeck([24, 40, 112], [4, 8, 16], 16)
    assert torch.equal(official(levels), coarsest(levels))
    model = methods.build("uniad", "cpu", {"image_size": 160, "token_stride": 8}, feature_channels=[24, 40, 112], feature_reductions=[4, 8, 16])
    assert model.grid == (20, 20)
