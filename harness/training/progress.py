"""Progress bars for one training run: feature extraction, component masks, epochs, evaluation; and
the words of the spinner before it, which names the dataset step (a generated one may be built)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainingProgress:
    def __init__(self, console):
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, int] = {}

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def _task(self, name: str, description: str, total) -> int:
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(description, total=total, info="")
        return self._tasks[name]

    def update(self, stage: str, info: dict) -> None:
        if stage in ("features", "components"):
            label = "backbone features" if stage == "features" else "component masks"
            task = self._task(f"{stage}-{info['split']}", f"{label} ({info['split']})", info.get("total"))
            if "completed" in info:
                self._progress.update(task, completed=info["completed"], info=info.get("info", ""))
            else:
                self._progress.advance(task, info.get("advance", 0))
        elif stage == "epoch":
            task = self._task("epochs", "training epochs", info["epochs"])
            losses = " ".join(f"{k[6:]}={v:.4f}" for k, v in info.items() if k.startswith("train_"))
            self._progress.update(task, completed=info["epoch"], info=losses)
        elif stage == "eval":
            task = self._task("eval", "evaluation", info.get("total"))
            self._progress.advance(task, info.get("advance", 0))


def dataset_step_text(dataset: str, data_root) -> str:
    """What the spinner before training says: a generated dataset without a root is built on first use."""
    from harness.data.registry import BUILT_ON_FIRST_USE
    from harness.paths import cache_root

    if data_root is None and dataset in BUILT_ON_FIRST_USE:
        return f"preparing dataset {dataset}: generating it under {cache_root()} on first use (reused afterwards), then checking it"
    return f"checking dataset {dataset} at {data_root}"
