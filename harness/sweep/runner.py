"""Run an expanded sweep on a Ray cluster (a local one by default) with a live view of the trials."""

from __future__ import annotations

import math
import os
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

RAY_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",  # each report otherwise blocks for 2 s
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Ctrl-C raises KeyboardInterrupt in the driver (Tune would end fit() as if done), so the sweep
    # can name the unfinished cells and exit 130.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}


TRIAL_TOKEN_CPU = 0.1


def check_fits(per_trial_cpus: float, per_trial_gpus: float, scaling) -> None:
    """Fail before starting, not hang in the scheduler, when one trial can never be placed."""
    import ray

    total = ray.cluster_resources()
    for resource, needed in (("CPU", per_trial_cpus), ("GPU", per_trial_gpus)):
        if needed > total.get(resource, 0):
            raise SystemExit(
                f"one trial needs {needed:g} {resource}(s) (scaling: workers={scaling.workers}, use_gpu={scaling.use_gpu}, "
                f"resources_per_worker={scaling.resources_per_worker}) but the cluster has {total.get(resource, 0):g}; "
                "lower scaling.workers or resources_per_worker, or add nodes"
            )


def trial_footprint(workers: int, threads: int, resources_per_worker: dict | None, use_gpu: bool) -> tuple[float, float]:
    """CPUs and GPUs one trial occupies: the loop's own process for workers: 0, else its Train
    workers (Ray Train's default is one GPU each) plus the trial's token CPU."""
    if int(workers) == 0:
        return float(threads), 1.0 if use_gpu else 0.0
    gpus = int(workers) * float((resources_per_worker or {}).get("GPU", 1)) if use_gpu else 0.0
    return int(workers) * threads + TRIAL_TOKEN_CPU, gpus


