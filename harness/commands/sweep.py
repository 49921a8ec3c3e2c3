"""Run a sweep file: every trial of its grid and sampled axes times its seeds, on Ray Tune.

The sweep file is validated first (every problem is listed with its key, value and what was
expected) before Ray starts. Cells already complete in the result store are skipped, so running
an interrupted sweep again completes only the missing ones. The file format is documented in
docs/sweeps.md.

Examples:
  harness sweep sweeps/routing.yaml --dry-run
  harness sweep sweeps/routing.yaml
  harness sweep sweeps/bottlenecks.yaml --dataset mvtec_ad --data-root /data/mvtec_ad --preset paper
  harness sweep sweeps/routing.yaml --dataset real_iad --data-root /data/Real-IAD --dataset-option views=C1
  harness sweep sweeps/routing.yaml --set epochs=2 --override "seeds=[0,1,2]" --results /shared/results
  harness sweep sweeps/routing.yaml --address auto --results /nfs/results   # on a `ray start` cluster
"""

from __future__ import annotations

import argparse
import sys

from harness.commands._options import add_dataset_option, add_method_set_option, assigned_values, comma_list

NAME = "sweep"
HELP = "run (or --dry-run) a sweep file on Ray Tune; results go to the result store"


def add_arguments(parser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples on their own lines
    parser.add_argument("file", metavar="FILE", help="sweep file (YAML), e.g. sweeps/routing.yaml")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the expanded trial list; run nothing")
    parser.add_argument(
        "--resolve-ids",
        action="store_true",
        help="with --dry-run: compute the final run ids (indexes the dataset) and mark cells already complete",
    )
    parser.add_argument("--dataset", default=None, help="override base.dataset (embedded, mvtec_ad, visa, mvtec_loco, mvtec_3d, generic)")
    parser.add_argument("--data-root", default=None, help="override base.data_root: the dataset's root folder")
    parser.add_argument("--preset", default=None, help="override base.preset: paper or cpu")
    parser.add_argument("--classes", default=None, help="override base.classes: comma-separated class subset")
    add_dataset_option(parser)  # sets base.dataset_options.KEY (and drops an axis of that key)
    parser.add_argument(
        "--address",
        default=None,
        metavar="auto|HOST:PORT",
        help="join an existing Ray cluster: 'auto' (the one `ray start` runs on this machine) or the head's "
        "HOST:PORT; default: $RAY_ADDRESS, else a private local cluster (docs/clusters.md)",
    )
    parser.add_argument("--results", default=None, help="result store directory (default: the file's 'results', else ./results)")
    add_method_set_option(parser, dest="method_sets", example="epochs=2 (sets base.method_config.KEY)")
    parser.add_argument(
        "--override",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any dotted key of the sweep file, e.g. --override scaling.workers=2 --override 'seeds=[0,1,2]'",
    )


def load_spec_from_args(args):
    """The validated SweepSpec for the command line (also used by the runner)."""
    from harness.sweep.spec import load_sweep

    overrides = {
        "dataset": args.dataset,
        "data_root": args.data_root,
        "preset": args.preset,
        "classes": comma_list(args.classes),
        "results": args.results,
        **{f"dataset_options.{key}": value for key, value in assigned_values(args.dataset_options).items()},
    }
    assignments = [f"method_config.{text}" for text in args.method_sets] + list(args.overrides)
    return load_sweep(args.file, overrides=overrides, assignments=assignments)


def run(args) -> int:
    from rich.console import Console

    from harness.config import ConfigError

    console = Console()
    try:
        spec = load_spec_from_args(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.dry_run:
        return print_dry_run(spec, console, resolve_ids=args.resolve_ids)
    if args.resolve_ids:
        Console(stderr=True).print("--resolve-ids only applies with --dry-run (a real run always resolves ids)")
        return 2
    try:
        from harness.sweep.runner import EXIT_INTERRUPTED, run_sweep
    except ImportError as exc:
        if getattr(exc, "name", None) != "harness.sweep.runner":
            raise
        Console(stderr=True).print("This installation has no sweep runner yet (harness.sweep.runner); use --dry-run.")
        return 2
    check_sweep_datasets(spec, console)
    status = int(run_sweep(spec, args) or 0)
    if status == EXIT_INTERRUPTED:
        exit_now(status)
    return status


def exit_now(status: int) -> None:
    """Exit with ``status`` at once: after Ctrl-C, threads Ray and Tune leave behind must not hold the exit."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def check_sweep_datasets(spec, console) -> None:
    """The pre-training dataset checks, once per distinct dataset of the sweep, in the driver before Ray starts."""
    from harness.data.verify import check_trial_dataset
    from harness.training.progress import dataset_step_text
    from harness.training.trial_config import dataset_arguments

    seen = set()
    for trial in spec.trials():
        arguments = dataset_arguments(trial.config)
        key = repr(arguments)
        if key not in seen:
            seen.add(key)
            with console.status(dataset_step_text(arguments["name"], arguments["root"])):
                check_trial_dataset(**arguments)


def print_dry_run(spec, console, resolve_ids: bool = False) -> int:
    from rich.table import Table

    from harness.results.store import ResultStore
    from harness.identity import PENDING, configuration_key
    from harness.sweep.run_id import resolve_run_ids

    trials = spec.trials()
    complete: set[str] = set()
    if resolve_ids:
        try:
            resolve_run_ids(trials)
        except Exception as exc:  # a dataset or method that cannot be read: say which, keep the listing
            console.print(f"run ids not resolved: {exc}", style="yellow", markup=False)
        complete = ResultStore(spec.results).completed_run_ids()

    configurations = len({configuration_key(t.config) for t in trials})
    console.print(f"[bold]Sweep {spec.name}[/bold] ({spec.source})")
    if spec.description:
        console.print(spec.description, markup=False, highlight=False)
    console.print(
        f"{len(trials)} trials = {configurations} configuration(s) x {len(spec.seeds)} seed(s)"
        f"{f' (sampled axes drawn {spec.tune.num_samples}x per grid point)' if any(a.sampled for a in spec.all_axes) else ''}"
    )
    asha = spec.tune.asha
    scheduler = f"ASHA on {asha.metric} ({asha.mode}, max_t {asha.max_t}, grace {asha.grace_period})" if asha else "none"
    concurrency = spec.tune.max_concurrent_trials or "as resources allow"
    workers = "in-process" if spec.scaling.workers == 0 else f"{spec.scaling.workers} Ray Train workers"
    console.print(f"tune: scheduler {scheduler}; max concurrent trials {concurrency}", markup=False)
    console.print(
        f"scaling: {workers}; use_gpu {spec.scaling.use_gpu}; per worker {spec.scaling.resources_per_worker}",
        markup=False,
    )
    console.print(f"results: {spec.results}", markup=False)
    for note in spec.notes:
        console.print(f"note: {note}", style="yellow", markup=False)

    table = Table(header_style="bold")
    for column in ("#", "trial", "method", "preset", "dataset", "run id"):
        table.add_column(column)
    for trial in trials:
        run_id = trial.run_id or PENDING
        if trial.run_id in complete:
            run_id += " (complete: skipped)"
        table.add_row(str(trial.index), trial.label, trial.config["method"], trial.config["preset"], trial.config["dataset"], run_id)
    console.print(table)
    if not resolve_ids:
        console.print("run ids are pending: they need the dataset fingerprint and method version (--resolve-ids computes them)", style="dim")
    return 0

