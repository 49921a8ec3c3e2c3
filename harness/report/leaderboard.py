"""The leaderboard as a query over the result store (issue #5, item 6; datasets-and-metrics.md 7.11).

One row per configuration (every config value except the seed and the data root). A cell of the
sweep is a (configuration, seed) pair; a row gathers its cells from the ``runs`` table and, when
the runner recorded the sweep's trial list, from ``trials`` too, so cells that failed or never ran
appear as such. Metrics are class means ("mean" rows, what papers report) averaged over the
complete seeds, with their sample standard deviation; per-class values and efficiency columns
are averaged the same way. Reported paper numbers are attached where a paper reports that cell.
With ``bootstrap`` settings every image-metric cell also gets a bootstrap interval over the test
images and every row a paired tie test against the best row on the sort metric (uncertainty.py).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable

from harness.formatting import format_value
from harness.report.reference_check import ReferenceCheck, check_row
from harness.report.uncertainty import (
    IMAGE_METRICS,
    BootstrapSettings,
    Interval,
    MaskSource,
    RowUncertainty,
    TieTest,
    add_pixel_draws,
    row_uncertainty,
    run_pixel_tallies,
    shared_resamples,
    ties_with_best,
)
from harness.reported import ReportedValue, reported_elsewhere, reported_for
from harness.results.schema import STATUS_COMPLETE, STATUS_FAILED
from harness.results.store import DAMAGED, ResultStore

METRIC_ORDER = (
    "i_auroc", "p_auroc", "aupro", "i_ap", "p_ap", "i_f1max", "p_f1max", "aupro_05", "aupro_01", "aupimo",
)
METRIC_TITLES = {
    "i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "aupro": "AUPRO", "i_ap": "I-AP", "p_ap": "P-AP",
    "i_f1max": "I-F1max", "p_f1max": "P-F1max", "aupro_05": "AUPRO@5%", "aupro_01": "AUPRO@1%", "aupimo": "AUPIMO",
}
EFFICIENCY_COLUMNS = (
    "params_trainable", "params_total", "params_reconstruction", "flops_reconstruction_g",
    "wall_time_train_s", "train_throughput_img_s", "infer_throughput_img_s", "peak_memory_mb",
)
EFFICIENCY_TITLES = {
    "params_trainable": "Params (trainable)", "params_total": "Params (total)",
    "params_reconstruction": "Params (recon.)", "flops_reconstruction_g": "GFLOPs",
    "wall_time_train_s": "Train s", "train_throughput_img_s": "Train img/s",
    "infer_throughput_img_s": "Infer img/s", "peak_memory_mb": "Peak MB",
}
AGGREGATE_CLASSES = ("mean", "pooled")
_NOT_CONFIGURATION = ("seed", "data_root")


@dataclass(frozen=True)
class MetricSummary:
    """mean and sample standard deviation over seeds (std is NaN for a single seed)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> MetricSummary:
        finite = [v for v in values if v is not None and not math.isnan(v)]
        if not finite:
            return cls(math.nan, math.nan, 0)
        std = statistics.stdev(finite) if len(finite) > 1 else math.nan
        return cls(statistics.fmean(finite), std, len(finite))


@dataclass(frozen=True)
class Cell:
    seed: int
    status: str  # complete | failed | missing | damaged
    run_id: str | None = None
    reason: str | None = None


