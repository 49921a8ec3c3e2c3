"""RD4AD as the official code builds it (spec section 6): counts, shapes, block order, initialisation,
which parameters learn, the global-cosine loss, the map and score, and a run through the loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn

import harness  # noqa: F401
import methods
from harness.data.fixtures import write_fixture
from harness.training.loop import run_training
from methods.blocks.cosine import global_cosine_distance
from methods.blocks.resnet import Bottleneck
from methods.blocks.scoring import default_kernel_size
from test_methods_models import one_torch_thread  # noqa: F401  (autouse fixture)

WRN_CHANNELS, STRIDES = [256, 512, 1024], [4, 8, 16]
LITE0_CHANNELS = [24, 40, 112]
UNUSED_CONV4 = 4096 * 2048 + 2 * 2048  # BN_layer.conv4 (1x1, 4096 -> 2048) and bn4
TINY = {"image_size": 64, "eval_size": 32, "embedding_channels": 16, "embedding_width": 8, "decoder_widths": [8, 6, 4], "decoder_blocks": [1, 1, 1], "embedding_blocks": 1}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def paper():
    torch.manual_seed(0)
    return methods.build("rd4ad", "paper", feature_channels=WRN_CHANNELS, feature_reductions=STRIDES)


def tiny(overrides=None):
    torch.manual_seed(0)
    return methods.build("rd4ad", "cpu", {**TINY, **(overrides or {})}, feature_channels=[4, 6, 8], feature_reductions=STRIDES)


def tiny_features(batch=2, seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, size // r, size // r, generator=g) for c, r in zip([4, 6, 8], STRIDES)]


def test_paper_trainable_parameters_are_the_official_modules_count(paper):
    assert count(paper) == 92_195_328
    assert count(paper.ocbe) == 67_277_824 and count(paper.decoder) == 24_917_504
    assert count(paper.ocbe.conv4) + count(paper.ocbe.bn4) == UNUSED_CONV4
    lean = methods.build("rd4ad", "paper", {"unused_conv4": False}, feature_channels=WRN_CHANNELS, feature_reductions=STRIDES)
    assert count(lean) == 92_195_328 - UNUSED_CONV4


def test_paper_shapes_embedding_2048_at_8_and_the_three_levels_back(paper):
    features = [torch.randn(1, c, 256 // r, 256 // r) for c, r in zip(WRN_CHANNELS, STRIDES)]
    with torch.no_grad():
        embedding = paper.eval().ocbe(features)
        outputs = paper.decoder(embedding)
    assert embedding.shape == (1, 2048, 8, 8)
    assert [tuple(o.shape) for o in outputs] == [(1, 256, 64, 64), (1, 512, 32, 32), (1, 1024, 16, 16)]


def test_cpu_preset_shapes_on_lite0_levels():
    model = methods.build("rd4ad", "cpu", feature_channels=LITE0_CHANNELS, feature_reductions=STRIDES).eval()
    features = [torch.randn(2, c, 160 // r, 160 // r) for c, r in zip(LITE0_CHANNELS, STRIDES)]
    with torch.no_grad():
        embedding = model.ocbe(features)
        outputs, targets = model.reconstruct(features)
    assert embedding.shape == (2, 224, 5, 5)
    assert [o.shape for o in outputs] == [t.shape for t in targets]


def test_block_order_as_the_official_modules(paper):
    fuse1, fuse2 = paper.ocbe.fuse_level1, paper.ocbe.fuse_level2
    assert [type(m) for m in fuse1] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2 and [type(m) for m in fuse2] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in (fuse1[0], fuse1[3], fuse2[0])] == [
        (256, 512, (3, 3), (2, 2)), (512, 1024, (3, 3), (2, 2)), (512, 1024, (3, 3), (2, 2))
    ]
    first = paper.ocbe.embedding[0]  # 3072 -> 1024 -> 3x3 s2 -> 2048, shortcut 1x1 s2
    assert (first.conv1.in_channels, first.conv2.stride, first.conv3.out_channels) == (3072, (2, 2), 2048)
    assert isinstance(first.shortcut[0], nn.Conv2d) and first.shortcut[0].kernel_size == (1, 1) and first.shortcut[0].stride == (2, 2)
    assert len(paper.ocbe.embedding) == 3 and all(b.shortcut is None for b in paper.ocbe.embedding[1:])
    for stage, (width, out, blocks) in zip(paper.decoder.stages, [(512, 1024, 3), (256, 512, 4), (128, 256, 6)]):
        head = stage[0]
        assert len(stage) == blocks and (head.conv1.out_channels, head.conv3.out_channels) == (width, out)
        assert type(head.conv2) is nn.ConvTranspose2d and head.conv2.kernel_size == (2, 2) and head.conv2.stride == (2, 2)
        assert type(head.shortcut[0]) is nn.ConvTranspose2d and isinstance(head.shortcut[1], nn.BatchNorm2d)
        assert all(type(b.conv2) is nn.Conv2d and b.conv2.stride == (1, 1) and b.shortcut is None for b in stage[1:])


def test_initialisation_is_torchvisions_resnet_init_and_transposed_convs_keep_torchs_default(paper):
    convs = [m for m in paper.modules() if type(m) is nn.Conv2d]
    deconvs = [m for m in paper.modules() if type(m) is nn.ConvTranspose2d]
    norms = [m for m in paper.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(deconvs) == 6 and len(convs) == 14 + 36  # OCBE 3 + 10 + conv4; decoder 13 blocks x 3 - 3
    for conv in convs:  # kaiming_normal_(mode="fan_out", nonlinearity="relu")
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        if conv.weight.numel() > 100_000:
            assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.02)
    for deconv in deconvs:  # reset_parameters: kaiming_uniform_(a=sqrt(5)) over fan_in = size(1) * 2 * 2
        bound = 1 / math.sqrt(deconv.weight.shape[1] * 4)
        assert deconv.weight.abs().max().item() <= bound
        assert deconv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert all(torch.all(n.weight == 1) and torch.all(n.bias == 0) for n in norms)


def test_every_parameter_learns_except_the_unused_conv4_and_bn4():
    model = tiny()
    model.training_step({"features": tiny_features()})["loss"].backward()
    without_grad = sorted(name for name, p in model.named_parameters() if p.grad is None)
    assert without_grad == ["ocbe.bn4.bias", "ocbe.bn4.weight", "ocbe.conv4.weight"]


def test_global_cosine_loss_against_a_hand_computation():
    model = tiny()
    features = tiny_features(batch=3)
    losses = model.training_step({"features": features})
    with torch.no_grad():
        outputs, targets = model.reconstruct(features)
    expected = 0.0
    for o, t in zip(outputs, targets):
        o, t = o.double().numpy(), t.double().numpy()
        per_sample = [1 - np.dot(o[b].ravel(), t[b].ravel()) / (np.linalg.norm(o[b]) * np.linalg.norm(t[b])) for b in range(3)]
        expected += np.mean(per_sample)
    assert losses["loss"].item() == pytest.approx(expected, abs=1e-5)
    assert losses["loss"].item() == pytest.approx(sum(losses[f"cosine_level{i}"].item() for i in (1, 2, 3)), abs=1e-6)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.allclose(global_cosine_distance(a, 2.5 * a), torch.zeros(2), atol=1e-6)
    assert torch.allclose(global_cosine_distance(a, -a), torch.full((2,), 2.0), atol=1e-6)


def test_map_is_summed_pixel_cosine_upsampled_then_scipy_gaussian_and_score_is_its_max():
    model = tiny({"eval_size": 64, "smoothing_sigma": 4.0, "smoothing_kernel": 33})
    features = tiny_features(batch=2, seed=1)
    prediction = model.predict({"features": features})
    with torch.no_grad():
        outputs, targets = model.eval().reconstruct(features)
    expected = np.zeros((2, 64, 64))
    for o, t in zip(outputs, targets):
        o, t = o.double(), t.double()
        cosine = (o * t).sum(1) / (o.norm(dim=1).clamp_min(1e-8) * t.norm(dim=1).clamp_min(1e-8))  # torch's eps: ReLU outputs can be 0
        expected += F.interpolate((1 - cosine)[:, None], size=(64, 64), mode="bilinear", align_corners=True)[:, 0].numpy()
    expected = np.stack([gaussian_filter(m, sigma=4) for m in expected])  # the official evaluation's own filter
    assert prediction.anomaly_maps.shape == (2, 64, 64)
    assert np.abs(prediction.anomaly_maps.numpy() - expected).max() < 1e-5
    assert torch.equal(prediction.image_scores, prediction.anomaly_maps.flatten(1).amax(1))


def test_smoothing_presets_are_scipys_truncate_4_kernels():
    for preset in ("paper", "cpu"):
        config = methods.preset_config("rd4ad", preset)
        assert config["smoothing_kernel"] == default_kernel_size(config["smoothing_sigma"])
        assert config["smoothing_boundary"] == "symmetric"
    assert methods.preset_config("rd4ad", "paper")["smoothing_kernel"] == 33  # radius 16 for sigma 4


def test_adam_with_the_official_betas_and_no_schedule():
    optimizer, scheduler, _ = tiny().configure_optimizers()
    assert type(optimizer) is torch.optim.Adam and scheduler is None
    assert optimizer.defaults["lr"] == 0.005 and optimizer.defaults["betas"] == (0.5, 0.999)


def test_levels_at_the_wrong_strides_or_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="twice the previous stride"):
        methods.build("rd4ad", "cpu", TINY, feature_channels=[4, 6, 8], feature_reductions=[2, 4, 16])
    with pytest.raises(ValueError, match="image_size 64"):
        tiny().training_step({"features": tiny_features(size=80)})


def test_bottleneck_is_torchvisions_v15_block():
    block = Bottleneck(8, 4, 16, stride=2)
    assert block.conv2.stride == (2, 2) and block.conv1.stride == (1, 1)  # V1.5: the stride sits on the 3x3
    assert Bottleneck(16, 4, 16).shortcut is None
    with pytest.raises(ValueError, match="stride 2"):
        Bottleneck(8, 4, 16, stride=1, upsample=True)


def test_decoder_output_relu_off_drops_only_each_stages_last_relu(paper):
    assert all(b.out_relu for stage in paper.decoder.stages for b in stage) and all(b.out_relu for b in paper.ocbe.embedding)
    model = tiny({"decoder_output_relu": False, "decoder_blocks": [2, 1, 3]})
    assert [[b.out_relu for b in stage] for stage in model.decoder.stages] == [[True, False], [False], [True, True, False]]
    with torch.no_grad():
        outputs, _ = model.reconstruct(tiny_features())
    assert all(o.min() < 0 for o in outputs)  # signed, like the EfficientNet levels it reconstructs


def test_a_short_training_run_through_the_loop(tmp_path):
    root = write_fixture("generic", tmp_path / "data", size=64).root
    config = {"method": "rd4ad", "preset": "cpu", "dataset": "generic", "data_root": str(root), "seed": 3,
              "method_config": {"image_size": 64, "eval_size": 32, "epochs": 2, "batch_size": 4}}
    outcome = run_training(config, output_dir=tmp_path / "run")
    metrics = {(r["class_name"], r["metric"]): r["value"] for r in outcome.metrics}
    assert 0.0 <= metrics[("mean", "i_auroc")] <= 1.0 and math.isfinite(metrics[("mean", "p_auroc")])
    assert outcome.run["epochs"] == 2 and len(outcome.sample_scores) == 10
    assert all(math.isfinite(r["score"]) for r in outcome.sample_scores)
