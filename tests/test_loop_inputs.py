"""The loop's image input: a seeded DataLoader pipeline (per-epoch order dealt by rank, per-sample
augmentation seeds), and an image-input method trained on 1 and 2 Ray Train workers scoring alike.

No real image-input method exists yet, so a tiny conv autoencoder is registered here.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

import methods
from harness.data.fixtures import write_fixture
from harness.training.context import WorkerContext
from harness.training.inputs import ImageBatches, augmentation_seed
from harness.training.loop import _batches, _epoch_order, prepare_inputs, run_training
from harness.training.trial_config import TrialConfig

TINY_IMAGE = "tiny_image_test"


def register_tiny_image_method() -> None:
    """Register a 2-conv autoencoder on images (input_kind "images") with a seeded flip + noise augmentation."""
    from methods.base import SHARED_CONFIG_SCHEMA, AnomalyMethod, Prediction
    from methods.config_schema import Int, Real

    if TINY_IMAGE in methods.available():
        return
    preset = {"backbone": "none", "backbone_levels": [0], "backbone_weights": "random", "image_size": 32, "eval_size": 32,
              "epochs": 2, "batch_size": 3, "amp": False, "grad_clip": None, "seed": 0, "lr": 0.0, "loader_workers": 2}

    class TinyImageAutoencoder(AnomalyMethod):
        input_kind = "images"
        presets = {"paper": preset, "cpu": preset}
        config_schema = {**SHARED_CONFIG_SCHEMA, "lr": Real(min=0), "loader_workers": Int(min=0)}

        def __init__(self, config, feature_channels, feature_reductions):
            super().__init__(config, feature_channels, feature_reductions)
            self.encode = nn.Conv2d(3, 4, 3, padding=1)
            self.decode = nn.Conv2d(4, 3, 3, padding=1)

        def augment(self, image, generator):
            if torch.rand(1, generator=generator) < 0.5:
                image = image.flip(-1)
            return image + 0.01 * torch.randn(image.shape, generator=generator)

        def _error(self, images):
            return (self.decode(torch.relu(self.encode(images))) - images).pow(2).mean(1)

        def training_step(self, batch):
            return {"loss": self._error(batch["images"]).mean()}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=float(self.config["lr"])), None, "epoch"

        @torch.no_grad()
        def predict(self, batch):
            maps = self._error(batch["images"])
            return Prediction(image_scores=maps.flatten(1).amax(1), anomaly_maps=maps)

    methods.register(TINY_IMAGE)(TinyImageAutoencoder)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    register_tiny_image_method()
    return write_fixture("generic", tmp_path_factory.mktemp("generic"), size=64).root


def _config(root, **method_config):
    return {"method": TINY_IMAGE, "preset": "cpu", "dataset": "generic", "data_root": str(root), "seed": 5,
            "method_config": method_config}


def _inputs(root, context=None, **method_config):
    quiet = lambda stage, info: None  # noqa: E731
    return prepare_inputs(TrialConfig.from_dict(_config(root, **method_config)), context or WorkerContext(), quiet, True)


def test_augmentation_seed_depends_on_seed_epoch_and_sample_only():
    seeds = {augmentation_seed(s, e, i) for s in range(3) for e in range(3) for i in range(3)}
    assert len(seeds) == 27 and augmentation_seed(1, 2, 3) == augmentation_seed(1, 2, 3)


def test_image_batches_are_the_same_images_for_any_rank_and_loader_workers(fixture_root):
    """Epoch 1's augmented images, sample by sample: 1 rank with 2 loader workers == 2 ranks with none."""
    seen = {}
    for world_size, workers in ((1, 2), (2, 0)):
        images = {}
        for rank in range(world_size):
            context = WorkerContext(rank=rank, world_size=world_size)
            inputs = _inputs(fixture_root, context, loader_workers=workers)
            assert isinstance(inputs.source, ImageBatches)
            order = _epoch_order(len(inputs.train_samples), 1, inputs.trial.seed, context)
            for rows, batch in inputs.source.batches("train", _batches(order, 3), torch.device("cpu"), epoch=1):
                assert batch["images"].shape == (len(rows), 3, 32, 32) and batch["label"].tolist() == [0] * len(rows)
                images.update({row: image for row, image in zip(rows, batch["images"])})
        seen[world_size] = images
    assert seen[1].keys() == seen[2].keys()
    assert all(torch.equal(seen[1][row], seen[2][row]) for row in seen[1])


