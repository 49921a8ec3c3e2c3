"""The one training loop: seeded training on (cached) frozen features, last-epoch checkpoint,
sharded evaluation through harness.metrics, per-sample outputs written for later re-scoring.

`run_training(config)` runs it in this process; `train_loop_per_worker(config)` is the same loop
as a Ray Train worker. Nothing here special-cases a method: everything method-specific comes
through the contract in methods/base.py.
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
from pathlib import Path

import numpy as np
import torch

import methods
from harness.backbones import create_backbone
from harness.data import load_dataset
from harness.metrics import METRIC_VERSION, MetricAccumulator
from harness.results.predictions import write_predictions
from harness.training.context import WorkerContext
from harness.training.feature_cache import FeatureCache, FeatureKey, cached_features
from harness.training.inputs import ground_truth
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
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "rng": torch.get_rng_state(),
    }
    torch.save(state, folder / "model.pt.tmp")
    (folder / "model.pt.tmp").replace(folder / "model.pt")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _to_device(features: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [f.to(device, non_blocking=True) for f in features]


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

    generator = seed_everything(trial.seed)
    index = load_dataset(trial.dataset, trial.data_root, classes=trial.classes, expected=trial.expect)
    method_config = methods.preset_config(trial.method, trial.preset, trial.method_config)
    backbone = create_backbone(
        method_config["backbone"], method_config["backbone_levels"], weights=method_config.get("backbone_weights", "auto")
    ).to(context.device)
    seed_everything(trial.seed)  # building the backbone must not shift the method's initialisation
    model = methods.build(
        trial.method,
        trial.preset,
        trial.method_config,
        feature_channels=list(backbone.channels),
        feature_reductions=list(backbone.reductions),
    )
    method = model
    class_names = sorted(index.classes)
    class_to_index = {name: i for i, name in enumerate(class_names)}

    key = FeatureKey(
        dataset=trial.dataset,
        dataset_fingerprint=index.fingerprint(),
        backbone=method_config["backbone"],
        weights_id=backbone.weights_id,
        levels=tuple(method_config["backbone_levels"]),
        image_size=int(method_config["image_size"]),
    )
    cache = FeatureCache() if use_feature_cache else None
    train_samples = sorted(index.split("train"), key=lambda s: s.sample_id)
    test_samples = sorted(index.split("test"), key=lambda s: s.sample_id)
    t_features = time.time()
    feature_hits = {}
    splits = {}
    for split, samples in (("train", train_samples), ("test", test_samples)):
        progress("features", {"split": split, "total": len(samples), "advance": 0})
        features, hit = cached_features(
            key, split, samples, backbone, cache=cache, progress=lambda n: progress("features", {"split": split, "advance": n})
        )
        splits[split] = features
        feature_hits[split] = hit
        progress("features", {"split": split, "completed": len(samples), "info": "from cache" if hit else "computed"})
    feature_seconds = time.time() - t_features
    del backbone

    train_labels = torch.tensor([class_to_index[s.class_name] for s in train_samples])
    model = context.wrap_model(model)
    optimizer, scheduler, scheduler_interval = method.configure_optimizers()
    epochs = int(method_config["epochs"])
    batch_size = int(method_config["batch_size"])
    grad_clip = method_config.get("grad_clip")
    use_amp = bool(method_config.get("amp")) and context.device.type == "cuda"

    start_epoch = 0
    resume = context.resume_checkpoint()
    if resume is not None and (resume / "model.pt").exists():
        state = torch.load(resume / "model.pt", map_location=context.device, weights_only=False)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1

    checkpoint_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="harness-trial-"))
    t_train = time.time()
    trained_images = 0
    last_losses: dict[str, float] = {}
    for epoch in range(start_epoch, epochs):
        method.on_epoch_start(epoch)
        model.train()
        totals: dict[str, float] = {}
        steps = 0
        for rows in _batches(_epoch_order(len(train_samples), epoch, trial.seed, context), batch_size):
            batch = {
                "features": _to_device(splits["train"].rows(rows), context.device),
                "label": torch.zeros(len(rows), dtype=torch.long, device=context.device),
                "class_index": train_labels[rows].to(context.device),
            }
            with torch.autocast(context.device.type, dtype=torch.bfloat16, enabled=use_amp):  # bf16: no loss scaler needed
                losses = model(batch)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {steps + 1} "
                    f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())}); "
                    "lower the learning rate or enable gradient clipping"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
            optimizer.step()
            if scheduler is not None and scheduler_interval == "step":
                scheduler.step()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach())
            steps += 1
            trained_images += len(rows)
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        last_losses = {name: total / max(steps, 1) for name, total in totals.items()}
        epoch_dir = None
        if context.is_main:
            epoch_dir = checkpoint_dir / "training"
            _save_training_state(epoch_dir, model, optimizer, scheduler, epoch)
        report = {"epoch": epoch + 1, "epochs": epochs, **{f"train_{k}": v for k, v in last_losses.items()}}
        context.report_epoch(report, epoch_dir)
        progress("epoch", report)
    train_seconds = time.time() - t_train

    # Evaluation: the sorted test set dealt out by rank, no padding, so no sample is scored twice.
    t_eval = time.time()
    model.eval()
    shard = list(range(context.rank, len(test_samples), context.world_size))
    accumulator = MetricAccumulator()
    eval_size = int(method_config["eval_size"])
    defects_config = getattr(index, "defects_config", None) or None
    sample_rows: list[dict] = []
    routing_records = []
    prediction_rows: list[dict] = []
    progress("eval", {"total": len(shard), "advance": 0})
    for rows in _batches(shard, batch_size):
        samples = [test_samples[i] for i in rows]
        batch = {
            "features": _to_device(splits["test"].rows(rows), context.device),
            "label": torch.tensor([s.label for s in samples], device=context.device),
            "class_index": torch.tensor([class_to_index[s.class_name] for s in samples], device=context.device),
        }
        with torch.no_grad():
            prediction = method.predict(batch)
        maps = prediction.anomaly_maps.float().cpu().numpy().astype(np.float16)
        scores = prediction.image_scores.float().cpu().numpy()
        accumulator.update(
            image_scores=scores,
            image_labels=np.array([s.label for s in samples]),
            anomaly_maps=maps,
            class_names=[s.class_name for s in samples],
            sample_ids=[s.sample_id for s in samples],
            defect_types=[s.defect_type for s in samples],
            **ground_truth(samples, eval_size, defects_config),
        )
        for sample, score, anomaly_map in zip(samples, scores, maps):
            sample_rows.append(
                {
                    "sample_id": sample.sample_id,
                    "class_name": sample.class_name,
                    "defect_type": sample.defect_type,
                    "label": int(sample.label),
                    "score": float(score),
                }
            )
            prediction_rows.append({**sample_rows[-1], "map": anomaly_map})
        if prediction.routing is not None:
            routing_records.append((prediction.routing, [s.class_name for s in samples]))
        progress("eval", {"advance": len(rows)})
    eval_seconds = time.time() - t_eval

    # Each worker persists its own per-sample maps (Ray merges the workers' checkpoint folders);
    # only the small metric states and score rows travel to rank 0.
    final_dir = checkpoint_dir / "final"
    write_predictions(final_dir / "predictions" / f"part-{context.rank:03d}.parquet", prediction_rows)
    del prediction_rows
    gathered = context.gather((accumulator, sample_rows, routing_records))
    if not context.is_main:
        context.report_final({"evaluated": True}, final_dir)
        return None
    merged = gathered[0][0]
    for other in gathered[1:]:
        merged = merged.merge(other[0])
    table = merged.compute()
    all_samples = sorted((row for g in gathered for row in g[1]), key=lambda r: r["sample_id"])
    all_routing = [record for g in gathered for record in g[2]]
    if not (checkpoint_dir / "training" / "model.pt").exists():  # resumed after the last epoch, or epochs: 0
        _save_training_state(checkpoint_dir / "training", model, optimizer, scheduler, epochs - 1)
    shutil.copy2(checkpoint_dir / "training" / "model.pt", final_dir / "model.pt")

    routing_rows = methods.summarise_routing_records(all_routing) if all_routing else []
    n_test = len(test_samples)
    run = {
        "method": trial.method,
        "method_version": method.version,
        "preset": trial.preset,
        "dataset": trial.dataset,
        "dataset_fingerprint": key.dataset_fingerprint,
        "seed": trial.seed,
        "config_json": json.dumps(trial.to_dict(), sort_keys=True),
        "method_config_json": json.dumps(method_config, sort_keys=True, default=str),
        "workers": context.world_size,
        "device": str(context.device),
        "epochs": epochs,
        "final_train_loss": last_losses.get("loss", float("nan")),
        "wall_time_features_s": feature_seconds,
        "features_cached": all(feature_hits.values()),
        "wall_time_train_s": train_seconds,
        "wall_time_eval_s": eval_seconds,
        "wall_time_total_s": time.time() - started,
        "train_throughput_img_s": trained_images * context.world_size / max(train_seconds, 1e-9),
        "infer_throughput_img_s": n_test / max(eval_seconds, 1e-9),
        "peak_memory_mb": _peak_memory_mb(context.device),
        "params_trainable": sum(p.numel() for p in method.parameters() if p.requires_grad),
        "backbone_weights": method_config.get("backbone_weights", "auto"),
        "metric_version": METRIC_VERSION,
    }
    metric_rows = [
        {"dataset": trial.dataset, "class_name": r.class_name, "metric": r.metric, "value": r.value, "note": r.note}
        for r in table.rows
    ]
    outcome = TrainingOutcome(run, metric_rows, all_samples, routing_rows, final_dir, table)
    (final_dir / "outcome.json").write_text(json.dumps(outcome.to_json(), default=float))
    context.report_final({"evaluated": True, **{f"mean_{k}": v for k, v in table.mean().items()}}, final_dir)
    return outcome


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: the same loop, as one worker of a TorchTrainer."""
    from harness.training.context import RayWorkerContext

    run_training(config, RayWorkerContext())
