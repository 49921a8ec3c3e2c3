"""Dinomaly as the official code does it (spec section 7): count, attention, loss, optimiser, schedule, map, loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import methods
from harness.data.fixtures import write_fixture
from harness.training.loop import run_training
from methods.blocks.optim import StableAdamW, WarmCosineLR, warm_cosine_value
from methods.base import topk_fraction_mean
from methods.blocks.scoring import gaussian_smooth
from methods.blocks.vit import LinearAttention2, NoisyBottleneck, ViTBlock
from methods.dinomaly import EncoderLayers, hard_mining_cosine_loss, hard_mining_p
from test_methods_models import one_torch_thread  # noqa: F401  (autouse fixture)

VIT_LEVELS = ([768] * 8, [14] * 8)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_paper_preset_trains_61_4m_parameters_in_the_bottleneck_and_8_blocks():
    model = methods.build("dinomaly", "paper", feature_channels=VIT_LEVELS[0], feature_reductions=VIT_LEVELS[1])
    assert _count(model.bottleneck) == 4_722_432 and _count(model.decoder[0]) == 7_087_872
    assert _count(model) == 61_425_408 and len(model.decoder) == 8 and model.grid == (28, 28)
    assert model.decoder[0].norm1.eps == 1e-8 and model.decoder[0].attn.qkv.bias is not None


def test_trainable_init_is_trunc_normal_0_01_with_zero_biases():
    model = methods.build("dinomaly", "paper", feature_channels=VIT_LEVELS[0], feature_reductions=VIT_LEVELS[1])
    weight = model.decoder[3].mlp[0].weight
    assert weight.abs().max() <= 0.03 and weight.std().item() == pytest.approx(0.00987, rel=0.02)  # N(0, 0.01) cut at 3 std
    assert model.bottleneck.fc1.bias.abs().max() == 0 and model.decoder[0].norm2.weight.eq(1).all()


def test_linear_attention2_against_the_formula_written_out():
    torch.manual_seed(0)
    attention = LinearAttention2(dim=6, heads=2)
    x = torch.randn(2, 5, 6)
    q, k, v = attention.qkv(x).split(6, dim=-1)
    phi = lambda t: torch.where(t > 0, t + 1, torch.exp(t))  # elu + 1
    heads = []
    for h in range(2):
        qh, kh, vh = (t[..., 3 * h : 3 * h + 3] for t in (q, k, v))
        out = torch.zeros(2, 5, 3)
        for b in range(2):
            for i in range(5):
                weights = torch.stack([phi(qh[b, i]) @ phi(kh[b, s]) for s in range(5)])
                out[b, i] = (weights[:, None] * vh[b]).sum(0) / weights.sum()
        heads.append(out)
    expected = attention.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attention(x), expected, rtol=1e-5, atol=1e-6)


def test_vit_block_is_pre_norm_and_the_bottleneck_drops_only_in_training():
    torch.manual_seed(0)
    block, x = ViTBlock(8, 2), torch.randn(1, 4, 8)
    h = x + block.attn(block.norm1(x))
    torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)))
    bottleneck = NoisyBottleneck(8, 32, dropout=0.2)
    assert torch.equal(bottleneck.eval()(x), bottleneck.fc2(bottleneck.act(bottleneck.fc1(x))))
    assert not torch.equal(bottleneck.train()(x), bottleneck.train()(x))


def test_hard_mining_scales_the_gradient_of_points_below_the_threshold_by_0_1():
    torch.manual_seed(0)
    encoder = [torch.randn(2, 4, 3, 3)]
    decoder = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = hard_mining_cosine_loss(encoder, [decoder], p=0.5, factor=0.1)
    (hard,) = torch.autograd.grad(loss, decoder)
    plain = (1 - F.cosine_similarity(encoder[0].flatten(1), decoder.flatten(1), dim=1)).mean()
    (full,) = torch.autograd.grad(plain, decoder)
    assert loss.item() == pytest.approx(plain.item())
    distance = (1 - F.cosine_similarity(encoder[0], decoder, dim=1)).detach()
    threshold = distance.flatten().sort(descending=True).values[int(18 * 0.5) - 1]  # k = int(18 points * (1 - p)) = 9
    easy = (distance < threshold).unsqueeze(1).expand_as(full)
    assert easy[:, 0].sum() == 9
    torch.testing.assert_close(hard[easy], 0.1 * full[easy])
    torch.testing.assert_close(hard[~easy], full[~easy])


def test_p_ramps_linearly_to_0_9_over_1000_iterations_and_resumes_with_the_weights():
    assert [hard_mining_p(i, 0.9, 1000) for i in (0, 500, 1000, 5000)] == [0.0, 0.45, 0.9, 0.9]
    assert hard_mining_p(0, 0.9, 0) == 0.9
    model = methods.build("dinomaly", "cpu", {"token_grid": 4}, feature_channels=[24, 40, 112], feature_reductions=[4, 8, 16])
    features = [torch.randn(2, 24, 8, 8), torch.randn(2, 40, 4, 4), torch.randn(2, 112, 2, 2)]
    ps = [model.training_step({"features": features})["hard_mining_p"].item() for _ in range(3)]
    ramp = model.config["hard_mining_ramp_iterations"]
    assert ps == pytest.approx([0.0, 0.9 / ramp, 1.8 / ramp])
    resumed = methods.build("dinomaly", "cpu", {"token_grid": 4}, feature_channels=[24, 40, 112], feature_reductions=[4, 8, 16])
    resumed.load_state_dict(model.state_dict())
    assert int(resumed.iteration) == 3


def test_stable_adamw_first_steps_by_hand():
    """Step 1: decay p by (1 - lr wd), m_hat / sqrt(v_hat) = sign(g), rms 1 clipped to the threshold 0.5;
    step 2: v_max (amsgrad) keeps the first v of the element whose gradient shrank."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = StableAdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-10, weight_decay=0.01, amsgrad=True, clip_threshold=0.5)
    p.grad = torch.tensor([0.5, 0.1])
    optimizer.step()
    after_one = [1.0 * (1 - 0.001) - 0.1 / 2, -2.0 * (1 - 0.001) - 0.1 / 2]
    torch.testing.assert_close(p.detach(), torch.tensor(after_one))
    p.grad = torch.tensor([0.01, 0.2])
    optimizer.step()
    m = [0.9 * 0.05 + 0.1 * 0.01, 0.9 * 0.01 + 0.1 * 0.2]
    v = [0.001 * 0.25, 0.999 * 0.001 * 0.01 + 0.001 * 0.04]  # element 0: max(0.00025, 0.000249875)
    denom = [math.sqrt(vi) / math.sqrt(1 - 0.999**2) + 1e-10 for vi in v]
    rms = math.sqrt(sum((g / d) ** 2 for g, d in zip((0.01, 0.2), denom)) / 2)
    step = 0.1 / (1 - 0.9**2) / max(1.0, rms / 0.5)
    expected = [w * (1 - 0.001) - step * mi / d for w, mi, d in zip(after_one, m, denom)]
    assert rms / 0.5 > 1.7
    torch.testing.assert_close(p.detach(), torch.tensor(expected))