@dataclass
class LeaderboardRow:
    configuration_key: str
    label: str
    method: str
    preset: str
    dataset: str
    config: dict
    method_config: dict  # effective (preset merged with overrides) where the run recorded it
    cells: list[Cell] = field(default_factory=list)
    metrics: dict[str, MetricSummary] = field(default_factory=dict)
    pooled: dict[str, MetricSummary] = field(default_factory=dict)
    per_class: dict[str, dict[str, MetricSummary]] = field(default_factory=dict)
    efficiency: dict[str, float | None] = field(default_factory=dict)
    reported: dict[str, ReportedValue] = field(default_factory=dict)
    reported_elsewhere: list[ReportedValue] = field(default_factory=list)  # other datasets: context, not comparable
    order: int = 0
    intervals: dict[str, dict[str, Interval]] = field(default_factory=dict)  # class, "mean" or "pooled" -> metric -> CI
    tie: TieTest | None = None  # against the best row on the sort metric; None for the best row itself
    uncertainty_note: str = ""  # why the row has no intervals
    reference_checks: list[ReferenceCheck] = field(default_factory=list)  # its reported values against its metrics

    @property
    def modalities(self) -> str:
        """The inputs the row's runs read, e.g. "rgb+depth"; "rgb" for a method with no modality setting."""
        return "+".join(self.method_config.get("modalities") or ["rgb"])

    @property
    def complete_run_ids(self) -> list[str]:
        return [c.run_id for c in self.cells if c.status == STATUS_COMPLETE]

    @property
    def status(self) -> str:
        states = {c.status for c in self.cells}
        if states == {STATUS_COMPLETE}:
            return "complete"
        if STATUS_COMPLETE in states:
            return "partial"
        return STATUS_FAILED if STATUS_FAILED in states else "missing"

    @property
    def seeds_text(self) -> str:
        done = sum(c.status == STATUS_COMPLETE for c in self.cells)
        return f"{done}/{len(self.cells)}"

    @property
    def problems(self) -> list[str]:
        out = []
        for c in self.cells:
            if c.status == STATUS_FAILED:
                out.append(f"seed {c.seed} failed: {c.reason or 'no reason recorded'}")
            elif c.status == "missing":
                out.append(f"seed {c.seed} missing")
            elif c.status == DAMAGED:
                out.append(f"seed {c.seed} damaged, runs again in the next sweep: {c.reason}")
        return out


@dataclass
class Leaderboard:
    rows: list[LeaderboardRow]
    sweep: str | None
    metrics: list[str]  # metric names present, in display order
    classes: list[str]
    store_root: str
    varying_keys: list[str]
    routing: list[dict] = field(default_factory=list)
    sort_metric: str = "i_auroc"
    bootstrap: BootstrapSettings | None = None  # None: no intervals or tie tests
    dataset: str | None = None  # None: every dataset of the store
    earlier_runs: int = 0  # runs of this sweep whose configuration its latest definition no longer has (not shown)

    @property
    def empty(self) -> bool:
        return not self.rows

    @property
    def title(self) -> str:
        title = f"Leaderboard: sweep {self.sweep}" if self.sweep else "Leaderboard: all runs"
        return f"{title} on {self.dataset}" if self.dataset else title

    def row(self, label: str) -> LeaderboardRow:
        for row in self.rows:
            if row.label == label:
                return row
        raise KeyError(f"no leaderboard row labelled {label!r}; rows: {[r.label for r in self.rows]}")


