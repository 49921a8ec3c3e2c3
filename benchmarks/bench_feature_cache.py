"""Wall time of four UniLEAD trainings (the routing sweep's worth) with and without the feature cache.

Without the cache every training runs the frozen backbone over the dataset again; with it, the
first training computes the features and the other three read them from disk. Both arms run here,
in one process, on the same data, and the script prints the ratio.

  .venv/bin/python benchmarks/bench_feature_cache.py [--dataset embedded] [--epochs N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from rich.console import Console
from rich.table import Table

ROUTING_MODES = ("softmax", "gumbel_top1", "top1", "first")


def four_trainings(dataset: str, data_root, epochs: int | None, use_cache: bool) -> float:
    from harness.training.loop import run_training

    started = time.time()
    for routing in ROUTING_MODES:
        overrides = {"routing": routing}
        if epochs is not None:
            overrides["epochs"] = epochs
        run_training(
            {"method": "unilead", "preset": "cpu", "dataset": dataset, "data_root": data_root, "method_config": overrides},
            use_feature_cache=use_cache,
        )
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override the cpu preset's epochs (default: the preset's)")
    args = parser.parse_args()
    console = Console()
    from harness.data import load_dataset

    load_dataset(args.dataset, args.data_root)  # generate the embedded dataset outside the timed arms
    with tempfile.TemporaryDirectory() as cache:
        os.environ["HARNESS_FEATURE_CACHE"] = cache  # a cold cache for this measurement only
        uncached = four_trainings(args.dataset, args.data_root, args.epochs, use_cache=False)
        cached = four_trainings(args.dataset, args.data_root, args.epochs, use_cache=True)
    table = Table(title="four UniLEAD trainings (softmax, gumbel_top1, top1, first)")
    table.add_column("arm")
    table.add_column("wall time (s)", justify="right")
    table.add_row("no feature cache", f"{uncached:.1f}")
    table.add_row("feature cache (cold start: first run computes)", f"{cached:.1f}")
    console.print(table)
    console.print(f"speed-up from the feature cache: [bold]{uncached / cached:.2f}x[/bold] (uncached / cached)")


if __name__ == "__main__":
    main()
