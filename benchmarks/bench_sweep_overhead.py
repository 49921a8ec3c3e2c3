"""Ray's overhead on the routing sweep: `harness sweep` against the same trainings back to back in-process.

Issue #5, deliver item 10. In one run, on a feature cache warmed first (so neither arm pays for
the backbone), this times

  (a) the sweep's trainings (seed 0: UniLEAD's four routing modes, cpu preset) run one after the
      other in this process with run_training, and
  (b) `harness sweep SWEEP --override "seeds=[0]"` as a subprocess into a fresh result store:
      Ray start-up, trial processes, the store writes and the leaderboard included,

and prints both wall times, the ratio (b)/(a) (the project's target: at most 1.5 on 2 cores) and
the load averages, since a shared machine skews both arms.

  .venv/bin/python benchmarks/bench_sweep_overhead.py [--sweep sweeps/routing.yaml] [--set epochs=2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent


def load_seed0_spec(sweep: Path, results: Path, method_sets: list[str]):
    from harness.sweep.spec import load_sweep

    assignments = ["seeds=[0]", *(f"method_config.{text}" for text in method_sets)]
    return load_sweep(sweep, overrides={"results": str(results)}, assignments=assignments)


def warm_feature_cache(config: dict) -> float:
    """One untimed one-epoch training computes the features every cell of the sweep then reads."""
    from harness.training.loop import run_training

    started = time.time()
    short = {**config, "method_config": {**(config.get("method_config") or {}), "epochs": 1}}
    with tempfile.TemporaryDirectory() as output:
        run_training(short, output_dir=Path(output))
    return time.time() - started


def in_process_arm(configs: list[dict], console: Console) -> float:
    from harness.training.loop import run_training

    started = time.time()
    for index, config in enumerate(configs, 1):
        with tempfile.TemporaryDirectory() as output:
            outcome = run_training(config, output_dir=Path(output))
        console.print(f"  in-process {index}/{len(configs)}: {config['method_config']} "
                      f"({outcome.run['wall_time_total_s']:.1f} s, features cached: {outcome.run['features_cached']})")
    return time.time() - started


def sweep_arm(sweep: Path, results: Path, method_sets: list[str]) -> tuple[float, str]:
    command = [sys.executable, "-m", "harness.cli", "sweep", str(sweep), "--override", "seeds=[0]", "--results", str(results)]
    for text in method_sets:
        command += ["--set", text]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    elapsed = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return elapsed, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "routing.yaml", help="sweep file (default: sweeps/routing.yaml)")
    parser.add_argument("--set", dest="method_sets", action="append", default=[], metavar="KEY=VALUE",
                        help="method option override applied to both arms, e.g. --set epochs=2 for a quick check")
    parser.add_argument("--show-sweep-output", action="store_true", help="print the sweep's own output (trial table, leaderboard)")
    args = parser.parse_args()
    console = Console()

    import harness  # noqa: F401  (applies the torchvision shim before timm loads)
    from harness.results.store import ResultStore
    from harness.sweep.run_id import resolve_run_ids

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as scratch:
        scratch = Path(scratch)
        # A private feature cache for both arms (the sweep's trials get it through the environment).
        os.environ["HARNESS_FEATURE_CACHE"] = str(scratch / "features")
        results = scratch / "results"
        spec = load_seed0_spec(args.sweep, results, args.method_sets)
        trials = spec.trials()
        resolve_run_ids(trials)  # also generates the embedded dataset outside the timed arms
        configs = [trial.config for trial in trials]
        console.print(f"sweep {spec.name}: {len(configs)} cells (seed 0); scaling {spec.scaling}; tune {spec.tune}")

        with console.status("warming the feature cache (one untimed 1-epoch training)"):
            warm_seconds = warm_feature_cache(configs[0])
        load_before = os.getloadavg()
        in_process = in_process_arm(configs, console)
        with console.status(f"harness sweep {args.sweep.name} --override seeds=[0]"):
            swept, output = sweep_arm(args.sweep, results, args.method_sets)
        load_after = os.getloadavg()
        rows = ResultStore(results).runs().to_pylist()

    if args.show_sweep_output:
        console.print(output, markup=False, highlight=False)
    complete = sum(row["status"] == "complete" for row in rows)
    table = Table(title=f"{spec.name}, seed 0: {len(configs)} trainings")
    table.add_column("arm")
    table.add_column("wall time (s)", justify="right")
    table.add_row("(a) run_training back to back, in-process", f"{in_process:.1f}")
    table.add_row(f"(b) harness sweep (Ray; {complete}/{len(configs)} rows complete)", f"{swept:.1f}")
    console.print(table)
    ratio = swept / in_process
    verdict = "[green]within[/green]" if ratio <= 1.5 else "[red]above[/red]"
    console.print(f"Ray overhead ratio (b)/(a): [bold]{ratio:.2f}[/bold] ({verdict} the 1.5 target)")
    console.print(
        f"feature-cache warm-up {warm_seconds:.1f} s (untimed); {os.cpu_count()} CPUs; load average (1/5/15 min) "
        f"before {' '.join(f'{v:.2f}' for v in load_before)}, after {' '.join(f'{v:.2f}' for v in load_after)}"
    )
    return 0 if complete == len(configs) else 1


if __name__ == "__main__":
    sys.exit(main())