def build_leaderboard(
    store: ResultStore,
    sweep: str | None = None,
    sort_metric: str = "i_auroc",
    bootstrap: BootstrapSettings | None = BootstrapSettings(),
    dataset: str | None = None,
) -> Leaderboard:
    """Query the store into a Leaderboard (all sweeps when ``sweep`` is None, all datasets when
    ``dataset`` is None: see ``leaderboard_datasets``); ``bootstrap=None`` skips intervals."""
    trials, runs, earlier = _trials_and_runs(store, sweep)
    if dataset is not None:
        trials = [t for t in trials if _trial_dataset(t) == dataset]
        runs = [r for r in runs if r["dataset"] == dataset]
        earlier = [r for r in earlier if r["dataset"] == dataset]

    configs: dict[str, dict] = {}
    order: dict[str, int] = {}
    expected: dict[tuple[str, int], str | None] = {}  # cell -> the run id the sweep recorded for it
    for trial in sorted(trials, key=lambda t: (t["sweep"], t["trial_index"] or 0)):
        key = trial["configuration_key"]
        configs.setdefault(key, json.loads(trial["config_json"]))
        order.setdefault(key, len(order))
        expected[(key, trial["seed"])] = trial["run_id"]

    latest: dict[tuple[str, int], dict] = {}
    for run in runs:
        key = run["configuration_key"]
        if key is None:
            continue
        config = json.loads(run["config_json"]) if run["config_json"] else {}
        configs.setdefault(key, config)
        order.setdefault(key, len(order))
        cell = (key, run["seed"])
        expected.setdefault(cell, run["run_id"])
        previous = latest.get(cell)
        if previous is None or _preference(run) > _preference(previous):
            latest[cell] = run

    damaged = store.damaged_runs()
    complete_ids = [r["run_id"] for r in latest.values() if r["status"] == STATUS_COMPLETE and r["run_id"] not in damaged]
    metric_rows = store.read("metrics", run_ids=complete_ids).to_pylist() if complete_ids else []
    routing_rows = store.read("routing", run_ids=complete_ids).to_pylist() if complete_ids else []
    values_by_run: dict[str, list[dict]] = {}
    for m in metric_rows:
        values_by_run.setdefault(m["run_id"], []).append(m)

    varying = _varying_keys(list(configs.values()))
    rows: dict[str, LeaderboardRow] = {}
    for (key, seed), expected_id in expected.items():
        config = configs[key]
        if key not in rows:
            rows[key] = LeaderboardRow(
                configuration_key=key,
                label=_label(config, varying),
                method=config.get("method", "?"),
                preset=config.get("preset", "?"),
                dataset=config.get("dataset", "?"),
                config=config,
                method_config=dict(config.get("method_config") or {}),
                order=order[key],
            )
        rows[key].cells.append(_cell(seed, latest.get((key, seed)), expected_id, damaged))

    runs_by_id = {r["run_id"]: r for r in latest.values()}
    classes: set[str] = set()
    metric_names: set[str] = set()
    for row in rows.values():
        row.cells.sort(key=lambda c: c.seed)
        complete = [runs_by_id[rid] for rid in row.complete_run_ids]
        for run in complete:
            if run["method_config_json"]:
                row.method_config = json.loads(run["method_config_json"])
                break
        _summarise_metrics(row, [values_by_run.get(r["run_id"], []) for r in complete])
        row.efficiency = {column: _mean_of([r[column] for r in complete]) for column in EFFICIENCY_COLUMNS}
        row.reported = reported_for(row.method, row.dataset, row.method_config)
        row.reported_elsewhere = reported_elsewhere(row.method, row.dataset, row.method_config)
        classes.update(row.per_class)
        metric_names.update(row.metrics)

    ordered_metrics = [m for m in METRIC_ORDER if m in metric_names] + sorted(metric_names - set(METRIC_ORDER))
    ranked = sorted(rows.values(), key=lambda r: _rank_key(r, sort_metric))
    if bootstrap is not None and complete_ids:
        _attach_uncertainty(ranked, store, complete_ids, bootstrap, sort_metric)
    for row in ranked:
        row.reference_checks = check_row(row)  # after the intervals, which can make a check within
    return Leaderboard(
        rows=ranked,
        sweep=sweep,
        metrics=ordered_metrics,
        classes=sorted(classes),
        store_root=str(store.root),
        varying_keys=varying,
        routing=routing_rows,
        sort_metric=sort_metric,
        bootstrap=bootstrap,
        dataset=dataset,
        earlier_runs=len(earlier),
    )


def _attach_uncertainty(ranked: list[LeaderboardRow], store: ResultStore, run_ids: list[str], settings: BootstrapSettings,
                        sort_metric: str) -> None:
    """Intervals on every row's cells and each row's tie test against the best, from the stored sample scores
    (and, with pixel resamples, the stored maps)."""
    by_run: dict[str, list[dict]] = {}
    for score in store.read("sample_scores", run_ids=run_ids).to_pylist():
        by_run.setdefault(score["run_id"], []).append(score)
    resamples_of = shared_resamples(settings.seed)
    masks = MaskSource()
    uncertainties: list[RowUncertainty] = []
    for row in ranked:
        found = row_uncertainty([by_run.get(rid, []) for rid in row.complete_run_ids], settings, resamples_of)
        mismatch = _not_reproduced(row, found.observed)
        found = found.unusable(mismatch) if mismatch else found
        notes = [f"no bootstrap interval: {found.note}"] if found.note and row.complete_run_ids else []
        if settings.pixel_resamples and found.images is not None:
            notes += [_with_pixels(found, row, store, masks, resamples_of(found.images, settings.pixel_resamples), settings)]
        row.intervals, row.uncertainty_note = found.intervals, "; ".join(note for note in notes if note)
        uncertainties.append(found)
    for row, test in zip(ranked, ties_with_best(uncertainties, sort_metric, settings.confidence)):
        row.tie = test