def test_augmentation_changes_with_the_epoch_and_evaluation_is_never_augmented(fixture_root):
    inputs = _inputs(fixture_root, loader_workers=0)
    cpu = torch.device("cpu")
    epoch0 = next(inputs.source.batches("train", [[0]], cpu, epoch=0))[1]["images"]
    epoch1 = next(inputs.source.batches("train", [[0]], cpu, epoch=1))[1]["images"]
    plain = next(inputs.source.batches("train", [[0]], cpu))[1]["images"]
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(plain, next(inputs.source.batches("train", [[0]], cpu))[1]["images"])
    assert not torch.equal(plain, epoch0)


def test_image_method_trains_and_evaluates_through_the_loop(fixture_root, tmp_path):
    outcome = run_training(_config(fixture_root, lr=0.01), output_dir=tmp_path / "run")
    assert outcome.run["epochs"] == 2 and np.isfinite(outcome.run["final_train_loss"])
    assert len(outcome.sample_scores) == 10 and outcome.run["backbone_weights"] == ""
    assert (outcome.checkpoint_dir / "model.pt").exists()


def _ray_train_worker(config: dict) -> None:
    register_tiny_image_method()  # a Ray Train worker is a fresh process
    from harness.training.loop import train_loop_per_worker

    train_loop_per_worker(config)


def _ray_outputs(config: dict, workers: int, storage) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    from harness.results.predictions import read_predictions

    trainer = TorchTrainer(
        _ray_train_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"tiny-{workers}", storage_path=str(storage)),
    )
    result = trainer.fit()
    folder = result.checkpoint.to_directory()
    return {p.sample_id: (float(p.score), p.anomaly_map.tobytes()) for p in read_predictions(os.path.join(folder, "predictions"))}


@pytest.mark.slow
def test_image_method_on_1_and_2_ray_train_workers_scores_and_maps_identically(fixture_root, tmp_path):
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    from ray_sweeps import patched_environ, private_ray_environ

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module
    config = _config(fixture_root, lr=0.0)
    with patched_environ(private_ray_environ()):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            one = _ray_outputs(config, 1, tmp_path / "ray")
            two = _ray_outputs(config, 2, tmp_path / "ray")
        finally:
            ray.shutdown()
    assert len(one) == 10 and one == two


# ------------------------------------------------------------------ class-normalised evaluation

TINY_NORMALISED = "tiny_class_normalised_test"


def register_tiny_normalised_method() -> None:
    """The tiny autoencoder again, its two error levels min-max normalised over each class's test set."""
    register_tiny_image_method()
    if TINY_NORMALISED in methods.available():
        return
    base = methods.get(TINY_IMAGE)

    class TinyClassNormalised(base):
        class_normalised = True

        @torch.no_grad()
        def predict(self, batch):
            error = self._error(batch["images"])
            return Prediction(None, None, levels={"plain": error, "squared": error.square()},
                              level_weights=torch.ones(len(error), 2))

        def finish(self, prediction, minima, maxima):
            self.ranges_seen = getattr(self, "ranges_seen", []) + [(minima, maxima)]
            maps = sum((prediction.levels[n] - minima[n].view(-1, 1, 1)) / (maxima[n] - minima[n]).view(-1, 1, 1)
                       for n in ("plain", "squared"))
            return Prediction(maps.flatten(1).amax(1), maps)

    from methods.base import Prediction

    methods.register(TINY_NORMALISED)(TinyClassNormalised)


class ThreadRankContext(WorkerContext):
    """One in-process rank of a group run on threads: gather meets the other ranks at a barrier."""

    def __init__(self, rank, world_size, slots, barrier):
        super().__init__(rank=rank, world_size=world_size, device=torch.device("cpu"))
        self.slots, self.barrier = slots, barrier

    def gather(self, obj):
        self.slots[self.rank] = obj
        self.barrier.wait(timeout=120)
        gathered = list(self.slots)
        self.barrier.wait(timeout=120)
        return gathered


def _evaluated_on_thread_ranks(trial: TrialConfig, world_size: int) -> dict:
    """sample_id -> (score, map bytes) of the seeded model, ``world_size`` ranks evaluating at once on threads."""
    import threading

    from harness.training.loop import evaluate

    quiet = lambda stage, info: None  # noqa: E731
    slots, barrier = [None] * world_size, threading.Barrier(world_size)
    contexts = [ThreadRankContext(r, world_size, slots, barrier) for r in range(world_size)]
    prepared = [prepare_inputs(trial, c, quiet, True) for c in contexts]
    shards = [None] * world_size

    def run(rank):
        shards[rank] = evaluate(prepared[rank], prepared[rank].method, contexts[rank], quiet)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {row["sample_id"]: (row["score"], row["anomaly_map"].tobytes()) for s in shards for row in s.prediction_rows}


def _normalised_by_ranks(root, world_size: int) -> dict:
    register_tiny_normalised_method()
    return _evaluated_on_thread_ranks(TrialConfig.from_dict({**_config(root, loader_workers=0), "method": TINY_NORMALISED}), world_size)


def test_class_normalised_levels_use_the_whole_class_and_agree_on_1_2_and_3_ranks(fixture_root):
    one = _normalised_by_ranks(fixture_root, 1)
    assert len(one) == 10
    for world_size in (2, 3):
        assert _normalised_by_ranks(fixture_root, world_size) == one
    # The ranges finish() saw are each class's extremes over its whole test set: some sample reaches 0 and 2.
    maps = {sid: np.frombuffer(m, dtype=np.float16) for sid, (_, m) in one.items()}
    for cls in {sid.split("/")[0] for sid in maps}:
        values = np.concatenate([m for sid, m in maps.items() if sid.startswith(cls + "/")]).astype(np.float32)
        assert values.min() == pytest.approx(0.0, abs=1e-3) and values.max() == pytest.approx(2.0, abs=2e-3)


def test_depth_on_a_dataset_without_point_clouds_is_one_clear_message(fixture_root, capsys):
    from harness.cli import main

    code = main(["train", "--method", "unimmad", "--preset", "cpu", "--dataset", "generic", "--data-root", str(fixture_root)])
    err = capsys.readouterr().err
    assert code == 2 and "modality 'depth' needs each sample's 'xyz' file" in err and "Traceback" not in err
    assert "set method_config.modalities to [rgb]" in err


def test_anomalymoe_evaluates_bit_identically_on_1_and_2_ranks(fixture_root):
    """The real method through both passes (component masks, raw levels, merged class ranges, finish)."""
    overrides = {"loader_workers": 0, "eval_size": 64, "component_image_size": 64, "component_mask_size": 32, "component_coreset_fraction": 0.25,
                 "batch_size": 4}
    trial = TrialConfig.from_dict({"method": "anomalymoe", "preset": "cpu", "dataset": "generic", "data_root": str(fixture_root),
                                   "seed": 3, "method_config": overrides})
    outputs = {world_size: _evaluated_on_thread_ranks(trial, world_size) for world_size in (1, 2)}
    assert len(outputs[1]) == 10 and outputs[2] == outputs[1]
    assert all(np.isfinite(score) for score, _ in outputs[1].values())
