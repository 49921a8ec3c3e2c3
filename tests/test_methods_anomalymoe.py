"""AnomalyMoE as the official code does it (spec 4): counts, routing, ESB, the CLUB step, determinism, finish()."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

import methods
from methods.anomalymoe import colour_jitter, esb_terms, hard_mined_pixel_cosine, masked_average_pool
from methods.base import Prediction
from methods.blocks.routers import top_k_scatter
from test_methods_models import one_torch_thread  # noqa: F401  (autouse fixture)

# Every expert level (the cpu preset itself routes over 2 patch + 2 global experts only).
RANDOM = {"backbone_weights": "random", "component_experts": 2}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _cpu_model(**overrides) -> methods.AnomalyMethod:
    torch.manual_seed(0)
    return methods.build("anomalymoe", "cpu", {**RANDOM, **overrides}, feature_channels=[], feature_reductions=[])


def _batch(model, counts=(0, 2, 5, 1), seed: int = 1) -> dict:
    torch.manual_seed(seed)
    batch = model.example_batch(len(counts))
    batch["component_count"] = torch.tensor(counts)
    real = torch.arange(5)[None, :, None, None] < batch["component_count"][:, None, None, None]
    batch["components"] = (torch.rand(batch["components"].shape) > 0.5) & real
    return batch


def test_paper_preset_trains_452_454_610_parameters_with_estimator_and_encoder_apart():
    with torch.device("meta"):  # counts only: no memory, no init time
        model = methods.build("anomalymoe", "paper", {"backbone_weights": "random"}, feature_channels=[], feature_reductions=[])
    assert _count(model.patch_experts[0]) == 61_425_408  # 61.43M: bottleneck 4,722,432 + 8 blocks
    assert _count(model.global_experts[0].autoencoder) == 5_574_368 and _count(model.global_experts[0].student) == 7_940_096
    assert _count(model.component_experts[0]) == 435_648 and _count(model.router) == 201_490
    assert [len(model.patch_experts), len(model.global_experts), len(model.component_experts)] == [6, 6, 6]
    apart = model.parameters_reported_apart()
    apart_ids = {id(p) for module in apart.values() for p in module.parameters()}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in apart_ids)
    assert trainable == _count(model.reconstruction_module()) == 452_454_610  # 452.5M (spec table 4.6)
    assert _count(apart["club_estimator"]) == 2_365_440  # 2.37M
    assert sum(p.numel() for p in apart["encoder"].parameters()) == 86_580_480 and _count(apart["encoder"]) == 0
    assert model.grid == (28, 28) and model.encoder.prefix_tokens == 5 and model.encoder.route_level == 11


def test_top_k_weights_scatter_into_a_sparse_vector_summing_to_one_at_the_top_raw_logits():
    torch.manual_seed(0)
    logits = torch.randn(6, 18)
    weights, selected = top_k_scatter(logits, 3)
    top = logits.topk(3, dim=1)
    assert torch.equal((weights > 0).sum(1), torch.full((6,), 3)) and torch.equal(selected, weights > 0)
    torch.testing.assert_close(weights.sum(1), torch.ones(6))
    torch.testing.assert_close(weights.gather(1, top.indices), top.values.softmax(1))
    assert torch.equal(selected.gather(1, top.indices), torch.ones(6, 3, dtype=torch.bool))


def test_the_model_routes_each_image_over_all_experts_in_the_official_order():
    model = _cpu_model()
    prediction = model.predict(_batch(model))
    assert model.expert_names == ["patch0", "patch1", "global0", "global1", "component0", "component1"]
    record = prediction.routing
    assert record.layer_names == ["router"] and record.gate_mean.shape == (4, 1, 6)
    assert torch.equal((record.gate_mean > 0).sum(-1), torch.full((4, 1), 2))
    torch.testing.assert_close(record.gate_mean.sum(-1), torch.ones(4, 1))
    groups = record.gate_mean[:, 0].split([2, 2, 2], dim=1)
    torch.testing.assert_close(prediction.level_weights, torch.stack([g.amax(1) for g in groups], 1))


def test_esb_load_term_carries_no_gradient_and_the_others_follow_the_code():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, 3.0, 1.0, 0.0]], requires_grad=True)
    _, selected = top_k_scatter(logits, 2)
    terms = esb_terms(logits, selected, capacity_factor=1.0)
    assert not terms["load"].requires_grad and terms["importance"].requires_grad and terms["z"].requires_grad
    mean_probs = logits.detach().softmax(1).mean(0)
    assert terms["importance"].item() == pytest.approx(4 * (mean_probs**2).sum().item())
    assert terms["load"].item() == pytest.approx(0.5**2 + 1.5**2 + 0.5**2)  # counts (1, 2, 1, 0), capacity 1 * 2 / 4
    assert terms["z"].item() == pytest.approx(logits.detach().pow(2).mean().item())


def test_the_club_step_updates_only_the_estimator_and_the_main_step_never_touches_it():
    model = _cpu_model()
    model.train()
    estimator = {id(p) for p in model.estimator.parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model.training_step(_batch(model, counts=(3, 2, 5, 1)))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("estimator.") for n in changed)
    assert all(p.grad is None for p in model.estimator.parameters())
    assert torch.isfinite(losses["estimator"]) and losses["eir"] != 0
    after_estimator = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer, _, interval = model.configure_optimizers()
    optimizer.param_groups[0]["lr"] = 1e-3  # the warm-up starts at 0
    assert interval == "step" and not any(id(p) in estimator for g in optimizer.param_groups for p in g["params"])
    losses["loss"].backward()
    assert all(p.grad is None for p in model.estimator.parameters())  # the main loss gives it no gradient
    optimizer.step()
    for name, p in model.named_parameters():
        if name.startswith("estimator."):
            assert torch.equal(p, after_estimator[name]), name
    assert not torch.equal(model.router[0].weight, after_estimator["router.0.weight"])


def test_the_estimator_adam_state_travels_with_the_state_dict():
    model = _cpu_model()
    model.train()
    model.training_step(_batch(model))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = _cpu_model()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    state, loaded = model.estimator.optimizer.state_dict()["state"], restored.estimator.optimizer.state_dict()["state"]
    assert state and set(state) == set(loaded)
    assert all(torch.equal(state[k]["exp_avg"], loaded[k]["exp_avg"]) for k in state)


def test_evaluation_is_identical_run_to_run_and_test_jitter_is_seeded_per_sample():
    model = _cpu_model()
    model.train()  # predict must switch dropout off and come back to training mode
    batch = _batch(model)
    first, second = model.predict(batch), model.predict(batch)
    assert model.training
    for name in ("patch", "global", "component"):
        assert torch.equal(first.levels[name], second.levels[name]), name
    every = {"top_k": 6}  # every expert weighted, so the global level shows the jitter
    first = _cpu_model(**every).predict(batch)
    jittered = {seed: _cpu_model(test_jitter=True, test_jitter_seed=seed, **every).predict(batch) for seed in (3, 4)}
    again = _cpu_model(test_jitter=True, test_jitter_seed=3, **every).predict(batch)
    assert torch.equal(again.levels["global"], jittered[3].levels["global"])
    assert not torch.equal(jittered[4].levels["global"], jittered[3].levels["global"])
    assert not torch.equal(first.levels["global"], jittered[3].levels["global"])
    assert torch.equal(first.levels["patch"], jittered[3].levels["patch"])  # the jitter only feeds the global experts


def _slice(prediction: Prediction, rows: slice) -> Prediction:
    return Prediction(None, None, levels={k: v[rows] for k, v in prediction.levels.items()}, level_weights=prediction.level_weights[rows])


def test_finish_is_per_sample_so_a_split_batch_scores_the_same():
    model = _cpu_model()
    prediction = model.predict(_batch(model))
    minima = {k: torch.full((4,), float(v.min())) for k, v in prediction.levels.items()}
    maxima = {k: torch.full((4,), float(v.max())) for k, v in prediction.levels.items()}
    whole = model.finish(prediction, minima, maxima)
    parts = [model.finish(_slice(prediction, rows), {k: v[rows] for k, v in minima.items()}, {k: v[rows] for k, v in maxima.items()})
             for rows in (slice(0, 1), slice(1, 4))]
    assert torch.equal(whole.image_scores, torch.cat([p.image_scores for p in parts]))
    assert torch.equal(whole.anomaly_maps, torch.cat([p.anomaly_maps for p in parts]))
    assert whole.anomaly_maps.shape == (4, 128, 128) and torch.isfinite(whole.image_scores).all()


def test_a_constant_level_contributes_nothing():
    model = _cpu_model()
    prediction = model.predict(_batch(model))
    minima = {k: v.amin(dim=(1, 2)) for k, v in prediction.levels.items()}
    maxima = {k: v.amax(dim=(1, 2)) for k, v in prediction.levels.items()}
    flat = Prediction(None, None, levels={**prediction.levels, "global": torch.full_like(prediction.levels["global"], 0.7)},
                      level_weights=prediction.level_weights)
    constant = {**minima, "global": torch.full((4,), 0.7)}
    without = Prediction(None, None, levels=flat.levels, level_weights=flat.level_weights * torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(model.finish(flat, constant, {**maxima, "global": torch.full((4,), 0.7)}).anomaly_maps,
                               model.finish(without, constant, {**maxima, "global": torch.full((4,), 0.7)}).anomaly_maps)


def test_an_image_without_components_is_scored_and_trains():
    model = _cpu_model(top_k=6)
    batch = _batch(model, counts=(0, 0, 3, 0))
    prediction = model.predict(batch)
    assert torch.equal(prediction.levels["component"][[0, 1, 3]], torch.zeros(3, 64, 64))
    assert prediction.levels["component"][2].max() > 0
    scores = model.finish(prediction, {k: v.amin(dim=(1, 2)) for k, v in prediction.levels.items()},
                          {k: v.amax(dim=(1, 2)) for k, v in prediction.levels.items()}).image_scores
    assert torch.isfinite(scores).all()
    model.train()
    none = model.training_step(_batch(model, counts=(0, 0, 0, 0)))
    assert torch.isfinite(none["loss"]) and none["component"] == 0
    none["loss"].backward()
    assert all(p.grad is None for p in model.component_experts.parameters())


def test_missing_components_are_a_clear_error():
    model = _cpu_model()
    batch = _batch(model)
    del batch["components"]
    with pytest.raises(KeyError, match="'components'.*component_spec"):
        model.predict(batch)


def test_augment_gives_a_clean_and_a_jittered_view_from_the_generator_only():
    model = _cpu_model()
    image = torch.randn(3, 128, 128)
    state = torch.get_rng_state()
    views = [model.augment(image, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(views[0]["images"], image) and torch.equal(views[0]["images_jittered"], views[1]["images_jittered"])
    assert not torch.equal(views[0]["images_jittered"], image)


def test_brightness_jitter_scales_the_unnormalised_pixels():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    pixels = torch.rand(3, 4, 4) * 0.5
    generator = torch.Generator()
    for seed in range(50):  # find a draw that picked brightness (choice 0)
        generator.manual_seed(seed)
        if int(torch.randint(3, (1,), generator=generator)) == 0:
            factor = float(torch.empty(1).uniform_(0.8, 1.2, generator=generator))
            break
    out = colour_jitter((pixels - 0.5) / 0.25, torch.Generator().manual_seed(seed), 0.2, mean, std) * 0.25 + 0.5
    torch.testing.assert_close(out, (pixels * factor).clamp(0, 1))


def test_hard_mining_scales_easy_gradients_and_keeps_the_loss_value():
    torch.manual_seed(0)
    target = [torch.randn(2, 4, 3, 3)]
    decoded = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss, scaled = hard_mined_pixel_cosine(target, [decoded], p=0.5, factor=0.1)
    plain = (1 - F.cosine_similarity(target[0], decoded, dim=1)).mean(dim=(1, 2))
    torch.testing.assert_close(loss, plain)
    (hard,) = torch.autograd.grad(loss.sum(), decoded)
    (full,) = torch.autograd.grad(plain.sum(), decoded)
    distance = (1 - F.cosine_similarity(target[0], decoded, dim=1)).detach()
    threshold = distance.flatten().topk(9).values[-1]
    expected = torch.where((distance < threshold).unsqueeze(1), full * 0.1, full)
    torch.testing.assert_close(hard, expected)
    assert torch.equal(scaled[0], decoded)


def test_masked_average_pool_dilates_the_nearest_downsampled_mask():
    source = torch.arange(2 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8)
    masks = torch.zeros(1, 2, 16, 16, dtype=torch.bool)
    masks[0, 0, 8:10, 8:10] = True  # -> grid cell (4, 4), dilated 5x5 -> rows and columns 2..6
    pooled = masked_average_pool(source, masks, dilation=5)
    torch.testing.assert_close(pooled[0, 0], source[0, :, 2:7, 2:7].mean(dim=(1, 2)))
    assert torch.equal(pooled[0, 1], torch.zeros(2))  # an empty (padding) mask gives a zero vector, no NaN
