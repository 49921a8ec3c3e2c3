"""A live table of a sweep's trials (pending, running with epoch, done, failed) instead of Ray's log stream."""

from __future__ import annotations

import time

from ray.tune import Callback
from rich.live import Live
from rich.table import Table

STATUS_STYLE = {"pending": "dim", "running": "cyan", "complete": "green", "skipped": "green", "failed": "red"}


class SweepLiveView(Callback):
    def __init__(self, labels: dict[str, str], console, *, headline: str = "i_auroc"):
        self.labels = labels  # run_id -> human label, in sweep order
        self.state = {run_id: {"status": "pending"} for run_id in labels}
        self.headline = headline
        self.started = time.time()
        self._live = Live(self._render(), console=console, refresh_per_second=2, transient=False)
        self._live.start()

    def __getstate__(self):
        # Tune pickles its callbacks into the experiment state; the live display stays here.
        state = dict(self.__dict__)
        state["_live"] = None
        return state

    @staticmethod
    def _run_id(trial) -> str:
        return trial.config["cell"]["run_id"]

    def _render(self) -> Table:
        counts = {}
        for entry in self.state.values():
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        table = Table(title=f"sweep: {summary} ({time.time() - self.started:.0f} s)", expand=False)
        for column in ("trial", "run id", "status", "epoch", "loss", f"mean {self.headline}"):
            table.add_column(column)
        for run_id, label in self.labels.items():
            entry = self.state[run_id]
            status = entry["status"]
            epoch = f"{entry['epoch']}/{entry['epochs']}" if "epoch" in entry else ""
            loss = f"{entry['loss']:.4f}" if "loss" in entry else ""
            metric = entry.get("metric")
            table.add_row(
                label,
                run_id,
                f"[{STATUS_STYLE.get(status, '')}]{status}[/]",
                epoch,
                loss,
                f"{100 * metric:.1f}" if isinstance(metric, float) else "",
            )
            if status == "failed" and entry.get("reason"):
                table.add_row("", "", f"[red]{entry['reason'][:160]}[/red]", "", "", "")
        return table

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def on_trial_start(self, iteration, trials, trial, **info):
        self.state[self._run_id(trial)]["status"] = "running"
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        entry = self.state[self._run_id(trial)]
        if "epoch" in result:
            entry.update(epoch=result["epoch"], epochs=result.get("epochs", "?"))
        if "train_loss" in result:
            entry["loss"] = result["train_loss"]
        status = result.get("status")
        if status:
            entry["status"] = status
            entry["reason"] = result.get("reason")
            entry["metric"] = result.get(f"mean_{self.headline}")
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info):
        entry = self.state[self._run_id(trial)]
        entry["status"] = "failed"
        entry.setdefault("reason", "the trial process died; see the failure reason in the result store")
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._refresh()

    def close(self) -> None:
        self._refresh()
        if self._live is not None:
            self._live.stop()
