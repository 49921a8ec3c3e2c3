"""One-call evaluation of a single test set held in memory (issue #3, deliverable 1)."""

from __future__ import annotations

from typing import Any, Sequence

from harness.metrics.accumulator import MetricAccumulator
from harness.metrics.batch_inputs import to_numpy
from harness.metrics.table import AUPIMO, STANDARD_METRICS

_CLASS = "all"


def evaluate(
    image_scores: Any,
    image_labels: Any,
    anomaly_maps: Any,
    masks: Any,
    *,
    sample_ids: Sequence[str] | None = None,
    batch_size: int = 16,
) -> dict[str, float | None]:
    """{i_auroc, i_ap, i_f1max, p_auroc, p_ap, p_f1max, aupro, aupro_05, aupro_01, aupimo} as fractions.

    Treats all images as one class; a metric that is undefined (e.g. no anomalous image) is None.
    Maps are fed ``batch_size`` at a time so memory stays that of the accumulator.
    """
    scores = to_numpy(image_scores).reshape(-1)
    labels = to_numpy(image_labels).reshape(-1)
    maps = to_numpy(anomaly_maps) if not isinstance(anomaly_maps, (list, tuple)) else list(anomaly_maps)
    mask_stack = None if masks is None else (to_numpy(masks) if not isinstance(masks, (list, tuple)) else list(masks))
    accumulator = MetricAccumulator()
    for start in range(0, len(scores), batch_size):
        chunk = slice(start, start + batch_size)
        chunk_masks = None if mask_stack is None else mask_stack[chunk]
        chunk_ids = None if sample_ids is None else list(sample_ids)[chunk]
        accumulator.update(scores[chunk], labels[chunk], maps[chunk], chunk_masks, _CLASS, sample_ids=chunk_ids)
    values = accumulator.compute().for_class(_CLASS)
    return {name: values[name] for name in (*STANDARD_METRICS, AUPIMO)}


__all__ = ["evaluate"]