def connect(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a private local one."""
    import logging

    import ray

    for key, value in RAY_QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)


def cell_resources(scaling: dict, threads: int) -> dict:
    """What the Tune trial itself reserves: the whole loop for workers: 0, a token CPU otherwise."""
    if int(scaling["workers"]) == 0:
        cpus, gpus = trial_footprint(0, threads, None, scaling["use_gpu"])
        return {"cpu": cpus, "gpu": gpus} if gpus else {"cpu": cpus}
    return {"cpu": TRIAL_TOKEN_CPU}  # the Train workers reserve their own resources; a trial cannot ask for 0


def run_cells(cells: list[dict], *, name: str, storage_path: Path, max_concurrent: int | None, scheduler=None, view=None):
    """Run the cells as one Tune experiment; the trials write the store themselves."""
    from ray import tune

    from harness.sweep.ray_trial import sweep_cell

    threads = cells[0]["threads"] if cells else 1
    trainable = tune.with_resources(sweep_cell, cell_resources(cells[0]["scaling"], threads))
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": tune.grid_search(cells)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, scheduler=scheduler, reuse_actors=False),
        run_config=tune.RunConfig(
            name=f"{name}-{int(time.time())}",
            storage_path=str(storage_path),
            callbacks=[view] if view is not None else [],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    return tuner.fit()


def _resolve_use_gpu(use_gpu) -> bool:
    import ray

    if use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(use_gpu)


def run_sweep(spec, args) -> int:
    """Run every cell of the sweep that the result store does not already hold as complete.

    Returns 0 when every cell is complete, 1 when any failed or is missing, 130 when interrupted.
    """
    from harness.report.final import show_leaderboard_and_write_html
    from harness.results.store import ResultStore
    from harness.sweep.run_id import resolve_run_ids

    console = Console()
    results = Path(getattr(args, "results", None) or spec.results).expanduser().resolve()
    store = ResultStore(results)
    trials = spec.trials()
    say_interrupted = run_once(lambda: say_unfinished(console, store, trials, interrupted=True))
    try:
        with exit_if_stuck_after_interrupt(say_interrupted):
            with console.status("indexing the dataset to fix the run ids"):
                resolve_run_ids(trials)
            store.write_trials(spec.name, trials)
            pending = pending_trials(store, trials)
            say_plan(console, spec.name, results, trials, pending, store)
            if pending:
                _run_pending(spec, args, store, pending, console)
            show_leaderboard_and_write_html(store, spec.name, console)
    except KeyboardInterrupt:
        say_interrupted()
        stop_ray(RAY_STOP_TIMEOUT_S)
        return EXIT_INTERRUPTED
    return say_unfinished(console, store, trials, interrupted=False)


RAY_STOP_TIMEOUT_S = 30.0
INTERRUPT_GRACE_S = 45.0
EXIT_INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C


def run_once(action):
    """``action`` wrapped so that only its first call runs (from the driver or from the watchdog)."""
    lock, done = threading.Lock(), []

    def once():
        with lock:
            if not done:
                done.append(action())

    return once


@contextmanager
def exit_if_stuck_after_interrupt(say_interrupted):
    """Ctrl-C raises KeyboardInterrupt as usual and starts a watchdog: should unwinding through Tune
    and Ray hang (seen under heavy load), the watchdog names the unfinished cells and exits 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def watchdog():
        time.sleep(INTERRUPT_GRACE_S)
        say_interrupted()
        stop_ray(RAY_STOP_TIMEOUT_S)
        sys.stdout.flush()
        os._exit(EXIT_INTERRUPTED)

    def on_interrupt(signum, frame):
        threading.Thread(target=watchdog, daemon=True).start()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_ray(timeout_s: float) -> None:
    """Shut Ray down, waiting at most ``timeout_s``: an interrupted sweep must exit, not wait on trial actors."""
    import ray

    stopper = threading.Thread(target=ray.shutdown, daemon=True)
    stopper.start()
    stopper.join(timeout_s)


def pending_trials(store, trials: list) -> list:
    """The trials to run: every one whose cell is not complete and intact in the store."""
    done = store.completed_run_ids()
    return [t for t in trials if t.run_id not in done]


def say_plan(console: Console, name: str, results: Path, trials: list, pending: list, store) -> None:
    console.print(
        f"sweep [bold]{name}[/bold]: {len(trials)} cells, {len(trials) - len(pending)} already complete in "
        f"{results}, {len(pending)} to run"
    )
    damaged = store.damaged_runs()
    for trial in pending:
        for problem in damaged.get(trial.run_id, []):
            console.print(f"  {trial.label} ({trial.run_id}) runs again: {problem}", style="yellow", markup=False, soft_wrap=True)


def _run_pending(spec, args, store, pending: list, console: Console) -> None:
    from harness.results.provenance import driver_command
    from harness.sweep.live_view import SweepLiveView

    scaling = spec.scaling
    threads = int(float((scaling.resources_per_worker or {}).get("CPU", 1)))
    concurrent = spec.tune.max_concurrent_trials or 1
    per_trial_cpus, _ = trial_footprint(scaling.workers, threads, scaling.resources_per_worker, False)
    # A local cluster gets enough logical CPUs for the trials to be scheduled at all.
    connect(getattr(args, "address", None), num_cpus=max(os.cpu_count() or 1, math.ceil(concurrent * per_trial_cpus)))
    use_gpu = _resolve_use_gpu(scaling.use_gpu)
    check_fits(*trial_footprint(scaling.workers, threads, scaling.resources_per_worker, use_gpu), scaling)
    command_line = driver_command()
    cells = [
        {
            "run_id": t.run_id,
            "label": t.label,
            "axes": t.axes,
            "config": t.config,
            "sweep": spec.name,
            "results": str(store.root),
            "storage_path": str(store.root / "ray"),
            "threads": threads,
            "checkpoints": spec.checkpoints,
            "command_line": command_line,
            "scaling": {
                "workers": scaling.workers,
                "use_gpu": use_gpu,
                "resources_per_worker": dict(scaling.resources_per_worker or {}),
            },
            "worker_env": {k: v for k, v in os.environ.items() if k.startswith(("HARNESS_", "RAY_TRAIN_"))},
        }
        for t in pending
    ]
    view = SweepLiveView({t.run_id: t.label for t in pending}, console)
    try:
        run_cells(
            cells,
            name=spec.name,
            storage_path=store.root / "ray",
            max_concurrent=spec.tune.max_concurrent_trials,  # None: as many as the resources allow
            scheduler=_scheduler(spec.tune.asha),
            view=view,
        )
    finally:
        view.close()


UNFINISHED_LISTED = 20


def say_unfinished(console: Console, store, trials: list, *, interrupted: bool) -> int:
    """Name the cells that failed or are missing and how to resume; the sweep's exit status."""
    complete = store.completed_run_ids()
    reasons = {row["run_id"]: row["failure_reason"] for row in store.runs().to_pylist() if row["status"] == "failed"}
    unfinished = [t for t in trials if t.run_id is None or t.run_id not in complete]
    if not unfinished and not interrupted:
        return 0
    headline = "sweep interrupted" if interrupted else "sweep finished with cells not complete"
    console.print(f"[yellow]{headline}[/yellow]: {len(trials) - len(unfinished)} of {len(trials)} cells complete")
    for trial in unfinished[:UNFINISHED_LISTED]:
        reason = reasons.get(trial.run_id)
        state = f"failed: {reason.splitlines()[0]}" if reason else "missing"
        console.print(
            f"  {trial.label} ({trial.run_id or 'run id not resolved'}): {state}", markup=False, highlight=False, soft_wrap=True
        )
    if len(unfinished) > UNFINISHED_LISTED:
        console.print(f"  ... and {len(unfinished) - UNFINISHED_LISTED} more (harness leaderboard {store.root} lists them all)", markup=False)
    console.print(f"To resume, run the same command again: {resume_command()}", markup=False, highlight=False, soft_wrap=True)
    console.print("Complete cells are skipped; failed and missing cells run again.", markup=False)
    return EXIT_INTERRUPTED if interrupted else 1


def resume_command() -> str:
    arguments = sys.argv[1:]
    return shlex.join(["harness", *arguments]) if arguments[:1] == ["sweep"] else "the same `harness sweep ...` command"


def _scheduler(asha):
    if asha is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",
        metric=asha.metric,
        mode=asha.mode,
        max_t=asha.max_t,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )
