"""Bootstrap intervals on leaderboard cells and ties with the best row (issue 13 items 1-2; datasets-and-metrics.md 7.9: CIs).

Every row of a board scores the same test images, so one set of resamples serves them all:
``stratified_multiplicities`` draws, per (class, label) stratum, as many images as the stratum
holds, with replacement, and records how often each image was drawn. A resample's metric is the
exact metric (curves.py tie rules) of the images weighted by those counts; the class mean averages
the per-class values as the leaderboard does. A row with several seeds gets the distribution of
its seed mean: each seed's run is scored on the same resample and the runs are averaged, so the
interval is the test-set uncertainty of the number the row reports, and the seed spread stays
the separate ± column.

Pixel metrics (opt-in: ``pixel_resamples``) resample whole images through the accumulator's own
state: one PixelTally per image (histogram columns and PRO regions, from the stored float16 map
and the dataset's mask), summed with each image's draw count, then scored by pixel_metrics.
MVTec LOCO (sPRO) is not resampled.

The tie test is a paired bootstrap: the difference best - row on each resample (identical images
for both rows). Its two-sided p-value is twice the smaller tail of that difference at zero; a row
with p >= 1 - confidence is tied with the best. Rows that scored other test images are not tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.metrics.accumulator import DEFAULT_MAX_BINS
from harness.metrics.histogram import ANOMALOUS, N_COLUMNS, NORMAL, PRO_WEIGHT, ScoreHistogram
from harness.metrics.pixel_tally import PixelTally, pixel_metrics, tally_maps
from harness.metrics.score_keys import canonical_float32
from harness.metrics.table import IMAGE_METRICS, MEAN, POOLED

PIXEL_CHUNK = 16  # resamples summed at once: bounds the dense (resamples x bins) block


@dataclass(frozen=True)
class BootstrapSettings:
    """How many resamples (image metrics; pixel metrics are opt-in), their seed and the confidence level."""

    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95
    pixel_resamples: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"bootstrap resamples must be at least 1, got {self.resamples}")
        if self.pixel_resamples < 0:
            raise ValueError(f"pixel bootstrap resamples must be 0 (off) or more, got {self.pixel_resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"bootstrap confidence must lie strictly between 0 and 1, got {self.confidence}")


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    resamples: int


@dataclass(frozen=True)
class TieTest:
    """A row against the best row on one metric; ``reason`` says why no test was possible."""

    metric: str
    tied: bool | None
    p_value: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class TestImages:
    """A run's test images in canonical (sample id) order: what the resamples index."""

    sample_ids: tuple[str, ...]
    class_names: np.ndarray  # str per image
    labels: np.ndarray  # 0/1 per image

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.class_names.tolist()))


@dataclass(frozen=True)
class ScoredRun:
    images: TestImages
    scores: np.ndarray  # float64 per image, aligned with images


def scored_run(rows: list[dict]) -> ScoredRun:
    """One run's sample_scores rows as arrays in sample-id order."""
    ordered = sorted(rows, key=lambda r: r["sample_id"])
    images = TestImages(
        tuple(r["sample_id"] for r in ordered),
        np.array([r["class_name"] for r in ordered], dtype=object),
        np.array([int(r["label"]) for r in ordered], dtype=np.int64),
    )
    return ScoredRun(images, np.array([float(r["score"]) for r in ordered], dtype=np.float64))


def stratified_multiplicities(class_names: np.ndarray, labels: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, images) draw counts: each (class, label) stratum resampled to its own size, with replacement."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, len(labels)), dtype=np.int32)
    strata = sorted(set(zip(class_names.tolist(), labels.tolist())))
    for class_name, label in strata:
        members = np.flatnonzero((class_names == class_name) & (labels == label))
        size = len(members)
        draws = rng.integers(0, size, size=(resamples, size)) + size * np.arange(resamples)[:, None]
        counts[:, members] = np.bincount(draws.ravel(), minlength=resamples * size).reshape(resamples, size)
    return counts


