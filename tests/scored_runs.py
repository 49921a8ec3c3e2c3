"""A result-store run whose stored metrics are computed from its own scores and maps (tests share it)."""

from __future__ import annotations

import numpy as np

from harness.metrics import MetricAccumulator
from harness.results import ResultStore, TrialResult


def write_scored_run(store: ResultStore, run_id: str, images, scores: np.ndarray, *, method: str, preset: str,
                     dataset: str, seed: int = 0, method_config: dict, sweep: str, map_scale: float,
                     record_method_config: bool = True) -> None:
    """images: (sample_id, class, label) triples; 4x4 maps with a square mask on anomalous images,
    plus ``map_scale`` x the image score, so pixel metrics are exact and depend on the scores."""
    labels = np.array([label for _, _, label in images])
    masks = np.zeros((len(images), 4, 4), dtype=bool)
    masks[labels == 1, 1:3, 1:3] = True
    maps = (masks * 0.5 + scores[:, None, None] * map_scale).astype(np.float16)
    accumulator = MetricAccumulator()
    accumulator.update(scores, labels, maps, masks, [c for _, c, _ in images], sample_ids=[s for s, _, _ in images])
    metrics = [{"class_name": r.class_name, "metric": r.metric, "value": r.value} for r in accumulator.compute().rows]
    config = {"method": method, "preset": preset, "dataset": dataset, "data_root": None, "seed": seed,
              "method_config": method_config}
    run = {"run_id": run_id, "sweep": sweep, "method": method, "preset": preset, "dataset": dataset, "seed": seed,
           "config_json": config}
    if record_method_config:
        run["method_config_json"] = method_config
    rows = [{"sample_id": s, "class_name": c, "defect_type": "good" if label == 0 else "crack", "label": label,
             "score": float(score)} for (s, c, label), score in zip(images, scores)]
    store.write_run(TrialResult(run, metrics, rows, []), provenance=False)
