"""A live table of a sweep's trials (pending, running with epoch, done, failed) instead of Ray's log stream.

The title carries the elapsed time and an ETA: the sweep's finished fraction counts a finished trial
as one and a running trial as its share of epochs, and the rest is assumed to go at the rate so far.
Trial names wrap but are never cut and statuses keep their words whole; below 100 columns the
run-id column is left out (the failure lines and the leaderboard name trials by label).
"""

from __future__ import annotations

import time

from ray.tune import Callback
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from harness.report.leaderboard import METRIC_TITLES

RUN_ID_MIN_WIDTH = 100
STATUS_STYLE = {"pending": "dim", "running": "cyan", "complete": "green", "skipped": "green", "failed": "red"}
FINISHED = ("complete", "skipped", "failed")


class SweepLiveView(Callback):
    def __init__(self, labels: dict[str, str], console, *, headline: str = "i_auroc", clock=time.monotonic):
        self.labels = labels  # run_id -> human label, in sweep order
        self.state = {run_id: {"status": "pending"} for run_id in labels}
        self.headline = headline
        self._clock = clock
        self._console = console
        self.started = clock()
        # Live re-renders self on each refresh, so elapsed time and ETA move between trial events.
        self._live = Live(self, console=console, refresh_per_second=2, transient=False)
        self._live.start()

    def __getstate__(self):
        # Tune pickles its callbacks into the experiment state; the live display stays here.
        state = dict(self.__dict__)
        state["_live"] = state["_console"] = None
        return state

    @staticmethod
    def _run_id(trial) -> str:
        return trial.config["cell"]["run_id"]

    def __rich__(self) -> Group:
        return self.render()

    def render(self) -> Group:
        counts = {}
        for entry in self.state.values():
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        elapsed = self._clock() - self.started
        table = Table(title=f"sweep: {summary} ({duration_text(elapsed)}, {eta_text(elapsed, self.state)})", expand=False)
        show_run_id = self._console.width >= RUN_ID_MIN_WIDTH
        table.add_column("trial", overflow="fold")
        if show_run_id:
            table.add_column("run id", no_wrap=True)
        for column in ("status", "epoch", "loss", METRIC_TITLES.get(self.headline, self.headline)):
            table.add_column(column, no_wrap=True)
        reasons = []
        for run_id, label in self.labels.items():
            entry = self.state[run_id]
            status = entry["status"]
            epoch = f"{entry['epoch']}/{entry['epochs']}" if "epoch" in entry else ""
            loss = f"{entry['loss']:.4f}" if "loss" in entry else ""
            metric = entry.get("metric")
            table.add_row(
                label,
                *([run_id] if show_run_id else []),
                f"[{STATUS_STYLE.get(status, '')}]{status}[/]",
                epoch,
                loss,
                f"{100 * metric:.2f}" if isinstance(metric, float) else "",
            )
            if status == "failed" and entry.get("reason"):
                reasons.append(Text(f"{label} failed: {entry['reason'][:160]}", style="red"))
        return Group(table, *reasons)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

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


def finished_fraction(state: dict[str, dict]) -> float:
    """Finished trials count one each, running trials their share of epochs; over all trials."""
    if not state:
        return 1.0
    done = 0.0
    for entry in state.values():
        if entry["status"] in FINISHED:
            done += 1.0
        elif isinstance(entry.get("epochs"), int) and entry["epochs"] > 0:
            done += min(entry.get("epoch", 0) / entry["epochs"], 1.0)
    return done / len(state)


def eta_text(elapsed: float, state: dict[str, dict]) -> str:
    fraction = finished_fraction(state)
    if fraction >= 1.0:
        return "done"
    if fraction <= 0.0:
        return "ETA after the first epoch"
    return f"ETA {duration_text(elapsed * (1.0 - fraction) / fraction)}"


def duration_text(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
