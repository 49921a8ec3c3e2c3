"""The one training loop: seeded training on (cached) frozen features or on images, last-epoch
checkpoint, sharded evaluation through harness.metrics, per-sample outputs written for later re-scoring.

Its stages: ``prepare_inputs`` (dataset, model, batch source), ``fit`` (training-free methods: one
pass) or ``train`` (epochs), ``evaluate``, ``record``. `run_training(config)` runs it in this
process; `train_loop_per_worker(config)` is the same loop as a Ray Train worker. Nothing here
special-cases a method: everything method-specific comes through the contract in methods/base.py,
and only prepare_inputs looks at the method's input kind (it picks the batch source).

Fit under Ray Train: every rank fits on the whole training set (same seed, same batches, so the
same state) and no state travels. Each rank needs the full state to score its share of the test
set anyway, and a greedy coreset is not mergeable from per-rank shards.
"""

from __future__ import annotations

import json
import math
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import methods
from harness.backbones import create_backbone
from harness.data import load_dataset
from harness.metrics import AUPIMO, METRIC_VERSION, MetricAccumulator
from harness.results.predictions import write_predictions
from harness.training.context import WorkerContext
from harness.training.feature_cache import FeatureCache, FeatureKey, LevelAlignment, cached_features
from harness.training.inputs import BatchSource, FeatureBatches, ImageBatches, check_modalities, ground_truth
from harness.training.trial_config import TrialConfig


class TrainingDiverged(RuntimeError):
    """A non-finite loss: the trial is recorded as failed with this message."""


@dataclass
class TrainingOutcome:
    """What one finished trial produced; outcome.json in the final checkpoint holds the same."""

    run: dict
    metrics: list[dict]
    sample_scores: list[dict]
    routing: list[dict]
    checkpoint_dir: Path
    metric_table: object = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {"run": self.run, "metrics": self.metrics, "sample_scores": self.sample_scores, "routing": self.routing}

    @classmethod
    def from_checkpoint(cls, folder: Path) -> TrainingOutcome:
        data = json.loads((Path(folder) / "outcome.json").read_text())
        return cls(data["run"], data["metrics"], data["sample_scores"], data["routing"], Path(folder))


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _epoch_order(n: int, epoch: int, seed: int, context: WorkerContext) -> list[int]:
    """This worker's sample order for one epoch: one seeded permutation, dealt out by rank."""
    generator = torch.Generator()
    generator.manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    per_worker = math.ceil(n / context.world_size)
    order += order[: per_worker * context.world_size - n]  # equal step counts keep DDP in lockstep
    return order[context.rank :: context.world_size]


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _save_training_state(folder: Path, model, optimizer, scheduler, epoch: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "rng": torch.get_rng_state(),
    }
    torch.save(state, folder / "model.pt.tmp")
    (folder / "model.pt.tmp").replace(folder / "model.pt")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


@dataclass
class TrainingInputs:
    """Everything fitting, training and evaluation read: the trial, the model, and its batch source."""

    trial: TrialConfig
    method_config: dict
    index: object
    method: torch.nn.Module  # the method itself, never its DDP wrapper
    dataset_fingerprint: str
    source: BatchSource  # features or images, as the method's input_kind says
    backbone_weights: str  # the resolved source, e.g. "packaged:..." or "random"; "" for image input
    backbone_weights_sha256: str
    train_samples: list
    test_samples: list
    features_cached: bool
    feature_seconds: float


@dataclass
class TrainedModel:
    model: torch.nn.Module  # as the context wrapped it (DDP under Ray Train)
    optimizer: torch.optim.Optimizer | None  # None for a fitted method
    scheduler: object
    epochs: int
    last_losses: dict[str, float]
    trained_images: int
    seconds: float


@dataclass
class EvaluatedShard:
    """This worker's share of the test set: metric state, score rows, routing records, maps."""

    accumulator: MetricAccumulator
    sample_rows: list[dict]
    routing_records: list
    prediction_rows: list[dict]
    seconds: float


def run_training(
    config: dict | TrialConfig,
    context: WorkerContext | None = None,
    *,
    on_progress: Callable[[str, dict], None] | None = None,
    use_feature_cache: bool = True,
    output_dir: Path | None = None,
) -> TrainingOutcome | None:
    """Train and evaluate one configuration. Returns the outcome on the main worker, None elsewhere.

    on_progress(stage, info) is called with stage in {"features", "epoch", "eval"} for progress bars.
    """
    trial = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    context = context or WorkerContext()
    progress = on_progress or (lambda stage, info: None)
    started = time.time()
    inputs = prepare_inputs(trial, context, progress, use_feature_cache)
    checkpoint_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="harness-trial-"))
    stage = fit if inputs.method.fitted else train  # the method's declaration, not a branch on its name
    trained = stage(inputs, context, checkpoint_dir, progress)
    shard = evaluate(inputs, trained.model, context, progress)
    return record(inputs, trained, shard, context, checkpoint_dir, started)


# ------------------------------------------------------------------------------------ inputs


def prepare_inputs(trial: TrialConfig, context: WorkerContext, progress, use_feature_cache: bool) -> TrainingInputs:
    """The dataset, the seeded model and its batch source: the backbone's features of both splits
    (cached or computed) for feature input, a seeded image pipeline for image input."""
    seed_everything(trial.seed)
    index = load_dataset(trial.dataset, trial.data_root, classes=trial.classes, expected=trial.expect, options=trial.dataset_options)
    method_config = methods.preset_config(trial.method, trial.preset, trial.method_config)
    samples = {split: sorted(index.split(split), key=lambda s: s.sample_id) for split in ("train", "test")}
    classes = {name: i for i, name in enumerate(sorted(index.classes))}
    fingerprint = index.fingerprint()  # one stat of every file: the run id and the feature cache key share it
    kind = methods.get(trial.method).input_kind
    parts = _INPUT_STAGES[kind](trial, method_config, fingerprint, samples, classes, context, progress, use_feature_cache)
    parts["method"].set_class_names(list(classes))
    return TrainingInputs(
        trial=trial,
        method_config=method_config,
        index=index,
        dataset_fingerprint=fingerprint,
        train_samples=samples["train"],
        test_samples=samples["test"],
        **parts,
    )


def _feature_input(trial, method_config, fingerprint, samples, classes, context, progress, use_feature_cache) -> dict:
    """Feature input: the frozen backbone, the method built for its levels, both splits' features."""
    backbone = create_backbone(
        method_config["backbone"], method_config["backbone_levels"], weights=method_config.get("backbone_weights", "auto")
    ).to(context.device)
    seed_everything(trial.seed)  # building the backbone must not shift the method's initialisation
    method = methods.build(
        trial.method,
        trial.preset,
        trial.method_config,
        feature_channels=list(backbone.channels),
        feature_reductions=list(backbone.reductions),
    )
    alignment = LevelAlignment(*pair) if (pair := method.level_alignment()) is not None else None
    key = FeatureKey(
        dataset=trial.dataset,
        dataset_fingerprint=fingerprint,
        backbone=method_config["backbone"],
        weights_id=backbone.weights_id,
        levels=tuple(method_config["backbone_levels"]),
        image_size=int(method_config["image_size"]),
        dtype=method_config.get("feature_dtype", "float32"),
        alignment=alignment.name if alignment is not None else "",
    )
    started = time.time()
    cache = FeatureCache() if use_feature_cache else None
    features, hits = {}, {}
    for split, split_samples in samples.items():
        features[split], hits[split] = _split_features(key, split, split_samples, backbone, cache, progress, alignment)
    return {
        "method": method,
        "source": FeatureBatches(samples, classes, features),
        "backbone_weights": backbone.weights_source,
        "backbone_weights_sha256": backbone.weights_sha256,
        "features_cached": all(hits.values()),
        "feature_seconds": time.time() - started,
    }