def _trials_and_runs(store: ResultStore, sweep: str | None) -> tuple[list[dict], list[dict], list[dict]]:
    """(trials, runs to show, runs left out). With a sweep whose trials are recorded, its cells are those of its
    latest definition (every launch rewrites them): runs of configurations an edit of the file dropped are left out."""
    trials = store.read("trials").to_pylist()
    runs = store.read("runs").to_pylist()
    if sweep is None:
        return trials, runs, []
    trials = [t for t in trials if t["sweep"] == sweep]
    if not trials:
        return trials, [r for r in runs if r["sweep"] == sweep], []
    # A cell shared with another sweep (same run id) still belongs to this one.
    cells = {(t["configuration_key"], t["seed"]) for t in trials}
    current = [r for r in runs if (r["configuration_key"], r["seed"]) in cells]
    return trials, current, [r for r in runs if r["sweep"] == sweep and (r["configuration_key"], r["seed"]) not in cells]


def _trial_dataset(trial: dict) -> str:
    return json.loads(trial["config_json"]).get("dataset", "?")


def leaderboard_datasets(store: ResultStore, sweep: str | None = None) -> list[str]:
    """The datasets of a store's (or one sweep's) cells, in first-seen order: a leaderboard ranks
    within one dataset, so a store holding several is shown as one board per dataset."""
    trials, runs, _ = _trials_and_runs(store, sweep)
    found = [_trial_dataset(t) for t in sorted(trials, key=lambda t: (t["sweep"], t["trial_index"] or 0))]
    found += [r["dataset"] for r in runs if r["configuration_key"] is not None]
    return list(dict.fromkeys(found))


def datasets_to_show(store: ResultStore, sweep: str | None = None) -> list[str | None]:
    """The ``dataset`` argument of each board to build: one per dataset when the cells span several,
    else [None] (one unfiltered board)."""
    found = leaderboard_datasets(store, sweep)
    return found if len(found) > 1 else [None]


def metric_key(name: str, known: Iterable[str]) -> str | None:
    """The metric in `known` that `name` spells: its key (p_auroc) or its table title (P-AUROC), in any case."""
    wanted = _spelling(name)
    for key in known:
        if wanted in (_spelling(key), _spelling(METRIC_TITLES.get(key, key))):
            return key
    return None


