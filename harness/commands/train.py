"""Train one method on one dataset in this process (CPU, or one GPU when present), evaluate it on
the test split and print the per-class and mean metrics.

Examples:
  harness train --method unilead --preset cpu --dataset embedded
  harness train --method uniad --dataset mvtec_ad --data-root /data/mvtec_ad --preset paper
  harness train --method unilead --set routing=top1 --set epochs=3 --json
  harness train --method uniad --set epochs=1 --results results   # a run the leaderboard and predict can read
  harness train --method patchcore --dataset real_iad --data-root /data/real_iad --dataset-option views=C1,C2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.commands._options import add_dataset_option, add_method_set_option, assigned_values, comma_list, method_overrides, option_name

NAME = "train"
HELP = "train and evaluate one method in this process"


def add_arguments(parser) -> None:
    parser.add_argument("--method", required=True, help="method name (see `harness profile --list`)")
    parser.add_argument("--preset", default="cpu", help="named preset: paper (faithful) or cpu (small; default)")
    parser.add_argument("--dataset", default="embedded", help="dataset name (see `harness datasets`); default: embedded")
    parser.add_argument("--data-root", default=None, help="dataset root folder (not needed for the embedded dataset)")
    parser.add_argument("--classes", default=None, help="comma-separated subset of classes")
    parser.add_argument("--expect", default=None, metavar="CARD.yaml", help="a card whose classes and counts replace the bundled card's (partial copies, fixtures)")
    add_dataset_option(parser)
    parser.add_argument("--seed", type=int, default=0)
    add_method_set_option(parser, example="routing=top1 --set bottlenecks=[16,32]")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: 1 on machines with 2 cores or fewer, where a second thread "
        "competing with anything else slows training many times over; else up to 8)",
    )
    parser.add_argument("--no-feature-cache", action="store_true", help="recompute backbone features instead of using the cache")
    parser.add_argument("--output", default=None, help="folder for the checkpoint, predictions and outcome.json")
    parser.add_argument("--json", action="store_true", help="print the metric table as JSON (class -> metric -> percent) instead of a table")
    parser.add_argument(
        "--results",
        default=None,
        metavar="DIR",
        help="also write the finished run (scores, maps, final model) into this result store, under the run id a "
        "sweep computes for the same trial, so `harness leaderboard DIR` shows it and `harness predict --run ID` reads it",
    )


def torch_threads(requested: int | None) -> int:
    import os

    import torch

    cores = os.cpu_count() or 1
    threads = requested or (1 if cores <= 2 else min(8, cores))
    torch.set_num_threads(threads)
    return threads


def trial_from_args(args) -> dict:
    """The trial config the command line asks for, validated (every problem at once, named by option)."""
    from harness.training.trial_config import check_trial, with_canonical_options

    config = {
        "method": args.method,
        "preset": args.preset,
        "dataset": args.dataset,
        "data_root": args.data_root,
        "classes": comma_list(args.classes),
        "expect": args.expect,
        "dataset_options": assigned_values(args.dataset_options),
        "seed": args.seed,
        "method_config": method_overrides(args.overrides),
    }
    check_trial(config, "harness train", name_of=option_name)
    return with_canonical_options(config)


def run(args) -> int:
    """Validate the options, check the dataset, then train; user errors reach harness.cli as one message."""
    from rich.console import Console

    from harness.data.verify import check_trial_dataset
    from harness.training.loop import TrainingDiverged, run_training
    from harness.training.progress import TrainingProgress, dataset_step_text
    from harness.training.trial_config import dataset_arguments

    console = Console(stderr=True)
    config = trial_from_args(args)
    torch_threads(args.threads)
    with console.status(dataset_step_text(config["dataset"], config["data_root"])):
        check_trial_dataset(**dataset_arguments(config))
    try:
        with TrainingProgress(console) as progress:
            outcome = run_training(config, on_progress=progress.update, use_feature_cache=not args.no_feature_cache, output_dir=args.output)
    except TrainingDiverged as error:
        console.print(f"[red]training failed:[/red] {error}")
        return 1
    if args.results:
        run_id = write_to_store(args.results, config, outcome)
        console.print(f"run {run_id} written to the result store {args.results}")
    table = outcome.metric_table
    if args.json:  # percent, as every other view (terminal, CSV, Markdown, HTML)
        json.dump(percent(table.to_dict()), sys.stdout, indent=2, default=float)
        sys.stdout.write("\n")
    else:
        from harness.commands._render import render_metric_table

        Console().print(render_metric_table(table, title=f"{args.method} ({args.preset}) on {args.dataset}"))
        run_info = outcome.run
        console.print(
            f"trained {run_info['epochs']} epochs in {run_info['wall_time_train_s']:.1f} s "
            f"(features {'from cache' if run_info['features_cached'] else 'computed'} in {run_info['wall_time_features_s']:.1f} s), "
            f"evaluated in {run_info['wall_time_eval_s']:.1f} s; outputs in {outcome.checkpoint_dir}"
        )
    return 0


def percent(values: dict) -> dict:
    """class -> metric -> value in percent (None stays None)."""
    return {cls: {metric: None if v is None else 100 * float(v) for metric, v in metrics.items()} for cls, metrics in values.items()}


def sweep_trial_config(config: dict) -> dict:
    """The trial as a sweep expands it (no ``expect`` or ``dataset_options`` key unless given), so the run id matches."""
    keys = ("method", "preset", "dataset", "data_root", "classes", "method_config", "seed")
    trial = {key: config[key] for key in keys}
    if trial["data_root"]:
        trial["data_root"] = str(Path(trial["data_root"]).expanduser().resolve())  # as the sweep driver does
    if config.get("expect") is not None:
        trial["expect"] = config["expect"]
    if config.get("dataset_options"):
        trial["dataset_options"] = config["dataset_options"]
    return trial


def write_to_store(results: str, config: dict, outcome) -> str:
    """The finished run into the ResultStore at ``results``: final model, maps, tables, then its runs row."""
    from harness.identity import trial_run_id
    from harness.results.provenance import driver_command
    from harness.results.store import ResultStore
    from harness.sweep.outcome import record_outcome
    from harness.sweep.spec import trial_label

    trial = sweep_trial_config(config)
    run_id = trial_run_id(trial, outcome.run["method_version"], outcome.run["dataset_fingerprint"])
    store = ResultStore(results)
    store.write_checkpoint(run_id, outcome.checkpoint_dir / "model.pt")
    label = trial_label({**trial["method_config"], "seed": trial["seed"]})
    cell = {"run_id": run_id, "config": trial, "label": label, "command_line": driver_command()}
    return record_outcome(store, cell, outcome)