def _image_input(trial, method_config, fingerprint, samples, classes, context, progress, use_feature_cache) -> dict:
    """Image input: the method (it owns its encoder) and a seeded DataLoader pipeline over both splits."""
    method = methods.build(trial.method, trial.preset, trial.method_config, feature_channels=[], feature_reductions=[])
    spec = method.image_spec()
    check_modalities(samples, spec.modalities, trial.dataset)
    workers = int(method_config.get("loader_workers", 2))
    components = _component_masks(trial, method, fingerprint, samples, use_feature_cache, progress)
    source = ImageBatches(samples, classes, spec, method.augment, trial.seed, workers, components)
    return {
        "method": method,
        "source": source,
        "backbone_weights": "",
        "backbone_weights_sha256": "",
        "features_cached": False,
        "feature_seconds": 0.0,
    }


def _component_masks(trial, method, fingerprint, samples, use_cache: bool, progress) -> dict | None:
    """The offline component masks of both splits (computed once per dataset and spec, then cached)."""
    spec = method.component_spec()
    if spec is None:
        return None
    from harness.components import component_masks

    masks = {}
    for split, split_samples in samples.items():
        progress("components", {"split": split, "total": len(split_samples), "advance": 0})
        masks[split] = component_masks(
            trial.dataset, fingerprint, split, split_samples, spec, train_samples=samples["train"], use_cache=use_cache,
            progress=lambda n, split=split: progress("components", {"split": split, "advance": n}),
        )
    return masks


_INPUT_STAGES = {"features": _feature_input, "images": _image_input}  # keyed by methods.base.INPUT_KINDS


def _split_features(key: FeatureKey, split: str, samples: list, backbone, cache, progress, alignment=None):
    progress("features", {"split": split, "total": len(samples), "advance": 0})
    features, hit = cached_features(
        key, split, samples, backbone, cache=cache, align=alignment,
        progress=lambda n: progress("features", {"split": split, "advance": n}),
        on_wait=lambda owner: progress("features", {"split": split, "info": f"waiting for {owner.get('host')}:{owner.get('pid')}"}),
    )
    progress("features", {"split": split, "completed": len(samples), "info": "from cache" if hit else "computed"})
    return features, hit


# --------------------------------------------------------------------------------------- fit


def fit(inputs: TrainingInputs, context: WorkerContext, checkpoint_dir: Path, progress) -> TrainedModel:
    """A training-free method's one pass: ``method.fit`` over every training sample, in sample-id
    order and fixed batches, on every rank (see the module docstring); a restarted worker group
    loads the fitted state from its checkpoint instead of fitting again."""
    method = inputs.method.to(context.device)  # no DDP: nothing to synchronise, nothing trains
    started = time.time()
    if _resume(context, method, None, None) == 0:
        rows = _batches(list(range(len(inputs.train_samples))), int(inputs.method_config["batch_size"]))
        method.fit(batch for _, batch in inputs.source.batches("train", rows, context.device))
        _report_checkpoint(inputs, context, checkpoint_dir, method, None, None, 0, {}, progress)
    return TrainedModel(method, None, None, 0, {}, len(inputs.train_samples), time.time() - started)


def _report_checkpoint(inputs, context, checkpoint_dir, model, optimizer, scheduler, epoch, losses, progress) -> None:
    """Save (rank 0) and report one finished epoch, or the fit, with its checkpoint."""
    epoch_dir = None
    if context.is_main:
        epoch_dir = checkpoint_dir / "training"
        _save_training_state(epoch_dir, model, optimizer, scheduler, epoch)
    epochs = int(inputs.method_config["epochs"]) if not inputs.method.fitted else 1
    report = {"epoch": epoch + 1, "epochs": epochs, **{f"train_{k}": v for k, v in losses.items()}}
    context.report_epoch(report, epoch_dir)
    progress("epoch", report)


# ------------------------------------------------------------------------------------- train


