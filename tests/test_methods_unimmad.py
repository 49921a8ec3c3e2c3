"""UniMMAD as the official code builds it (spec section 3): the paper count, MoE-in-MoE, which experts
touch the output, the fixed identity expert, grouped vs per-sample filtering, the leader-kernel cache,
where gradients go, the balance anneal, the loss-weight switch, maps and routing records."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import harness  # noqa: F401
import methods
from methods.blocks.cmoe import MixtureInMixtureBranch, delta_kernel
from methods.config_schema import method_config_issues
from test_methods_models import one_torch_thread  # noqa: F401  (autouse fixture)

TINY = {
    "image_size": 64, "eval_size": 32, "fcm_width": 12, "fcm_embedding_channels": 16, "decoder_widths": [4, 4, 4],
    "decoder_blocks": [1, 1, 1], "moe_width": 8, "leaders": 5, "base_experts": 3, "smoothing_kernel": 5, "epochs": 4,
}
TOLERANCE = 1e-5  # float32: grouped and per-sample convolutions sum the same products in another order


def count(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def tiny(**overrides):
    torch.manual_seed(0)
    return methods.build("unimmad", "cpu", {**TINY, **overrides}, feature_channels=[], feature_reductions=[])


def batch_for(method, batch_size=2, seed=0):
    torch.manual_seed(seed)
    return method.example_batch(batch_size)


def branch(kernel_size=3, dim=6, bases=3, leaders=5, top_k=2):
    torch.manual_seed(1)
    return MixtureInMixtureBranch(dim, bases, leaders, kernel_size, top_k), torch.randn(bases, dim, dim, kernel_size, kernel_size) * 0.05


def test_paper_preset_trainable_count_is_the_official_194_8m():
    torch.manual_seed(0)
    paper = methods.build("unimmad", "paper", {"backbone_weights": "random"}, feature_channels=[], feature_reductions=[])
    assert count(paper) == 194_811_660 and round(count(paper) / 1e6, 1) == 194.8
    assert count(paper.encoder) == 66_834_240  # all of timm's stages, layer4 included
    assert count(paper.fcm) == 56_760_308 and count(paper.fcm.decoder) == 24_917_504
    assert count(paper.stem) == 800_946
    assert [count(m) for m in paper.c_moes] == [23_034_466, 23_362_658, 24_019_042]
    assert [sum(b.numel() for b in m.bases) for m in paper.c_moes] == [8 * 256 * 256 * (1 + 9 + 25)] * 3
    apart = paper.parameters_reported_apart()
    assert list(apart) == ["prior_generator"] and count(apart["prior_generator"]) == 0
    assert sum(p.numel() for p in apart["prior_generator"].parameters()) == 66_834_240


def test_leader_kernel_is_the_softmax_weighted_sum_of_the_bases():
    moe, bases = branch()
    kernels = moe.leader_kernels(bases)
    for leader in range(moe.leader_mixing.shape[0]):
        weights = torch.softmax(moe.leader_mixing[leader], dim=0)  # (bases, out channels): softmax over the bases
        expected = sum(weights[b][:, None, None, None] * bases[b] for b in range(bases.shape[0]))
        torch.testing.assert_close(kernels[leader], expected, atol=1e-6, rtol=0)


def test_fixed_expert_starts_as_the_identity_convolution():
    moe, _ = branch(kernel_size=5)
    x = torch.randn(2, 6, 7, 7)
    torch.testing.assert_close(F.conv2d(x, moe.fixed_expert, padding=2), x)
    assert torch.equal(moe.fixed_expert, delta_kernel(6, 5))


def _branch_output(moe, bases, key, condition):
    with torch.no_grad():
        out, _, routing = moe(key, condition, bases)
    return out, routing


def test_only_the_top_k_leaders_and_the_fixed_expert_touch_the_output():
    moe, bases = branch()
    moe.eval()
    key, condition = torch.randn(1, 6, 5, 5), torch.randn(1, 6)
    before, routing = _branch_output(moe, bases, key, condition)
    selected = set(routing.index[0].tolist())
    idle = next(i for i in range(5) if i not in selected)
    with torch.no_grad():
        moe.leader_mixing[idle].add_(torch.randn_like(moe.leader_mixing[idle]))
    assert torch.equal(_branch_output(moe, bases, key, condition)[0], before)
    with torch.no_grad():
        moe.leader_mixing[min(selected)].add_(torch.randn_like(moe.leader_mixing[0]))
    assert not torch.allclose(_branch_output(moe, bases, key, condition)[0], before)
    changed = _branch_output(moe, bases, key, condition)[0]
    with torch.no_grad():
        moe.fixed_expert.add_(0.1)
    assert not torch.allclose(_branch_output(moe, bases, key, condition)[0], changed)


@pytest.mark.parametrize("training", [True, False])
def test_grouped_filtering_equals_the_per_sample_experts(training):
    moe, bases = branch(kernel_size=5)
    moe.train(training)
    key, condition = torch.randn(4, 6, 6, 6), torch.randn(4, 6)
    outputs = {}
    for mode in ("grouped", "per_sample"):
        moe.filtering = mode
        with torch.set_grad_enabled(training):
            outputs[mode] = moe(key, condition, bases)[0]
    torch.testing.assert_close(outputs["grouped"], outputs["per_sample"], atol=TOLERANCE, rtol=0)


def test_leader_kernels_are_cached_in_eval_and_recomputed_after_a_training_step():
    method = tiny(modalities=["rgb"])
    batch = batch_for(method)
    optimizer, _, _ = method.configure_optimizers()
    branches = [b for moe in method.c_moes for b in moe.branches]
    method.eval()  # as the loop evaluates; predict inside training mode drops the cache on the way out
    method.predict(batch)
    assert all(b.has_cached_kernels for b in branches)
    cached = branches[0].cached_leader_kernels(method.c_moes[0].bases[0])
    method.train()
    assert not any(b.has_cached_kernels for b in branches)
    optimizer.zero_grad()
    method.training_step(batch)["loss"].backward()
    optimizer.step()
    method.eval()
    method.predict(batch)
    fresh = branches[0].cached_leader_kernels(method.c_moes[0].bases[0])
    assert not torch.allclose(fresh, cached)
    torch.testing.assert_close(fresh, branches[0].leader_kernels(method.c_moes[0].bases[0]).detach())
    method.load_state_dict({k: v + 0.01 if "leader_mixing" in k else v for k, v in method.state_dict().items()})
    assert not any(b.has_cached_kernels for b in branches)


def test_gradients_reach_stem_encoder_fcm_and_cmoe_but_not_the_prior_generator():
    method = tiny()
    method.train()
    method.training_step(batch_for(method))["loss"].backward()

    def reached(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert reached(method.stem) and reached(method.encoder) and reached(method.fcm)
    for moe in method.c_moes:
        assert reached(moe.bases) and reached(moe.key) and reached(moe.query) and reached(moe.condition)
        for b in moe.branches:
            assert b.leader_mixing.grad.abs().sum() > 0 and b.router.gate.weight.grad.abs().sum() > 0 and b.fixed_expert.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in method.prior_generator.parameters())


def test_balance_loss_is_annealed_linearly_with_the_configured_epochs():
    method = tiny(modalities=["rgb"], epochs=4)
    batch = batch_for(method)
    factors = []
    for epoch in (0, 1, 3, 4, 9):
        method.on_epoch_start(epoch)
        factors.append(method.balance_factor())
    assert factors == [1.0, 0.75, 0.25, 0.001, 0.001]
    method.eval()  # fixed batch-norm statistics: the same losses twice
    method.on_epoch_start(1)
    losses = method.training_step(batch)
    torch.testing.assert_close(losses["loss"], losses["decompression"] + 0.75 * losses["balance"])
    assert losses["balance"] > 0


def test_loss_weights_per_sample_or_as_the_official_batch_mean():
    weighted = tiny(loss_weights={"bagel": 3.0})
    weighted.set_class_names(["bagel", "cookie"])
    batch = {**batch_for(weighted), "class_index": torch.tensor([0, 1])}
    assert weighted.pair_weights(batch, 4).tolist() == [3.0, 1.0, 3.0, 1.0]
    quirk = tiny(loss_weights={"bagel": 3.0}, loss_weight_per_sample=False)
    quirk.set_class_names(["bagel", "cookie"])
    assert quirk.pair_weights(batch, 4).tolist() == [2.0, 2.0, 2.0, 2.0]
    weighted.eval(), quirk.eval()
    assert not torch.allclose(weighted.training_step(batch)["decompression"], quirk.training_step(batch)["decompression"])
    same_class = {**batch, "class_index": torch.tensor([0, 0])}
    torch.testing.assert_close(weighted.training_step(same_class)["decompression"], quirk.training_step(same_class)["decompression"])
    with pytest.raises(ValueError, match="loss_weights names class"):
        weighted.set_class_names(["cookie"])


@pytest.mark.parametrize("modalities", [["rgb"], ["rgb", "depth"]])
def test_predict_gives_eval_size_maps_finite_scores_and_two_routing_records(modalities):
    method = tiny(modalities=modalities)
    batch = batch_for(method, batch_size=3)
    assert ("modalities" in batch) == (len(modalities) > 1)
    prediction = method.predict(batch)
    assert prediction.anomaly_maps.shape == (3, 32, 32) and torch.isfinite(prediction.image_scores).all()
    leaders, bases = prediction.routing
    assert len(leaders.layer_names) == 3 * 3 * len(modalities) and leaders.layer_names[0] == f"s1.k1.{modalities[0]}.leaders"
    assert bases.layer_names[-1] == f"s3.k5.{modalities[-1]}.bases" and len(bases.expert_names) == 3
    torch.testing.assert_close(leaders.gate_mean.sum(-1), torch.ones(3, leaders.gate_mean.shape[1]))
    assert torch.equal(leaders.selection_freq.sum(-1), torch.full(leaders.entropy.shape, 2.0))
    torch.testing.assert_close(bases.gate_mean.sum(-1), torch.ones(3, bases.gate_mean.shape[1]))
    assert torch.equal(bases.selection_freq.sum(-1), torch.ones(bases.entropy.shape))
    assert method.image_spec().modalities == tuple(modalities)


def test_missing_modality_in_the_batch_is_a_clear_error():
    method = tiny()
    batch = batch_for(method)
    del batch["modalities"]
    with pytest.raises(ValueError, match="no \\['rgb', 'depth'\\] image"):
        method.predict(batch)


def test_bad_modalities_and_top_k_are_reported_by_key():
    issues = method_config_issues("unimmad", "cpu", {"modalities": ["rgb", "rgb"], "top_k": 40})
    keys = {i.key for i in issues}
    assert keys == {"method_config.modalities", "method_config.top_k"}
