"""Benchmark: harness.metrics pixel metrics against scikit-learn and the sort-based AUPRO reference.

Synthetic test set (issue #3): 200 anomaly maps of 256x256, half of them with blob-shaped
defect masks. Ours is fed 16 maps at a time as the training loop would; the baseline runs
roc_auc_score + average_precision_score + precision_recall_curve (for F1-max) over all pixels
plus the plain sort-based AUPRO reference, in one run. Prints times, the speed ratio, peak
memory (tracemalloc, in a separate pass so it does not slow the timings) and the largest
difference between the two results.

    .venv/bin/python benchmarks/bench_metrics.py [--images 200] [--size 256] [--dtype float32 float16]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

import numpy as np
from scipy import ndimage

import harness  # noqa: F401  (applies the torchvision shim, harmless here)
from harness.metrics import MetricAccumulator
from harness.metrics.reference import reference_aupro, sklearn_pixel_metrics

PIXEL_METRICS = ("p_auroc", "p_ap", "p_f1max", "aupro", "aupro_05", "aupro_01")


def synthetic_test_set(n_images: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 maps (smooth noise plus a response on each blob) and bool blob masks."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n_images, size, size), dtype=np.float32)
    masks = np.zeros((n_images, size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n_images):
        if i % 2:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(0.1, 0.9, 2) * size
                ry, rx = rng.uniform(0.02, 0.12, 2) * size
                wobble = 1 + 0.3 * ndimage.gaussian_filter(rng.normal(size=(size, size)), 8) * 8
                masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < wobble
        noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), 3) * 3
        response = ndimage.gaussian_filter(masks[i].astype(np.float64), 4) * rng.uniform(0.5, 2.0)
        maps[i] = np.abs(noise + response + 0.1 * rng.normal(size=(size, size)))
    return maps, masks


def ours(maps: np.ndarray, masks: np.ndarray, batch: int = 16) -> dict[str, float]:
    accumulator = MetricAccumulator()
    for start in range(0, len(maps), batch):
        chunk = slice(start, start + batch)
        labels = masks[chunk].reshape(len(maps[chunk]), -1).any(axis=1).astype(int)
        scores = maps[chunk].reshape(len(labels), -1).max(axis=1)
        accumulator.update(scores, labels, maps[chunk], masks[chunk], "synthetic")
    return {k: v for k, v in accumulator.compute().for_class("synthetic").items() if k in PIXEL_METRICS}


def baseline(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    results = sklearn_pixel_metrics(maps, masks)
    results.update(zip(("aupro", "aupro_05", "aupro_01"), reference_aupro(maps, masks)))
    return results


def timed(function, *args) -> tuple[dict, float]:
    gc.collect()
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def peak_bytes(function, *args) -> int:
    gc.collect()
    tracemalloc.start()
    function(*args)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dtype", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    maps32, masks = synthetic_test_set(args.images, args.size)
    float32_bytes = maps32.nbytes
    table = Table(title=f"pixel metrics, {args.images} maps of {args.size}x{args.size}, fed 16 at a time")
    for column in ("maps", "ours s", "sklearn+ref s", "speed-up", "ours peak MB", "peak / maps f32", "baseline peak MB", "max |diff| (metric)"):
        table.add_column(column, justify="right")
    for dtype in args.dtype:
        maps = maps32.astype(dtype)
        mine, mine_s = timed(ours, maps, masks)
        theirs, theirs_s = timed(baseline, maps, masks)
        mine_peak, theirs_peak = peak_bytes(ours, maps, masks), peak_bytes(baseline, maps, masks)
        diff, worst = max((abs(mine[k] - theirs[k]), k) for k in PIXEL_METRICS)
        table.add_row(
            dtype, f"{mine_s:.2f}", f"{theirs_s:.2f}", f"{theirs_s / mine_s:.1f}x",
            f"{mine_peak / 1e6:.1f}", f"{mine_peak / float32_bytes:.2f}", f"{theirs_peak / 1e6:.1f}", f"{diff:.1e} ({worst})",
        )
    console.print(table)
    console.print(f"maps' float32 size: {float32_bytes / 1e6:.1f} MB; peak = tracemalloc peak while computing")


if __name__ == "__main__":
    main()