def train(inputs: TrainingInputs, context: WorkerContext, checkpoint_dir: Path, progress) -> TrainedModel:
    """The epochs from the last checkpoint (if Ray Train restarted this worker group) to the end."""
    method = inputs.method
    model = context.wrap_model(method)
    optimizer, scheduler, scheduler_interval = method.configure_optimizers()
    start_epoch = _resume(context, method, optimizer, scheduler)
    epochs = int(inputs.method_config["epochs"])
    started = time.time()
    trained_images = 0
    last_losses: dict[str, float] = {}
    for epoch in range(start_epoch, epochs):
        method.on_epoch_start(epoch)
        model.train()
        last_losses, images = _train_epoch(inputs, model, optimizer, scheduler, scheduler_interval, epoch, context)
        trained_images += images
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        _report_checkpoint(inputs, context, checkpoint_dir, model, optimizer, scheduler, epoch, last_losses, progress)
    return TrainedModel(model, optimizer, scheduler, epochs, last_losses, trained_images, time.time() - started)


def _resume(context: WorkerContext, method, optimizer, scheduler) -> int:
    """The epoch to start from: 0, or the one after the checkpoint Ray Train restarts us from."""
    resume = context.resume_checkpoint()
    if resume is None or not (resume / "model.pt").exists():
        return 0
    state = torch.load(resume / "model.pt", map_location=context.device, weights_only=True)
    method.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state.get("rng") is not None:  # jitter and dropout go on as if never interrupted
        torch.set_rng_state(state["rng"].cpu())
    return int(state["epoch"]) + 1


def _train_epoch(inputs, model, optimizer, scheduler, scheduler_interval, epoch, context) -> tuple[dict[str, float], int]:
    """One epoch of this worker's share; returns the mean loss terms and the images trained on."""
    config = inputs.method_config
    grad_clip = config.get("grad_clip")
    use_amp = bool(config.get("amp")) and context.device.type == "cuda"
    totals: dict[str, float] = {}
    steps = images = 0
    order = _epoch_order(len(inputs.train_samples), epoch, inputs.trial.seed, context)
    for rows, batch in inputs.source.batches("train", _batches(order, int(config["batch_size"])), context.device, epoch):
        with torch.autocast(context.device.type, dtype=torch.bfloat16, enabled=use_amp):  # bf16: no loss scaler needed
            losses = model(batch)
        _check_finite(losses, epoch, steps)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
        optimizer.step()
        if scheduler is not None and scheduler_interval == "step":
            scheduler.step()
        for name, value in losses.items():
            totals[name] = totals.get(name, 0.0) + float(value.detach())
        steps += 1
        images += len(rows)
    return {name: total / max(steps, 1) for name, total in totals.items()}, images


def _check_finite(losses: dict, epoch: int, step: int) -> None:
    loss = losses["loss"]
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {step + 1} "
            f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())}); "
            "lower the learning rate or enable gradient clipping"
        )


# ---------------------------------------------------------------------------------- evaluate


def evaluation_batches(n: int, batch_size: int, context: WorkerContext) -> list[list[int]]:
    """This worker's evaluation batches: the sorted test set cut into fixed batches, whole batches
    dealt out by rank, so every sample is scored in the same batch for any number of workers (CPU
    kernels round differently for different batch shapes) and no sample is scored twice."""
    return _batches(list(range(n)), batch_size)[context.rank :: context.world_size]


def evaluate(inputs: TrainingInputs, model: torch.nn.Module, context: WorkerContext, progress) -> EvaluatedShard:
    """Score this worker's batches of the test set: metric state, per-sample scores and maps.

    A class-normalised method (AnomalyMoE) is scored in two passes: its raw level maps first, then,
    once every worker's per-class level minima and maxima are merged (min and max merge exactly, in
    any order), the final maps, so any number of workers gives the same bytes."""
    started = time.time()
    model.eval()
    batches = evaluation_batches(len(inputs.test_samples), int(inputs.method_config["batch_size"]), context)
    shard = EvaluatedShard(MetricAccumulator(), [], [], [], 0.0)
    progress("eval", {"total": sum(len(rows) for rows in batches), "advance": 0})
    predicted = []
    for rows, batch in inputs.source.batches("test", batches, context.device):
        samples = [inputs.test_samples[i] for i in rows]
        with torch.no_grad():
            prediction = inputs.method.predict(batch)
        if inputs.method.class_normalised:
            predicted.append((samples, _to_cpu(prediction)))
        else:
            _record_prediction(inputs, samples, prediction, shard)
        progress("eval", {"advance": len(rows)})
    if inputs.method.class_normalised:
        ranges = merged_level_ranges(context.gather(level_ranges(predicted)))
        for samples, finished in finished_predictions(inputs.method, predicted, ranges):
            _record_prediction(inputs, samples, finished, shard)
    shard.seconds = time.time() - started
    return shard


