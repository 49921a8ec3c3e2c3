"""AUPIMO: the area under each anomalous image's PIMO curve (spec section 5.1; Bertoldo et al. 2024,
arXiv 2401.01984; anomalib ``anomalib.metrics.pimo``).

Per class, at threshold t (a pixel is predicted anomalous when its score is >= t):

- the shared FPR is the mean over the class's normal images of each image's FPR, the fraction of
  its pixels scoring >= t (anomalib's mean-per-image FPR);
- an anomalous image's TPR is the fraction of its anomalous pixels scoring >= t;
- AUPIMO_i = trapezoid area of TPR_i over ln(shared FPR), between the thresholds whose shared FPR
  is closest to 1e-4 and to 1e-5, divided by ln(1e-4 / 1e-5), clipped to [0, 1].

anomalib draws its thresholds from a grid of ``num_thresholds`` values between the normal images'
lowest and highest score; we take every distinct score in that range, which is the limit of that
grid. Segments of constant shared FPR add no area, so the sum runs over the distinct normal-image
scores u_j only: each adds (ln F(u_j) - ln F(u_j+)) (TPR_i(>= u_j) + TPR_i(> u_j)) / 2.

State per class: an integer histogram of normal-image pixel scores per image size (exact, merged
by adding, binned past ``max_bins`` as the other pixel metrics are) and, per anomalous image, the
distinct scores of its anomalous pixels with their counts. Images count as anomalous by their
mask, as anomalib classifies them; an image labelled anomalous whose mask is empty gets no value
and does not join the normal images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np

from harness.metrics.batch_inputs import mask_channels_per_image, maps_per_image, per_image_list, to_numpy
from harness.metrics.histogram import ScoreHistogram
from harness.metrics.score_keys import canonical_float32, distinct_keys, first_non_finite
from harness.metrics.table import AUPIMO, AUPIMO_FPR_BOUNDS, POOLED, MetricRow, class_mean_row

FEW_FPR_VALUES = 30  # anomalib refuses an integration range with this few points unless forced
BOUND_MISSED_BY = 1e-2  # anomalib warns when the closest shared FPR misses a bound by more (relative)


class AnomalousImage(NamedTuple):
    """One anomalous image's anomalous pixels: sorted distinct float32 keys and their pixel counts."""

    sample_id: str
    keys: np.ndarray
    counts: np.ndarray


def _empty_histogram() -> ScoreHistogram:
    return ScoreHistogram(0, np.zeros(0, dtype=np.uint32), np.zeros((0, 1), dtype=np.int64))


@dataclass
class OverlapTally:
    """One class's AUPIMO state: normal-image pixel histograms keyed by pixels per image, the number
    of normal images of each size, the anomalous images, and how many images were left out."""

    normal: dict[int, ScoreHistogram] = field(default_factory=dict)
    normal_images: dict[int, int] = field(default_factory=dict)
    anomalous: list[AnomalousImage] = field(default_factory=list)
    unmasked: int = 0  # labelled anomalous, empty mask

    def merged(self, other: "OverlapTally", max_bins: int) -> "OverlapTally":
        sizes = sorted(set(self.normal) | set(other.normal))
        normal = {
            size: self.normal.get(size, _empty_histogram()).merged(other.normal.get(size, _empty_histogram())).within_budget(max_bins)
            for size in sizes
        }
        images = {size: self.normal_images.get(size, 0) + other.normal_images.get(size, 0) for size in sizes}
        return OverlapTally(normal, images, [*self.anomalous, *other.anomalous], self.unmasked + other.unmasked)


class AupimoValue(NamedTuple):
    value: float | None
    note: str
    per_image: dict[str, float]  # sample id -> AUPIMO of each anomalous image (empty when undefined)


def tally_image(score_map: np.ndarray, positive: np.ndarray, label: int, sample_id: str, max_bins: int) -> OverlapTally:
    """The tally of one (H, W) canonical float32 map with its (H, W) union mask."""
    if positive.any():
        keys, counts = distinct_keys(score_map[positive])
        return OverlapTally(anomalous=[AnomalousImage(sample_id, keys, counts)])
    if label == 1:
        return OverlapTally(unmasked=1)
    keys, counts = distinct_keys(score_map)
    histogram = ScoreHistogram(0, keys, counts[:, None]).within_budget(max_bins)
    return OverlapTally({score_map.size: histogram}, {score_map.size: 1})


def merge_all(tallies: Sequence[OverlapTally], max_bins: int) -> OverlapTally:
    total = OverlapTally()
    for tally in tallies:
        total = total.merged(tally, max_bins)
    return total


def _at_or_above(keys: np.ndarray, prefix: np.ndarray, thresholds: np.ndarray, side: str) -> np.ndarray:
    """Items with key >= threshold (side "left") or > threshold (side "right"), from sorted keys and
    the cumulative counts ``prefix`` (prefix[0] = 0)."""
    return prefix[-1] - prefix[np.searchsorted(keys, thresholds, side=side)]