def _binned(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normal, anomalous) weighted counts per distinct score, highest score first, one row per resample."""
    distinct, bins = np.unique(scores, return_inverse=True)
    order = np.argsort(-bins, kind="stable")  # highest score first
    descending = (len(distinct) - 1) - bins[order]
    starts = np.flatnonzero(np.concatenate(([True], descending[1:] != descending[:-1])))
    w = weights[:, order].astype(np.float64)
    anomalous = np.add.reduceat(w * labels[order], starts, axis=1)
    return np.add.reduceat(w, starts, axis=1) - anomalous, anomalous


def image_metric_draws(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """I-AUROC, I-AP and I-F1max of each weighted resample (curves.py's formulas along axis 1); NaN if undefined."""
    if labels.min(initial=1) == labels.max(initial=0):  # one label only: every metric undefined
        return {name: np.full(len(weights), np.nan) for name in IMAGE_METRICS}
    normal, anomalous = _binned(scores, labels, weights)
    fp, tp = np.cumsum(normal, axis=1), np.cumsum(anomalous, axis=1)
    n, p = fp[:, -1], tp[:, -1]
    auroc = np.sum(normal * (2.0 * (tp - anomalous) + anomalous), axis=1) / (2.0 * n * p)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    ap = np.sum(anomalous * precision, axis=1) / p
    f1 = np.max(2.0 * tp / (tp + fp + p[:, None]), axis=1)
    return {"i_auroc": auroc, "i_ap": ap, "i_f1max": f1}


def run_draws(run: ScoredRun, weights: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """{class, "mean", "pooled": {metric: one value per resample}} of one run on the given resamples."""
    images = run.images
    draws = {}
    for class_name in images.classes:
        members = np.flatnonzero(images.class_names == class_name)
        draws[class_name] = image_metric_draws(run.scores[members], images.labels[members], weights[:, members])
    per_class = list(draws.values())
    draws[MEAN] = {m: _mean_of_defined([d[m] for d in per_class]) for m in IMAGE_METRICS}
    draws[POOLED] = image_metric_draws(run.scores, images.labels, weights)
    return draws


def _mean_of_defined(values: list[np.ndarray]) -> np.ndarray:
    """Class mean per resample over the classes where the metric is defined (as the accumulator's mean)."""
    stacked = np.stack(values)
    defined = ~np.isnan(stacked[:, 0])
    return stacked[defined].mean(axis=0) if defined.any() else stacked[0]


def seed_mean_draws(runs: list[ScoredRun], weights: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The seed mean of every cell on each resample: each run scored on the same images, then averaged."""
    per_run = [run_draws(run, weights) for run in runs]
    return {
        group: {metric: np.mean([d[group][metric] for d in per_run], axis=0) for metric in per_run[0][group]}
        for group in per_run[0]
    }


def interval(draws: np.ndarray, confidence: float) -> Interval | None:
    """The percentile interval of the resampled values (None when the metric is undefined)."""
    if np.isnan(draws).any():
        return None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return Interval(float(low), float(high), len(draws))


def paired_tie_test(best: np.ndarray, other: np.ndarray, metric: str, confidence: float) -> TieTest:
    """Two-sided paired bootstrap of best - other on identical resamples; tied when p >= 1 - confidence."""
    difference = best - other
    if np.isnan(difference).any():
        return TieTest(metric, None, reason="metric undefined on this test set")
    p_value = min(1.0, 2.0 * min(float(np.mean(difference <= 0)), float(np.mean(difference >= 0))))
    return TieTest(metric, p_value >= 1.0 - confidence, p_value)


@dataclass
class RowUncertainty:
    """A row's resampled seed means and their intervals, per group (class, "mean", "pooled") and metric."""

    images: TestImages | None
    draws: dict[str, dict[str, np.ndarray]]
    intervals: dict[str, dict[str, Interval]]
    note: str = ""
    observed: dict[str, dict[str, float]] = field(default_factory=dict)  # the seed mean on the test set itself

    def unusable(self, note: str) -> RowUncertainty:
        return RowUncertainty(None, {}, {}, note)


def row_uncertainty(runs: list[list[dict]], settings: BootstrapSettings, resamples_of) -> RowUncertainty:
    """A row from its complete runs' sample_scores rows; ``resamples_of(images, count)`` gives the shared draw counts."""
    scored = [scored_run(rows) for rows in runs if rows]
    if not scored:
        return RowUncertainty(None, {}, {}, "no per-sample scores stored")
    if len(scored) < len(runs) or any(run.images.sample_ids != scored[0].images.sample_ids for run in scored):
        return RowUncertainty(None, {}, {}, "its seeds scored different test images (or some stored no scores)")
    draws = seed_mean_draws(scored, resamples_of(scored[0].images, settings.resamples))
    intervals = {
        group: {metric: found for metric, values in by_metric.items() if (found := interval(values, settings.confidence))}
        for group, by_metric in draws.items()
    }
    identity = np.ones((1, len(scored[0].images.labels)), dtype=np.int32)
    observed = {g: {m: float(v[0]) for m, v in by_metric.items()} for g, by_metric in seed_mean_draws(scored, identity).items()}
    return RowUncertainty(scored[0].images, draws, intervals, observed=observed)


def shared_resamples(seed: int):
    """One set of stratified draw counts per (test set, count), so rows on the same images pair exactly."""
    cache: dict[tuple, np.ndarray] = {}

    def resamples_of(images: TestImages, count: int) -> np.ndarray:
        key = (images.sample_ids, tuple(images.labels.tolist()), tuple(images.class_names.tolist()), count)
        if key not in cache:
            cache[key] = stratified_multiplicities(images.class_names, images.labels, count, seed)
        return cache[key]

    return resamples_of


def ties_with_best(ranked: list[RowUncertainty], metric: str, confidence: float) -> list[TieTest | None]:
    """Per ranked row, its paired test against the first (best) row; None for that row or when it has no draws."""
    best = ranked[0] if ranked and metric in ranked[0].draws.get(MEAN, {}) else None
    tests: list[TieTest | None] = []
    for row in ranked:
        if best is None or row is best:
            tests.append(None)
        elif metric not in row.draws.get(MEAN, {}):
            tests.append(TieTest(metric, None, reason=row.note or f"no resampled {metric}"))
        elif row.images.sample_ids != best.images.sample_ids:
            tests.append(TieTest(metric, None, reason="scored other test images than the best row; no paired test"))
        else:
            tests.append(paired_tie_test(best.draws[MEAN][metric], row.draws[MEAN][metric], metric, confidence))
    return tests


def image_tally(anomaly_map: np.ndarray, mask: np.ndarray) -> PixelTally:
    """One image's exact pixel state, as MetricAccumulator.update builds it for a batch."""
    return tally_maps(canonical_float32(anomaly_map[None]), mask[None], level=0, max_bins=DEFAULT_MAX_BINS)


def pixel_metric_draws(tallies: list[PixelTally], weights: np.ndarray) -> dict[str, np.ndarray]:
    """pixel_metrics of the images' tallies summed with each resample's draw counts (one value per resample)."""
    from scipy import sparse

    keys = np.unique(np.concatenate([t.histogram.keys for t in tallies]))
    used = (NORMAL, ANOMALOUS, PRO_WEIGHT)
    rows, cols, values = [], [], []
    for i, tally in enumerate(tallies):
        where = np.searchsorted(keys, tally.histogram.keys)
        for j, column in enumerate(used):
            rows.append(np.full(len(where), i))
            cols.append(where * len(used) + j)
            values.append(tally.histogram.columns[:, column].astype(np.float64))  # exact: sums stay below 2**53
    per_image = sparse.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                                  shape=(len(tallies), len(keys) * len(used)))
    regions = np.array([t.n_regions for t in tallies], dtype=np.int64)
    draws: dict[str, list[float]] = {}
    for start in range(0, len(weights), PIXEL_CHUNK):
        block = weights[start:start + PIXEL_CHUNK]
        summed = np.rint(per_image.T.dot(block.T.astype(np.float64)).T).astype(np.int64).reshape(len(block), len(keys), len(used))
        for b, counts in enumerate(summed):
            columns = np.zeros((len(keys), N_COLUMNS), dtype=np.int64)
            columns[:, list(used)] = counts
            occupied = columns.any(axis=1)
            tally = PixelTally(ScoreHistogram(0, keys[occupied], columns[occupied]), int(block[b] @ regions))
            for metric, (value, _) in pixel_metrics(tally).items():
                draws.setdefault(metric, []).append(np.nan if value is None else value)
    return {metric: np.array(values) for metric, values in draws.items()}


def pixel_run_draws(images: TestImages, tallies: list[PixelTally], weights: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """{class, "mean": {pixel metric: one value per resample}} of one run (pooled is not resampled)."""
    draws = {}
    for class_name in images.classes:
        members = np.flatnonzero(images.class_names == class_name)
        draws[class_name] = pixel_metric_draws([tallies[i] for i in members], weights[:, members])
    per_class = list(draws.values())
    draws[MEAN] = {m: _mean_of_defined([d[m] for d in per_class]) for m in per_class[0]}
    return draws


class MaskSource:
    """Ground-truth union masks at a map's size, read from the dataset a row's config names (indexed once)."""

    def __init__(self) -> None:
        self._indexes: dict[tuple, dict] = {}
        self._masks: dict[tuple, np.ndarray] = {}

    def masks_for(self, config: dict, sample_ids: tuple[str, ...], shapes: list[tuple[int, int]]) -> list[np.ndarray]:
        from harness.data import load_dataset, read_mask_stack

        options = config.get("dataset_options") or None
        key = (config.get("dataset"), config.get("data_root"), tuple(config.get("classes") or ()), repr(options))
        if key not in self._indexes:
            index = load_dataset(key[0], key[1], classes=config.get("classes"), check_counts=False, options=options)
            if getattr(index, "defects_config", None):
                raise ValueError("MVTec LOCO's sPRO masks are not resampled")
            self._indexes[key] = {s.sample_id: s for s in index.split("test")}
        samples = self._indexes[key]
        missing = [sid for sid in sample_ids if sid not in samples]
        if missing:
            raise ValueError(f"{len(missing)} scored sample(s) not in the dataset, e.g. {missing[0]!r}")
        for sid, shape in zip(sample_ids, shapes):
            if (key, sid, shape) not in self._masks:
                self._masks[(key, sid, shape)] = read_mask_stack(samples[sid], shape).any(axis=0)
        return [self._masks[(key, sid, shape)] for sid, shape in zip(sample_ids, shapes)]


def run_pixel_tallies(store, run_ids: list[str], images: TestImages, config: dict, masks: MaskSource) -> list[list[PixelTally]]:
    """Per run, one tally per test image (in the images' order) from its stored map and the dataset's mask."""
    from harness.results.predictions import read_maps

    tallies = []
    for run_id in run_ids:
        maps = read_maps(store, run_id)
        missing = [sid for sid in images.sample_ids if sid not in maps]
        if missing:
            raise ValueError(f"run {run_id} stored no map for {len(missing)} scored sample(s), e.g. {missing[0]!r}")
        ordered = [maps[sid] for sid in images.sample_ids]
        truth = masks.masks_for(config, images.sample_ids, [m.shape for m in ordered])
        tallies.append([image_tally(m, t) for m, t in zip(ordered, truth)])
    return tallies


def add_pixel_draws(found: RowUncertainty, run_tallies: list[list[PixelTally]], weights: np.ndarray, confidence: float) -> None:
    """The row's seed-mean pixel draws, intervals and observed values, beside its image ones."""
    per_run = [pixel_run_draws(found.images, tallies, weights) for tallies in run_tallies]
    identity = np.ones((1, len(found.images.labels)), dtype=np.int32)
    observed = [pixel_run_draws(found.images, tallies, identity) for tallies in run_tallies]
    for group in per_run[0]:
        for metric in per_run[0][group]:
            draws = np.mean([d[group][metric] for d in per_run], axis=0)
            found.draws[group][metric] = draws
            found.observed[group][metric] = float(np.mean([o[group][metric][0] for o in observed]))
            if (ci := interval(draws, confidence)) is not None:
                found.intervals[group][metric] = ci
