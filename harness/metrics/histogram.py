"""Sparse integer histogram of pixel scores: the mergeable state behind every pixel metric.

One row per occupied score bin, in increasing score order, with int64 columns
(normal pixels, anomalous pixels, PRO weight, sPRO weight). Weights are fixed-point: every region
contributes exactly ``WEIGHT_ONE`` in total (see ``regions.py``). Because every column is an
integer sum, adding batches or merging shards in any order or grouping gives bit-identical rows.

Bins are float32 keys (``score_keys.py``) with their lowest ``level`` bits dropped. A histogram
starts at level 0 (one bin per distinct float32 score: exact) and raises its level only when it
would hold more than ``max_bins`` bins; the level it ends at is the smallest one at which the whole
data fits, a function of the data alone, so sharding cannot change it either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NORMAL, ANOMALOUS, PRO_WEIGHT, SPRO_WEIGHT = range(4)
N_COLUMNS = 4


def _empty_keys() -> np.ndarray:
    return np.zeros(0, dtype=np.uint32)


def _empty_columns() -> np.ndarray:
    return np.zeros((0, N_COLUMNS), dtype=np.int64)


@dataclass
class ScoreHistogram:
    """Occupied bins (sorted unique uint32 keys at ``level``) and their int64 column sums."""

    level: int = 0
    keys: np.ndarray = field(default_factory=_empty_keys)
    columns: np.ndarray = field(default_factory=_empty_columns)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_sorted_keys(cls, keys: np.ndarray, columns: np.ndarray, level: int) -> "ScoreHistogram":
        """Histogram from non-decreasing keys (duplicates allowed) and their per-key columns."""
        keys = np.asarray(keys, dtype=np.uint32)
        if len(keys) > 1 and not np.all(keys[1:] != keys[:-1]):
            starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
            return cls(level, keys[starts], np.add.reduceat(columns, starts, axis=0))
        return cls(level, keys, np.asarray(columns, dtype=np.int64))

    def at_level(self, level: int) -> "ScoreHistogram":
        """The same counts with bins widened to ``level`` (>= the current level)."""
        if level < self.level:
            raise ValueError(f"cannot refine a histogram from level {self.level} to {level}")
        if level == self.level:
            return self
        return ScoreHistogram.from_sorted_keys(self.keys >> np.uint32(level - self.level), self.columns, level)

    def within_budget(self, max_bins: int) -> "ScoreHistogram":
        """The histogram at the smallest level (>= current) holding at most ``max_bins`` bins."""
        if len(self.keys) <= max_bins:
            return self
        shift = 1
        while np.count_nonzero(np.diff(self.keys >> np.uint32(shift))) + 1 > max_bins:
            shift += 1
        return self.at_level(self.level + shift)

    def merged(self, other: "ScoreHistogram") -> "ScoreHistogram":
        """Bin-wise sum of two histograms (new object), at the coarser of the two levels."""
        level = max(self.level, other.level)
        a, b = self.at_level(level), other.at_level(level)
        if len(b) > len(a):
            a, b = b, a
        if len(b) == 0:
            return ScoreHistogram(level, a.keys.copy(), a.columns.copy())
        where = np.searchsorted(a.keys, b.keys)
        hit = where < len(a.keys)
        hit[hit] = a.keys[where[hit]] == b.keys[hit]
        columns = a.columns.copy()
        columns[where[hit]] += b.columns[hit]
        new = ~hit
        if not new.any():
            return ScoreHistogram(level, a.keys.copy(), columns)
        keys = np.insert(a.keys, where[new], b.keys[new])
        columns = np.insert(columns, where[new], b.columns[new], axis=0)
        return ScoreHistogram(level, keys, columns)

    def descending(self) -> np.ndarray:
        """Columns from the highest score bin to the lowest (threshold sweep order)."""
        return self.columns[::-1]


def merge_all(histograms: list[ScoreHistogram]) -> ScoreHistogram:
    """Sum of several histograms (empty list -> empty histogram)."""
    total = ScoreHistogram()
    for histogram in histograms:
        total = total.merged(histogram)
    return total