def _to_cpu(prediction):
    levels = {name: level.detach().cpu() for name, level in prediction.levels.items()}
    weights = prediction.level_weights.detach().cpu() if prediction.level_weights is not None else None
    return methods.Prediction(None, None, prediction.routing, levels, weights)


def level_ranges(predicted: list) -> dict[tuple[str, str], tuple[float, float]]:
    """(class, level) -> (min, max) of the raw level maps of this worker's predictions."""
    ranges: dict[tuple[str, str], tuple[float, float]] = {}
    for samples, prediction in predicted:
        for name, level in prediction.levels.items():
            flat = level.flatten(1)
            for sample, low, high in zip(samples, flat.amin(1).tolist(), flat.amax(1).tolist()):
                _widen(ranges, (sample.class_name, name), low, high)
    return ranges


def merged_level_ranges(shards: list[dict]) -> dict[tuple[str, str], tuple[float, float]]:
    """Every worker's ranges as one: min and max merge exactly in any order."""
    merged: dict[tuple[str, str], tuple[float, float]] = {}
    for ranges in shards:
        for key, (low, high) in ranges.items():
            _widen(merged, key, low, high)
    return merged


def _widen(ranges: dict, key, low: float, high: float) -> None:
    old = ranges.get(key, (low, high))
    ranges[key] = (min(old[0], low), max(old[1], high))


def finished_predictions(method, predicted: list, ranges: dict) -> list:
    """(samples, prediction) batches of raw levels -> (samples, ``finish``ed prediction), given the ranges."""
    return [(samples, method.finish(prediction, *sample_level_ranges(ranges, [s.class_name for s in samples])))
            for samples, prediction in predicted]


def sample_level_ranges(ranges: dict, class_names: list[str]) -> tuple[dict, dict]:
    """Each sample's class minimum and maximum per level (name -> (B,)), the arguments of ``finish``."""
    names = sorted({level for _, level in ranges})
    lows = {n: torch.tensor([ranges[(c, n)][0] for c in class_names], dtype=torch.float32) for n in names}
    highs = {n: torch.tensor([ranges[(c, n)][1] for c in class_names], dtype=torch.float32) for n in names}
    return lows, highs


def _record_prediction(inputs: TrainingInputs, samples: list, prediction, shard: EvaluatedShard) -> None:
    class_names = [s.class_name for s in samples]
    maps = prediction.anomaly_maps.float().cpu().numpy().astype(np.float16)
    scores = prediction.image_scores.float().cpu().numpy()
    shard.accumulator.update(
        image_scores=scores,
        image_labels=np.array([s.label for s in samples]),
        anomaly_maps=maps,
        class_names=class_names,
        sample_ids=[s.sample_id for s in samples],
        defect_types=[s.defect_type for s in samples],
        **ground_truth(samples, int(inputs.method_config["eval_size"]), getattr(inputs.index, "defects_config", None) or None),
    )
    for sample, score, anomaly_map in zip(samples, scores, maps):
        row = {
            "sample_id": sample.sample_id,
            "class_name": sample.class_name,
            "defect_type": sample.defect_type,
            "label": int(sample.label),
            "score": float(score),
            "view": sample.extra.get("view"),
        }
        shard.sample_rows.append(row)
        shard.prediction_rows.append({**row, "anomaly_map": anomaly_map})
    routing = prediction.routing
    for record in routing if isinstance(routing, list) else [routing] if routing is not None else []:
        shard.routing_records.append((record, class_names))


# ------------------------------------------------------------------------------------ record


def record(
    inputs: TrainingInputs, trained: TrainedModel, shard: EvaluatedShard, context: WorkerContext, checkpoint_dir: Path, started: float
) -> TrainingOutcome | None:
    """Each worker persists its own maps (Ray merges the workers' checkpoint folders); only the small
    metric states and score rows travel to rank 0, which merges them into the outcome."""
    final_dir = checkpoint_dir / "final"
    write_predictions(final_dir / "predictions" / f"part-{context.rank:03d}.parquet", shard.prediction_rows)
    shard.prediction_rows = []
    gathered = context.gather((shard.accumulator, shard.sample_rows, shard.routing_records))
    if not context.is_main:
        context.report_final({"evaluated": True}, final_dir)
        return None
    table = _merged_accumulator([g[0] for g in gathered]).compute()
    aupimo = table.sample_values.get(AUPIMO, {})
    all_samples = sorted(({**row, "aupimo": aupimo.get(row["sample_id"])} for g in gathered for row in g[1]), key=lambda r: r["sample_id"])
    all_routing = [record for g in gathered for record in g[2]]
    _keep_final_model(checkpoint_dir, final_dir, trained)
    metric_rows = [
        {"dataset": inputs.trial.dataset, "class_name": r.class_name, "metric": r.metric, "value": r.value, "note": r.note}
        for r in table.rows
    ]
    routing_rows = methods.summarise_routing_records(all_routing) if all_routing else []
    run = _run_row(inputs, trained, shard, context, started)
    outcome = TrainingOutcome(run, metric_rows, all_samples, routing_rows, final_dir, table)
    (final_dir / "outcome.json").write_text(json.dumps(outcome.to_json(), default=float))
    context.report_final({"evaluated": True, **{f"mean_{k}": v for k, v in table.mean().items()}}, final_dir)
    return outcome


def _merged_accumulator(accumulators: list[MetricAccumulator]) -> MetricAccumulator:
    merged = accumulators[0]
    for other in accumulators[1:]:
        merged = merged.merge(other)
    return merged


def _keep_final_model(checkpoint_dir: Path, final_dir: Path, trained: TrainedModel) -> None:
    training_dir = checkpoint_dir / "training"
    if not (training_dir / "model.pt").exists():  # resumed after the last epoch, or epochs: 0
        _save_training_state(training_dir, trained.model, trained.optimizer, trained.scheduler, trained.epochs - 1)
    shutil.copy2(training_dir / "model.pt", final_dir / "model.pt")


def _run_row(inputs: TrainingInputs, trained: TrainedModel, shard: EvaluatedShard, context: WorkerContext, started: float) -> dict:
    """The runs-table columns the loop knows, provenance of this (rank 0) process included."""
    from harness.results import provenance

    trial, method = inputs.trial, inputs.method
    return {
        "method": trial.method,
        "method_version": method.version,
        "preset": trial.preset,
        "dataset": trial.dataset,
        "dataset_fingerprint": inputs.dataset_fingerprint,
        "seed": trial.seed,
        "config_json": json.dumps(trial.to_dict(), sort_keys=True),
        "method_config_json": json.dumps(inputs.method_config, sort_keys=True, default=str),
        "workers_used": context.world_size,
        "device": str(context.device),
        "epochs": trained.epochs,
        "final_train_loss": trained.last_losses.get("loss", float("nan")),
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "wall_time_features_s": inputs.feature_seconds,
        "features_cached": inputs.features_cached,
        "wall_time_train_s": trained.seconds,
        "wall_time_eval_s": shard.seconds,
        "wall_time_total_s": time.time() - started,
        "train_throughput_img_s": trained.trained_images * context.world_size / max(trained.seconds, 1e-9),
        "infer_throughput_img_s": len(inputs.test_samples) / max(shard.seconds, 1e-9),
        "peak_memory_mb": _peak_memory_mb(context.device),
        "params_trainable": sum(p.numel() for p in method.parameters() if p.requires_grad),
        "backbone_weights": inputs.backbone_weights,
        "backbone_weights_sha256": inputs.backbone_weights_sha256,
        "metric_version": METRIC_VERSION,
        "hardware_json": json.dumps(provenance.hardware(), sort_keys=True),
        **provenance.compute_environment(),
    }


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: the same loop, as one worker of a TorchTrainer."""
    from harness.training.context import RayWorkerContext

    run_training(config, RayWorkerContext())
