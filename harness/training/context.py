"""Where a training loop runs: alone in this process, or as one worker of a Ray Train group.

The loop only talks to a WorkerContext, so the same code runs in-process, on one GPU, or under
Ray Train on many workers and nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class WorkerContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    on_epoch: Callable[[dict], None] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def report_epoch(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        if self.on_epoch is not None:
            self.on_epoch(metrics)

    def report_final(self, metrics: dict, checkpoint_dir: Path) -> None:
        """In-process: the final checkpoint directory is simply where it was written."""

    def resume_checkpoint(self) -> Path | None:
        return None

    def gather(self, obj) -> list:
        """Every worker's object, in rank order (only one worker here)."""
        return [obj]

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)


class RayWorkerContext(WorkerContext):
    """One worker of a Ray Train TorchTrainer: DDP model, per-epoch reports and checkpoints."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        super().__init__(
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            device=ray.train.torch.get_device(),
        )

    def wrap_model(self, model):
        import ray.train.torch

        # Sparse routing leaves experts unused in a step, and router buffers must not be
        # overwritten from rank 0 (../shared/spec/environment.md, "MoE under DDP").
        return ray.train.torch.prepare_model(
            model,
            parallel_strategy_kwargs={"find_unused_parameters": True, "broadcast_buffers": False},
        )

    def report_epoch(self, metrics, checkpoint_dir=None):
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir and self.is_main else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def report_final(self, metrics, checkpoint_dir):
        import ray.train

        # Every worker adds its prediction part; Ray merges the folders into one checkpoint.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)))

    def resume_checkpoint(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        return Path(checkpoint.to_directory())

    def gather(self, obj):
        import torch.distributed as dist

        if self.world_size == 1 or not dist.is_initialized():
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered
