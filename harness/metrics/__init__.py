"""Exact, streaming, mergeable anomaly-detection metrics (issue #3; spec sections 4.3, 5, 7.4-7.7).

Public API:
- ``MetricAccumulator``: ``update`` batch by batch, ``merge`` across workers, ``compute`` a table;
- ``evaluate(image_scores, image_labels, anomaly_maps, masks)``: one call, one class;
- ``AupimoAccumulator``: AUPIMO per class with each anomalous image's value (anomalib's PIMO);
- ``MetricTable`` / ``MetricRow``: long-format results (class, "mean", "pooled");
- ``METRIC_VERSION`` / ``METRIC_IMPLEMENTATION``: recorded next to every number;
- ``load_defects_config``: MVTec LOCO saturation settings.
Definitions, implementation and tolerances: docs/metrics.md.
"""

from harness.metrics.accumulator import DEFAULT_MAX_BINS, MetricAccumulator
from harness.metrics.aupimo import AupimoAccumulator
from harness.metrics.defects import DefectSaturation, load_defects_config
from harness.metrics.evaluate import evaluate
from harness.metrics.table import (
    AUPIMO,
    AUPIMO_FPR_BOUNDS,
    AUPRO_LIMITS,
    IMAGE_METRICS,
    MEAN,
    PIXEL_METRICS,
    POOLED,
    SPRO_LIMITS,
    STANDARD_METRICS,
    MetricRow,
    MetricTable,
    loco_metric_names,
)
from harness.metrics.version import METRIC_IMPLEMENTATION, METRIC_VERSION

__all__ = [
    "AUPIMO",
    "AUPIMO_FPR_BOUNDS",
    "AUPRO_LIMITS",
    "AupimoAccumulator",
    "DEFAULT_MAX_BINS",
    "DefectSaturation",
    "IMAGE_METRICS",
    "MEAN",
    "METRIC_IMPLEMENTATION",
    "METRIC_VERSION",
    "MetricAccumulator",
    "MetricRow",
    "MetricTable",
    "PIXEL_METRICS",
    "POOLED",
    "SPRO_LIMITS",
    "STANDARD_METRICS",
    "evaluate",
    "load_defects_config",
    "loco_metric_names",
]
