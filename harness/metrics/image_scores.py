"""Image-level metrics (I-AUROC, I-AP, I-F1max; spec section 5.1) from raw per-image records.

One (sample_id, score, label, defect_type) record per image is kept: that is one number per image,
and sorting the records canonically before computing makes the result independent of the order
in which shards arrived. Scores are compared as float64, exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from harness.metrics import curves


class ImageRecord(NamedTuple):
    sample_id: str
    score: float
    label: int
    defect_type: str


def canonical(records: list[ImageRecord]) -> list[ImageRecord]:
    """Records sorted by sample id (then score, label, defect type); duplicate ids are an error."""
    ordered = sorted(records)
    for before, after in zip(ordered, ordered[1:]):
        if before.sample_id and before.sample_id == after.sample_id:
            raise ValueError(
                f"sample_id {before.sample_id!r} was scored twice: shards must not overlap "
                "(shard the test set by sample_id without padding)"
            )
    return ordered


def image_metrics(records: list[ImageRecord], scope: str) -> dict[str, tuple[float | None, str]]:
    """{i_auroc, i_ap, i_f1max: (value or None, note)}; ``scope`` names the images in notes."""
    records = canonical(records)
    labels = np.array([r.label for r in records], dtype=np.int64)
    n_anomalous = int(labels.sum())
    n_normal = len(labels) - n_anomalous
    if n_anomalous == 0 or n_normal == 0:
        missing = "anomalous" if n_anomalous == 0 else "normal"
        reason = f"undefined: no {missing} image in {scope} ({len(labels)} images)"
        return {name: (None, reason) for name in ("i_auroc", "i_ap", "i_f1max")}
    scores = np.array([r.score for r in records], dtype=np.float64)
    _, bins = np.unique(scores, return_inverse=True)
    anomalous = np.bincount(bins, weights=labels, minlength=bins.max() + 1).astype(np.int64)[::-1]
    everything = np.bincount(bins, minlength=bins.max() + 1)[::-1]
    normal = everything - anomalous
    return {
        "i_auroc": (curves.roc_auc(normal, anomalous), ""),
        "i_ap": (curves.average_precision(normal, anomalous), ""),
        "i_f1max": (curves.f1_max(normal, anomalous), ""),
    }