def test_warm_cosine_values_at_warm_up_middle_and_end():
    value = lambda i: warm_cosine_value(i, 2e-3, 2e-4, 10_000, 100)
    assert value(0) == 0 and value(99) == pytest.approx(2e-3) and value(50) == pytest.approx(2e-3 * 50 / 99)
    assert value(100) == pytest.approx(2e-3) and value(100 + 4950) == pytest.approx(1.1e-3)
    assert value(9_999) == pytest.approx(2e-4, rel=1e-4) and value(10_000) == value(50_000) == 2e-4
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    scheduler = WarmCosineLR(optimizer, final=2e-4, total=10, warmup=3)
    official = np.concatenate([np.linspace(0, 2e-3, 3), 2e-4 + 0.5 * 1.8e-3 * (1 + np.cos(np.pi * np.arange(7) / 7))])
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(list(official) + [2e-4, 2e-4])


def test_map_is_the_group_mean_of_cosine_distance_smoothed_with_zero_padding_and_scored_by_the_top_1_percent():
    model = methods.build("dinomaly", "paper", {"eval_size": 256}, feature_channels=VIT_LEVELS[0], feature_reductions=VIT_LEVELS[1])
    encoder = [torch.randn(1, 768, 28, 28) for _ in range(2)]
    decoder = [e.clone() for e in encoder]
    decoder[1][0, :, 5, 7] = -encoder[1][0, :, 5, 7]  # distance 2 at one token of group 2 only
    maps = model.anomaly_maps(encoder, decoder)
    assert maps.shape == (1, 256, 256)
    raw = F.interpolate(torch.zeros(1, 1, 28, 28).index_put_((torch.tensor(0), torch.tensor(0), torch.tensor(5), torch.tensor(7)), torch.tensor(1.0)),
                        size=392, mode="bilinear", align_corners=True)  # mean of 0 and 2
    expected = gaussian_smooth(F.interpolate(raw, size=256, mode="bilinear", align_corners=False)[:, 0], 4.0, 5, "zeros")
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-4)
    ones = gaussian_smooth(torch.ones(1, 9, 9), 4.0, 5, "zeros")
    kernel = torch.exp(-((torch.arange(5.0) - 2) ** 2) / 32)
    kernel = (kernel[:, None] * kernel[None, :]) / (kernel[:, None] * kernel[None, :]).sum()  # the official 2-D kernel
    torch.testing.assert_close(ones, F.conv2d(torch.ones(1, 1, 9, 9), kernel.view(1, 1, 5, 5), padding=2)[:, 0])
    scores = topk_fraction_mean(torch.arange(65_536.0).view(1, 256, 256), 0.01, rounding="floor")
    assert scores.item() == pytest.approx(np.arange(65_536 - 655, 65_536).mean())  # int(655.36) = 655 pixels