def _prefix(counts: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(counts)))


def shared_fpr_curve(tally: OverlapTally) -> tuple[np.ndarray, np.ndarray, int]:
    """(distinct normal-image keys u ascending, shared FPR at each u, binning level) of a tally."""
    sizes = sorted(tally.normal)
    level = max(tally.normal[size].level for size in sizes)
    histograms = [tally.normal[size].at_level(level) for size in sizes]
    thresholds = np.unique(np.concatenate([h.keys for h in histograms]))
    fpr_sum = np.zeros(len(thresholds))
    for size, histogram in zip(sizes, histograms):
        fpr_sum += _at_or_above(histogram.keys, _prefix(histogram.columns[:, 0]), thresholds, "left") / float(size)
    return thresholds, fpr_sum / float(sum(tally.normal_images.values())), level


def image_tpr(image: AnomalousImage, thresholds: np.ndarray, level: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The image's TPR at each threshold key (pixels >= it) and just above it (pixels > it)."""
    keys, prefix = image.keys >> np.uint32(level), _prefix(image.counts)
    total = float(prefix[-1])
    return _at_or_above(keys, prefix, thresholds, "left") / total, _at_or_above(keys, prefix, thresholds, "right") / total


def closest_index(shared_fpr: np.ndarray, level: float) -> int:
    """anomalib's choice: the threshold whose shared FPR is closest to ``level``, the lowest on ties."""
    return int(np.argmin(np.abs(shared_fpr - level)))


def _bracket(shared_fpr: np.ndarray, level: float) -> tuple[float, int]:
    """ln of the ratio of the shared FPR values on either side of ``level``, and the index of the higher."""
    above = np.flatnonzero(shared_fpr >= level)
    below = np.flatnonzero(shared_fpr <= level)
    return float(math.log(shared_fpr[above[-1]] / shared_fpr[below[0]])), int(above[-1])


def aupimo_of(tally: OverlapTally, fpr_bounds: tuple[float, float] = AUPIMO_FPR_BOUNDS) -> AupimoValue:
    """The mean AUPIMO over the tally's anomalous images, its note, and each image's value."""
    lower, upper = fpr_bounds
    left_out = f"; {tally.unmasked} image(s) labelled anomalous without anomalous pixels left out" if tally.unmasked else ""
    if not tally.anomalous or not tally.normal:
        missing = "anomalous (masked)" if not tally.anomalous else "normal"
        return AupimoValue(None, f"undefined: no {missing} image{left_out}", {})
    thresholds, shared_fpr, level = shared_fpr_curve(tally)
    if lower < shared_fpr[-1]:
        return AupimoValue(None, (
            f"undefined: the lowest shared FPR of the normal images is {shared_fpr[-1]:.3g}, above the lower bound "
            f"{lower:g} (too few normal pixels, or ties at the highest score){left_out}"), {})
    start, stop = closest_index(shared_fpr, upper), closest_index(shared_fpr, lower)
    if start >= stop:
        return AupimoValue(None, f"undefined: both FPR bounds fall on the same threshold{left_out}", {})
    steps = np.log(shared_fpr[start:stop]) - np.log(shared_fpr[start + 1 : stop + 1])
    normaliser = math.log(upper / lower)
    brackets = [_bracket(shared_fpr, lower), _bracket(shared_fpr, upper)] if level else []
    values, bounds = {}, []
    for image in sorted(tally.anomalous, key=lambda image: image.sample_id):
        at_or_above, above = image_tpr(image, thresholds[start:stop], level)
        if image.sample_id in values:
            raise ValueError(f"sample_id {image.sample_id!r} was scored twice: shards must not overlap")
        values[image.sample_id or f"#{len(values)}"] = min(1.0, max(0.0, float(np.sum(steps * (at_or_above + above)) / 2.0 / normaliser)))
        if level:  # inside the range: half of each bin's rectangle; at each end: the bracket the exact end lies in
            ends = sum(width * image_tpr(image, thresholds[[index]], level)[0][0] for width, index in brackets)
            bounds.append(float(np.sum(steps * (at_or_above - above))) / 2.0 + ends)
    notes = [f"mean over {len(values)} anomalous images"]
    achieved = (shared_fpr[stop], shared_fpr[start])
    if any(abs(got - wanted) > BOUND_MISSED_BY * wanted for got, wanted in zip(achieved, fpr_bounds)):
        notes.append(f"integrated over shared FPR [{achieved[0]:.3g}, {achieved[1]:.3g}], the closest to [{lower:g}, {upper:g}]")
    if stop - start + 1 <= FEW_FPR_VALUES:
        notes.append(f"only {stop - start + 1} shared-FPR values in the range (anomalib refuses <= {FEW_FPR_VALUES} unless forced)")
    if level:
        bound = min(1.0, math.fsum(bounds) / len(bounds) / normaliser)
        notes.append(f"binned: normal-image scores merged into bins of 2^{level} values; |error| <= {bound:.2e}")
    mean = math.fsum(values.values()) / len(values)  # exactly rounded: the same for any image order
    return AupimoValue(mean, "; ".join(notes) + left_out, values)


class AupimoAccumulator:
    """AUPIMO per class, fed batch by batch and merged across workers like ``MetricAccumulator``.

    ``value(class_names)`` is the metric over those classes taken together (one class, or all of them
    for the pooled row); ``per_image()`` maps each anomalous image's sample id to its class's AUPIMO.
    """

    def __init__(self, max_bins: int = 1 << 18, fpr_bounds: tuple[float, float] = AUPIMO_FPR_BOUNDS) -> None:
        lower, upper = fpr_bounds
        if not 0.0 < lower < upper <= 1.0:
            raise ValueError(f"fpr_bounds {fpr_bounds}: expected 0 < lower < upper <= 1")
        self.max_bins, self.fpr_bounds = int(max_bins), (float(lower), float(upper))
        self._tallies: dict[str, OverlapTally] = {}

    def update(self, anomaly_maps: Any, masks: Any, image_labels: Any, class_names: str | Sequence[str],
               sample_ids: Sequence[str] | None = None) -> None:
        """Add B images: maps (B, H, W) or a list, masks (B, H, W), (B, C, H, W) or a list (channels
        united; None: all normal), labels in {0, 1}. A batch that fails validation changes nothing."""
        labels = to_numpy(image_labels).reshape(-1)
        count = len(labels)
        maps = maps_per_image(anomaly_maps, count)
        channels = mask_channels_per_image(masks, count, maps)
        names = per_image_list(class_names, count, "class_names", "")
        ids = per_image_list(sample_ids, count, "sample_ids", "")
        batch: dict[str, list[OverlapTally]] = {}
        for i in range(count):
            where = f"sample {ids[i]!r}" if ids[i] else f"batch item {i}"
            score_map = canonical_float32(maps[i])
            if first_non_finite(score_map[None]) is not None:
                raise ValueError(f"{where}: anomaly map contains NaN or inf (as float32); fix the method's output")
            if channels[i].shape[1:] != score_map.shape:
                raise ValueError(f"{where}: mask shape {channels[i].shape[1:]} differs from map shape {score_map.shape}")
            if labels[i] not in (0, 1):
                raise ValueError(f"{where}: image label {labels[i]} must be 0 (normal) or 1 (anomalous)")
            positive = (channels[i] != 0).any(axis=0)
            batch.setdefault(names[i], []).append(tally_image(score_map, positive, int(labels[i]), str(ids[i]), self.max_bins))
        for name, tallies in batch.items():
            self._tallies[name] = merge_all([self._tallies.get(name, OverlapTally()), *tallies], self.max_bins)

    def merge(self, other: "AupimoAccumulator") -> "AupimoAccumulator":
        """A new accumulator holding both (any order and grouping gives the same values)."""
        if (other.max_bins, other.fpr_bounds) != (self.max_bins, self.fpr_bounds):
            raise ValueError(f"cannot merge AUPIMO accumulators with max_bins/fpr_bounds {self.max_bins}/{self.fpr_bounds} "
                             f"and {other.max_bins}/{other.fpr_bounds}")
        merged = AupimoAccumulator(self.max_bins, self.fpr_bounds)
        for name in sorted(set(self._tallies) | set(other._tallies)):
            merged._tallies[name] = self._tallies.get(name, OverlapTally()).merged(other._tallies.get(name, OverlapTally()), self.max_bins)
        return merged

    @property
    def class_names(self) -> list[str]:
        return sorted(self._tallies)

    def value(self, class_names: Sequence[str]) -> tuple[float | None, str]:
        """(AUPIMO, note) over the given classes taken together."""
        found = aupimo_of(merge_all([self._tallies[n] for n in class_names if n in self._tallies], self.max_bins), self.fpr_bounds)
        return found.value, found.note

    def per_image(self) -> dict[str, float]:
        """Sample id -> AUPIMO of every anomalous image, each within its own class, in id order."""
        values = {}
        for name in self.class_names:
            values.update(aupimo_of(self._tallies[name], self.fpr_bounds).per_image)
        return dict(sorted(values.items()))

    def rows(self) -> list[MetricRow]:
        """Per-class, class-mean and pooled rows."""
        per_class = {name: {AUPIMO: self.value([name])} for name in self.class_names}
        rows = [MetricRow(name, AUPIMO, *results[AUPIMO]) for name, results in per_class.items()]
        rows.append(class_mean_row(AUPIMO, per_class))
        pooled = per_class[self.class_names[0]][AUPIMO] if len(per_class) == 1 else self.value(self.class_names)
        return rows + [MetricRow(POOLED, AUPIMO, *pooled)]


__all__ = ["AupimoAccumulator", "AupimoValue", "OverlapTally", "aupimo_of", "closest_index", "image_tpr", "shared_fpr_curve"]