def _spelling(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _with_pixels(found: RowUncertainty, row: LeaderboardRow, store: ResultStore, masks: MaskSource, weights,
                 settings: BootstrapSettings) -> str:
    """Adds the row's pixel draws; returns why it has none ("" when it has them)."""
    try:
        tallies = run_pixel_tallies(store, row.complete_run_ids, found.images, row.config, masks)
    except Exception as exc:  # maps or data out of reach: the board still renders, the note says why
        return f"no pixel interval: {exc}"
    add_pixel_draws(found, tallies, weights, settings.confidence)
    mismatch = _not_reproduced(row, found.observed)
    if mismatch:
        for group in found.draws:
            for by_metric in (found.draws[group], found.intervals.get(group, {})):
                for metric in [m for m in by_metric if m not in IMAGE_METRICS]:
                    del by_metric[metric]
        return f"no pixel interval: {mismatch}"
    return ""


REPRODUCTION_TOLERANCE = 1e-9


def _not_reproduced(row: LeaderboardRow, observed: dict[str, dict[str, float]]) -> str:
    """Why the stored sample scores cannot stand for the row's stored metrics ("" when they reproduce them)."""
    stored = {"mean": row.metrics, "pooled": row.pooled, **row.per_class}
    for group, by_metric in observed.items():
        for metric, value in by_metric.items():
            summary = stored.get(group, {}).get(metric)
            if summary is not None and summary.n and abs(summary.mean - value) > REPRODUCTION_TOLERANCE:
                return (f"the stored sample scores give {metric} {value:.6f} for {group}, the stored metric is "
                        f"{summary.mean:.6f}")
    return ""


def _cell(seed: int, run: dict | None, expected_id: str | None, damaged: dict) -> Cell:
    """A cell's state; a complete run with a damaged file (or an unreadable runs file) is damaged."""
    run_id = run["run_id"] if run is not None else expected_id
    if run_id in damaged and (run is None or run["status"] == STATUS_COMPLETE):
        return Cell(seed, DAMAGED, run_id, "; ".join(str(problem) for problem in damaged[run_id]))
    if run is None:
        return Cell(seed, "missing")
    return Cell(seed, run["status"], run["run_id"], run["failure_reason"])


def _summarise_metrics(row: LeaderboardRow, per_run: list[list[dict]]) -> None:
    """Class-mean, pooled and per-class summaries over the complete seeds of one configuration."""
    by_class: dict[str, dict[str, list[float]]] = {}
    for metrics in per_run:
        seen_mean = {m["metric"] for m in metrics if m["class_name"] == "mean"}
        real = [m for m in metrics if m["class_name"] not in AGGREGATE_CLASSES]
        for m in metrics:
            by_class.setdefault(m["class_name"], {}).setdefault(m["metric"], []).append(m["value"])
        # A run that stored only per-class values still gets its unweighted class mean.
        for metric in {m["metric"] for m in real} - seen_mean:
            values = [m["value"] for m in real if m["metric"] == metric and not _isnan(m["value"])]
            if values:
                by_class.setdefault("mean", {}).setdefault(metric, []).append(statistics.fmean(values))
    row.metrics = {metric: MetricSummary.of(v) for metric, v in by_class.pop("mean", {}).items()}
    row.pooled = {metric: MetricSummary.of(v) for metric, v in by_class.pop("pooled", {}).items()}
    row.per_class = {cls: {metric: MetricSummary.of(v) for metric, v in m.items()} for cls, m in sorted(by_class.items())}


def _preference(run: dict) -> tuple:
    """Which run of a cell counts: a complete one over a failed one, then the latest."""
    finished = run["finished_at"].timestamp() if run["finished_at"] is not None else 0.0
    return (run["status"] == STATUS_COMPLETE, finished)


def _rank_key(row: LeaderboardRow, metric: str) -> tuple:
    summary = row.metrics.get(metric)
    value = summary.mean if summary and summary.n else math.nan
    return (math.isnan(value), -value if not math.isnan(value) else 0.0, row.order)


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):  # an empty mapping (a preset as it is) sets nothing
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _varying_keys(configs: list[dict]) -> list[str]:
    """Dotted config keys whose value differs between configurations, in first-seen order."""
    flats = [_flatten({k: v for k, v in c.items() if k not in _NOT_CONFIGURATION}) for c in configs]
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys]
    sentinel = object()
    return [k for k in keys if len({json.dumps(f.get(k, sentinel), default=repr, sort_keys=True) for f in flats}) > 1]


def _label(config: dict, varying: list[str]) -> str:
    flat = _flatten({k: v for k, v in config.items() if k not in _NOT_CONFIGURATION})
    # a key another configuration sets and this one leaves to its preset is not part of its name
    parts = [f"{key.rsplit('.', 1)[-1]}={format_value(flat[key])}" for key in varying if key in flat]
    return " ".join(parts) if parts else f"{config.get('method', '?')} ({config.get('preset', '?')})"


def _mean_of(values: list) -> float | None:
    finite = [float(v) for v in values if v is not None and not _isnan(v)]
    return statistics.fmean(finite) if finite else None


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
