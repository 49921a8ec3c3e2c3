"""PatchCore (spec section 10): the embedding's closed form, squared L2, the coreset's start points,
the scipy map, the fit stage through the loop and the store, the per-class bank, the profile."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import methods
from harness.training.context import WorkerContext
from harness.training.loop import evaluate, fit, prepare_inputs, run_training
from harness.training.trial_config import TrialConfig
from methods.patchcore import ExactSearch, approximate_greedy_coreset, patch_embedding, random_projection

SMALL = {"image_size": 64, "eval_size": 64, "batch_size": 4, "coreset_ratio": 0.1}


def _config(root, **method_config):
    return {"method": "patchcore", "preset": "cpu", "dataset": "generic", "data_root": str(root), "seed": 3,
            "method_config": {**SMALL, **method_config}}


def test_layer2_dims_are_a_centre_weighted_3x3_average_of_one_channel():
    """Spec 10.3 closed form for 512 + 1024 channels at 1024/1024: dim c = 0.2 centre + 0.1 x 8 neighbours of channel c."""
    torch.manual_seed(0)
    layer2, layer3 = torch.randn(2, 512, 6, 6), torch.randn(2, 1024, 3, 3)
    embedding = patch_embedding([layer2, layer3], 3, 1024, 1024)  # (2, 36, 1024)
    kernel = torch.full((3, 3), 0.1)
    kernel[1, 1] = 0.2
    expected = F.conv2d(layer2, kernel.expand(512, 1, 3, 3), padding=1, groups=512)  # zero padding counted
    assert embedding.shape == (2, 36, 1024)
    torch.testing.assert_close(embedding[..., :512], expected.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_layer3_dims_average_a_channel_pair_on_its_own_grid_then_upsample():
    """Dim 512 + k: the mean of layer3 channels 2k, 2k+1 over the 3x3 window, then bilinear to layer2's grid."""
    torch.manual_seed(1)
    layer2, layer3 = torch.randn(1, 512, 6, 6), torch.randn(1, 1024, 3, 3)
    embedding = patch_embedding([layer2, layer3], 3, 1024, 1024)
    pairs = layer3.view(1, 512, 2, 3, 3).mean(2)
    window = F.avg_pool2d(pairs, 3, stride=1, padding=1, count_include_pad=True)
    expected = F.interpolate(window, size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(embedding[..., 512:], expected.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_search_returns_squared_l2_of_the_exact_nearest_vector(backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(500, 32, generator=generator), torch.randn(40, 32, generator=generator)
    distances, indices = ExactSearch(bank, backend).search(queries, 1)
    brute = ((queries[:, None, :] - bank[None]) ** 2).sum(-1)  # squared: no sqrt anywhere
    assert torch.equal(indices[:, 0], brute.argmin(1))
    torch.testing.assert_close(distances[:, 0], brute.min(1).values, rtol=1e-4, atol=1e-4)


def _reference_coreset(features: np.ndarray, ratio: float, seed: int, projected: np.ndarray) -> list[int]:
    """Spec 10.4 step by step in float64 numpy: 10 start points seed mean distances and are never kept."""
    starts = np.random.RandomState(seed).choice(len(features), 10, replace=False)
    distance = lambda centre: np.sqrt(np.clip(((projected - centre) ** 2).sum(1), 0, None))  # noqa: E731
    current = np.stack([distance(projected[s]) for s in starts], 1).mean(1)
    chosen = []
    for _ in range(int(len(features) * ratio)):
        pick = int(np.argmax(current))
        chosen.append(pick)
        current = np.minimum(current, distance(projected[pick]))
    return chosen


def test_coreset_follows_the_official_steps_and_does_not_keep_its_start_points():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(400, 256, generator=generator)
    chosen = approximate_greedy_coreset(features, 0.05, seed=7)
    projected = random_projection(features, 128, 7).double().numpy()
    assert chosen.tolist() == _reference_coreset(features.numpy(), 0.05, 7, projected)
    assert len(chosen) == int(400 * 0.05) == 20  # the 10 start points are not added
    starts = set(np.random.RandomState(7).choice(400, 10, replace=False).tolist())
    assert chosen[0].item() not in starts


def test_coreset_is_deterministic_for_a_seed_and_changes_with_it():
    features = torch.randn(300, 64, generator=torch.Generator().manual_seed(3))
    first = approximate_greedy_coreset(features, 0.1, seed=5)
    assert torch.equal(first, approximate_greedy_coreset(features, 0.1, seed=5))
    assert not torch.equal(first, approximate_greedy_coreset(features, 0.1, seed=6))


def test_projection_is_pytorchs_default_linear_init_seeded():
    features = torch.randn(5, 1024)
    generator = torch.Generator().manual_seed(11)
    weight = torch.empty(128, 1024)
    torch.nn.init.kaiming_uniform_(weight, a=5**0.5, generator=generator)
    torch.testing.assert_close(random_projection(features, 128, 11), features @ weight.T)
    assert weight.abs().max() <= 1 / 1024**0.5  # uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))


def test_map_is_bilinear_then_scipys_gaussian_sigma_4():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    method = methods.build("patchcore", "cpu", {"image_size": 64, "eval_size": 64}, feature_channels=[40, 112], feature_reductions=[8, 16])
    patches = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    upsampled = F.interpolate(patches, size=(64, 64), mode="bilinear", align_corners=False)[:, 0].numpy()
    expected = np.stack([scipy_ndimage.gaussian_filter(m, sigma=4) for m in upsampled])  # truncate 4, 'reflect'
    np.testing.assert_allclose(method.anomaly_maps(patches).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_fit_through_the_loop_writes_a_complete_store_row(fixture_root, tmp_path):
    from harness.identity import trial_run_id
    from harness.results.store import ResultStore
    from harness.sweep.outcome import record_outcome

    config = _config(fixture_root)
    outcome = run_training(config, output_dir=tmp_path / "run")
    assert outcome.run["epochs"] == 0 and outcome.run["params_trainable"] == 0
    assert len(outcome.sample_scores) == 10
    state = torch.load(outcome.checkpoint_dir / "model.pt", map_location="cpu", weights_only=True)
    assert state["optimizer"] is None and state["model"]["memory_bank"].shape[1] == 1024
    store = ResultStore(tmp_path / "results")
    run_id = trial_run_id(config, "1", outcome.run["dataset_fingerprint"])
    record_outcome(store, {"run_id": run_id, "config": config, "scaling": {"workers": 0}}, outcome)
    assert run_id in store.completed_run_ids()


def _fitted(fixture_root, **method_config):
    trial = TrialConfig.from_dict(_config(fixture_root, **method_config))
    quiet = lambda stage, info: None  # noqa: E731
    context = WorkerContext()
    inputs = prepare_inputs(trial, context, quiet, use_feature_cache=True)
    return inputs, fit(inputs, context, Path(tempfile.mkdtemp()), quiet)


def test_per_class_bank_holds_a_coreset_of_each_class_and_scores_against_its_own(fixture_root):
    inputs, trained = _fitted(fixture_root, bank="per_class")
    method = trained.model
    grid = 64 // 8
    counts = {}
    for sample in inputs.train_samples:
        counts[sample.class_name] = counts.get(sample.class_name, 0) + 1
    classes = sorted(counts)
    owners = method.bank_class.tolist()
    assert [owners.count(i) for i in range(len(classes))] == [int(0.1 * counts[c] * grid * grid) for c in classes]
    batch = next(inputs.source.batches("test", [[0, len(inputs.test_samples) - 1]], torch.device("cpu")))[1]
    _, nearest = method.patch_scores(method.embed(batch["features"]), batch["class_index"])
    for row, cls in zip(nearest, batch["class_index"].tolist()):
        assert set(method.bank_class[row].tolist()) == {cls}


def test_unified_bank_is_one_coreset_over_every_class(fixture_root):
    inputs, trained = _fitted(fixture_root)
    assert set(trained.model.bank_class.tolist()) == {-1}
    assert len(trained.model.memory_bank) == int(0.1 * len(inputs.train_samples) * 8 * 8)


def _fitted_evaluation_by_ranks(fixture_root, world_size: int) -> dict:
    trial = TrialConfig.from_dict(_config(fixture_root))
    quiet = lambda stage, info: None  # noqa: E731
    outputs = {}
    for rank in range(world_size):
        context = WorkerContext(rank=rank, world_size=world_size)
        inputs = prepare_inputs(trial, context, quiet, use_feature_cache=True)
        trained = fit(inputs, context, Path(tempfile.mkdtemp()), quiet)
        for row in evaluate(inputs, trained.model, context, quiet).prediction_rows:
            outputs[row["sample_id"]] = (row["score"], row["anomaly_map"].tobytes())
    return outputs


def test_every_rank_fits_the_same_bank_so_1_and_2_workers_score_identically(fixture_root):
    assert _fitted_evaluation_by_ranks(fixture_root, 2) == _fitted_evaluation_by_ranks(fixture_root, 1)


def test_reweighting_switch_is_eq_7_as_anomalib_applies_it(fixture_root):
    inputs, trained = _fitted(fixture_root)
    method = trained.model
    batch = next(inputs.source.batches("test", [[0, 1]], torch.device("cpu")))[1]
    plain = method.predict(batch).image_scores
    method.config["reweight"] = True
    weighted = method.predict(batch).image_scores
    bank = method.memory_bank
    embedding = method.embed(batch["features"])
    for image in range(2):
        squared = ((embedding[image][:, None, :] - bank[None]) ** 2).sum(-1)  # (P, M)
        top = squared.min(1).values.argmax()
        m_star = bank[squared[top].argmin()]
        support = ((bank - m_star) ** 2).sum(-1).topk(9, largest=False).indices  # N_b(m*), m* itself first
        distances = (embedding[image][top] - bank[support]).norm(dim=1)
        expected = plain[image] * (1 - distances.softmax(0)[0])
        torch.testing.assert_close(weighted[image], expected, rtol=1e-4, atol=1e-4)


def test_profile_reports_the_mvtec_bank_instead_of_parameters():
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "profile", "--method", "patchcore", "--preset", "paper", "--json"],
        capture_output=True, text=True, check=True,
    )
    bank = json.loads(result.stdout)["memory_bank"]
    assert bank["vectors_per_class_total"] == 284_509  # spec 10.8: the shipped IM224 faiss files
    assert bank["vectors_before_coreset"] == 2_845_136 and bank["patch_grid"] == 28 and bank["dims"] == 1024
    assert bank["bank"] == "unified" and bank["vectors"] == bank["vectors_unified"] == int(0.1 * 2_845_136)
    assert bank["bytes"] == bank["vectors"] * 1024 * 4
