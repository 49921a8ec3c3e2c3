"""Streaming, mergeable metric accumulator (issue #3; spec sections 5.1, 4.3 and 7.7).

Feed it batch by batch (``update``), on as many workers as you like, ``merge`` the accumulators
in any order, then ``compute`` a ``MetricTable``: per class, the unweighted class mean and the
pooled class-agnostic values. State per class is a bounded score histogram, region counts and one
record per image, so memory does not grow with the number of maps, and every merge is an integer
sum: one accumulator and any sharding give bit-identical numbers.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from harness.metrics.aupimo import AupimoAccumulator
from harness.metrics.batch_inputs import mask_channels_per_image, maps_per_image, per_image_list, to_numpy
from harness.metrics.defects import GOOD, LOGICAL, STRUCTURAL, DefectSaturation, defect_pixels, load_defects_config
from harness.metrics.image_scores import ImageRecord, image_metrics
from harness.metrics.pixel_tally import PixelTally, pixel_metrics, spro_metrics, tally_maps
from harness.metrics.score_keys import canonical_float32, first_non_finite
from harness.metrics.table import AUPIMO, LOCO_SPLITS, POOLED, SPRO_LIMITS, MetricRow, MetricTable, class_mean_row
from harness.metrics.version import METRIC_IMPLEMENTATION, METRIC_VERSION

DEFAULT_MAX_BINS = 1 << 18
ALL_PIXELS = "all"  # the one pixel part of a non-LOCO class
LOCO_PARTS = (GOOD, STRUCTURAL, LOGICAL)


def _mean_of(parts) -> tuple[float | None, str]:
    """Mean of (value, note) pairs; None when any is missing, notes joined."""
    parts = list(parts)
    values = [value for value, _ in parts]
    notes = "; ".join(dict.fromkeys(note for _, note in parts if note))
    return (None if None in values else float(np.mean(values)), notes)


class MetricAccumulator:
    """Exact streaming metrics for one test set, split over any number of workers.

    max_bins: the most score bins one class may hold before adjacent float32 scores are merged
    (never reached by float16 maps, which hold at most 65,536 distinct values).
    """

    def __init__(self, max_bins: int = DEFAULT_MAX_BINS) -> None:
        if max_bins < (1 << 16):
            raise ValueError(f"max_bins={max_bins} is below 65536: float16 maps would no longer be exact")
        self.max_bins = int(max_bins)
        self._pixels: dict[tuple[str, str], PixelTally] = {}
        self._images: dict[str, list[ImageRecord]] = defaultdict(list)
        self._loco_classes: set[str] = set()
        self._aupimo = AupimoAccumulator(self.max_bins)

    # ------------------------------------------------------------------ feeding
    def update(
        self,
        image_scores: Any,
        image_labels: Any,
        anomaly_maps: Any,
        masks: Any,
        class_names: str | Sequence[str],
        sample_ids: Sequence[str] | None = None,
        defect_types: Sequence[str] | None = None,
        defect_ids: Sequence[Sequence[int]] | None = None,
        defects_config: Any = None,
    ) -> None:
        """Add one batch of B images.

        image_scores (B,), image_labels (B,) in {0, 1}, anomaly_maps (B, H, W) (or a list of
        (H, W) maps), masks (B, H, W) bool (None: all normal). For MVTec LOCO pass masks as
        (B, C, H, W) or a list of (C_i, H, W) stacks with one defect per channel (empty channels
        are padding), ``defect_types`` ("good", "structural_anomalies", "logical_anomalies"),
        ``defect_ids`` (pixel value of each channel; read from integer masks when omitted) and
        ``defects_config`` (a path or parsed ``defects_config.json``, or {class_name: that}).
        sample_ids name images in errors and make records order-independent.
        A batch that fails validation leaves the accumulator unchanged.
        """
        scores = to_numpy(image_scores).astype(np.float64).reshape(-1)
        count = len(scores)
        labels = to_numpy(image_labels).reshape(-1)
        ids = per_image_list(sample_ids, count, "sample_ids", "")
        names = per_image_list(class_names, count, "class_names", "")
        kinds = per_image_list(defect_types, count, "defect_types", "")
        describe = (lambda i: f"sample {ids[i]!r}") if sample_ids is not None else (lambda i: f"batch item {i} (no sample_ids given)")
        if len(labels) != count:
            raise ValueError(f"image_labels has {len(labels)} entries but image_scores has {count}")
        for i in range(count):
            if labels[i] not in (0, 1):
                raise ValueError(f"{describe(i)}: image label {labels[i]} must be 0 (normal) or 1 (anomalous)")
            if not np.isfinite(scores[i]):
                raise ValueError(f"{describe(i)}: image score is {scores[i]} (must be finite)")
        maps = maps_per_image(anomaly_maps, count)
        channels = mask_channels_per_image(masks, count, maps)
        configs = {name: self._loco_config(name, defects_config, channels) for name in dict.fromkeys(names)}

        groups: dict[tuple[str, str, tuple], list[int]] = defaultdict(list)  # maps stack by shape
        for i in range(count):
            part = ALL_PIXELS
            if configs[names[i]] is not None:
                part = GOOD if labels[i] == 0 else kinds[i]
                if (labels[i] == 0 and kinds[i] not in (GOOD, "")) or (labels[i] == 1 and part not in (STRUCTURAL, LOGICAL)):
                    raise ValueError(
                        f"{describe(i)}: MVTec LOCO needs defect_types '{GOOD}' (label 0), '{STRUCTURAL}' "
                        f"or '{LOGICAL}' (label 1); got {kinds[i]!r} with label {labels[i]}"
                    )
            groups[(names[i], part, maps[i].shape)].append(i)

        new_tallies: dict[tuple[str, str], PixelTally] = {}
        for (name, part, _), members in groups.items():
            tally = self._tally_group(members, maps, channels, configs[name], defect_ids, describe, (name, part))
            earlier = new_tallies.get((name, part))
            new_tallies[(name, part)] = tally if earlier is None else earlier.merged(tally, self.max_bins)
        self._aupimo.update(maps, channels, labels, names, sample_ids=ids)
        for key, tally in new_tallies.items():
            current = self._pixels.get(key)
            self._pixels[key] = tally if current is None else current.merged(tally, self.max_bins)
        for name, config in configs.items():
            if config is not None:
                self._loco_classes.add(name)
        for i in range(count):
            self._images[names[i]].append(ImageRecord(str(ids[i]), float(scores[i]), int(labels[i]), str(kinds[i])))

    def _loco_config(self, name: str, defects_config: Any, channels: list[np.ndarray]) -> dict[int, DefectSaturation] | None:
        source = defects_config
        if isinstance(defects_config, Mapping) and not all(isinstance(v, DefectSaturation) for v in defects_config.values()):
            source = defects_config.get(name)
        if source is None:
            if name in self._loco_classes:
                raise ValueError(f"class {name!r} was fed as MVTec LOCO before: pass its defects_config every time")
            if any(c.shape[0] > 1 for c in channels):
                raise ValueError(
                    f"class {name!r}: masks have several channels but no defects_config was given; "
                    "MVTec LOCO sPRO needs the class's defects_config.json"
                )
            return None
        return load_defects_config(source)

    def _tally_group(self, members, maps, channels, config, defect_ids, describe, key) -> PixelTally:
        stack = canonical_float32(np.stack([maps[i] for i in members]))
        bad = first_non_finite(stack)
        if bad is not None:
            raise ValueError(f"{describe(members[bad])}: anomaly map contains NaN or inf (as float32); fix the method's output")
        for i in members:
            if channels[i].shape[1:] != maps[i].shape:
                raise ValueError(f"{describe(i)}: mask shape {channels[i].shape[1:]} differs from map shape {maps[i].shape}")
        positive = np.stack([(channels[i] != 0).any(axis=0) for i in members])
        defects = None if config is None else defect_pixels(members, channels, config, defect_ids, describe, key[0])
        current = self._pixels.get(key)
        level = 0 if current is None else current.histogram.level
        return tally_maps(stack, positive, level=level, max_bins=self.max_bins, defects=defects)

    # ------------------------------------------------------------------ merging
    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """A new accumulator holding both (associative, commutative, bit-identical to one pass)."""
        if other.max_bins != self.max_bins:
            raise ValueError(f"cannot merge accumulators with max_bins {self.max_bins} and {other.max_bins}")
        merged = MetricAccumulator(self.max_bins)
        for key in sorted(set(self._pixels) | set(other._pixels)):
            mine, theirs = self._pixels.get(key), other._pixels.get(key)
            merged._pixels[key] = (mine or PixelTally()).merged(theirs or PixelTally(), self.max_bins)
        for name in set(self._images) | set(other._images):
            merged._images[name] = [*self._images.get(name, []), *other._images.get(name, [])]
        merged._loco_classes = self._loco_classes | other._loco_classes
        merged._aupimo = self._aupimo.merge(other._aupimo)
        return merged

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = dict(self._images)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._images = defaultdict(list, state["_images"])

    # ------------------------------------------------------------------ computing
    @property
    def class_names(self) -> list[str]:
        return sorted(set(self._images) | {name for name, _ in self._pixels})

    def _tally(self, keys: list[tuple[str, str]]) -> PixelTally:
        total = PixelTally()
        for key in keys:
            if key in self._pixels:
                total = total.merged(self._pixels[key], self.max_bins)
        return total

    def _metrics(self, names: list[str], scope: str) -> dict[str, tuple[float | None, str]]:
        """All metrics over the given classes taken together (one class, or all for pooled)."""
        records = [r for name in names for r in self._images.get(name, [])]
        results = image_metrics(records, scope)
        results.update(pixel_metrics(self._tally([(n, p) for n in names for p in (ALL_PIXELS, *LOCO_PARTS)])))
        results[AUPIMO] = self._aupimo.value(names)
        loco = [n for n in names if n in self._loco_classes]
        if not loco:
            return results
        loco_records = [r for name in loco for r in self._images.get(name, [])]
        spro_by_kind = {}
        for kind, defect_type in LOCO_SPLITS.items():
            chosen = [r for r in loco_records if r.label == 0 or r.defect_type == defect_type]
            auroc = image_metrics(chosen, f"{scope} ({defect_type} + good)")["i_auroc"]
            results[f"i_auroc_{kind}"] = auroc
            spro_by_kind[kind] = spro_metrics(self._tally([(n, p) for n in loco for p in (GOOD, defect_type)]))
        results["i_auroc_loco_mean"] = _mean_of(results[f"i_auroc_{kind}"] for kind in LOCO_SPLITS)
        for suffix in SPRO_LIMITS:
            parts = [spro_by_kind[kind][suffix] for kind in LOCO_SPLITS]
            results[f"auc_spro_{suffix}"] = _mean_of(parts)
            for kind, part in zip(LOCO_SPLITS, parts):
                results[f"auc_spro_{suffix}_{kind}"] = part
        return results

    def compute(self) -> MetricTable:
        """Per-class, class-mean and pooled metrics as a long-format ``MetricTable``."""
        classes = self.class_names
        if not classes:
            raise ValueError("no data: call update() with at least one batch before compute()")
        rows: list[MetricRow] = []
        per_class = {name: self._metrics([name], f"class {name!r}") for name in classes}
        for name, results in per_class.items():
            rows += [MetricRow(name, metric, value, note) for metric, (value, note) in results.items()]
        metrics = list(dict.fromkeys(metric for results in per_class.values() for metric in results))
        for metric in metrics:
            rows.append(class_mean_row(metric, per_class))
        # one class: pooling changes nothing, so reuse its results
        pooled = per_class[classes[0]] if len(classes) == 1 else self._metrics(classes, "the pooled test set")
        rows += [MetricRow(POOLED, metric, value, note) for metric, (value, note) in pooled.items()]
        return MetricTable(tuple(rows), METRIC_VERSION, METRIC_IMPLEMENTATION, {AUPIMO: self._aupimo.per_image()})