def test_cpu_encoder_layers_keep_each_levels_cosines():
    layers = EncoderLayers([24, 112], side=4, dim=128, seed=0)
    a, b = torch.randn(2, 24, 8, 8), torch.randn(2, 112, 2, 2)
    low, high = layers([a, b])
    assert low.shape == high.shape == (2, 16, 128)
    pooled = F.adaptive_avg_pool2d(a, 4).flatten(2).transpose(1, 2)
    torch.testing.assert_close(low @ low.transpose(1, 2), pooled @ pooled.transpose(1, 2), rtol=1e-4, atol=1e-4)
    assert not any(buffer.requires_grad for buffer in layers.buffers()) and not list(layers.parameters())


def test_short_training_through_the_loop(tmp_path):
    root = write_fixture("generic", tmp_path / "fixture", size=64).root
    method_config = {"image_size": 64, "eval_size": 32, "epochs": 2, "batch_size": 4, "token_grid": 8,
                     "iterations": 4, "warmup_iterations": 1, "hard_mining_ramp_iterations": 2}
    config = {"method": "dinomaly", "preset": "cpu", "dataset": "generic", "data_root": str(root), "seed": 3,
              "method_config": method_config}
    outcome = run_training(config, output_dir=tmp_path / "run")
    metrics = {(r["class_name"], r["metric"]): r["value"] for r in outcome.metrics}
    assert 0.0 <= metrics[("mean", "i_auroc")] <= 1.0 and math.isfinite(metrics[("pooled", "p_auroc")])
    state = torch.load(outcome.checkpoint_dir / "model.pt", map_location="cpu", weights_only=True)
    steps = state["scheduler"]["last_epoch"]
    assert steps >= 2 and int(state["model"]["iteration"]) == steps  # one p-ramp tick per optimiser step


def test_vit_levels_are_raw_block_outputs_without_prefix_tokens_at_392():
    from harness.backbones import create_backbone

    backbone = create_backbone("vit_base_patch14_reg4_dinov2", list(range(2, 10)), weights="random")
    vit = backbone.model.model
    assert len(vit.blocks) == 10 and backbone.channels == [768] * 8  # pruned after block 9
    images = torch.randn(1, 3, 392, 392)
    with torch.no_grad():
        levels = backbone(images)
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
        for block in vit.blocks[:4]:
            tokens = block(tokens)
    assert vit.num_prefix_tokens == 5 and levels[0].shape == (1, 768, 28, 28)
    torch.testing.assert_close(levels[1], tokens[:, 5:].transpose(1, 2).reshape(1, 768, 28, 28))  # block 3, no final norm
