"""The frozen-feature cache: its cost at MVTec AD scale (``scale``) and its speed-up (``wall-time``).

``scale``: for each paper preset's backbone, levels and image size (random weights, synthetic
images), peak memory and disk per image of three ways of caching one split: BEFORE (the old
path: every level of every image in float32, concatenated in memory, then saved) and AFTER
(streamed into pre-allocated files, float32 and float16). Each arm runs in a fresh process, so its
peak resident set (``resource.getrusage``) is its own; ``tracemalloc`` gives the numpy share.
Measured on ``--images`` images and extrapolated to MVTec AD's 5,354 (the old path holds the
float32 set twice at its peak: the batches and their concatenation; the new one holds one batch).

``wall-time``: four UniLEAD cpu trainings (the routing sweep's worth) without and with the cache.

  .venv/bin/python benchmarks/bench_feature_cache.py scale [--images 64] [--methods uniad rd4ad ...]
  .venv/bin/python benchmarks/bench_feature_cache.py wall-time [--dataset embedded] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROUTING_MODES = ("softmax", "gumbel_top1", "top1", "first")
MVTEC_AD_IMAGES = 5354
ARMS = ("before: in memory, float32", "after: streamed, float32", "after: streamed, float16",
        "after: at the neck's grid, float32", "after: at the neck's grid, float16")
NECK_ARMS = (3, 4)  # only for the UniAD family, whose neck reads every level at one grid
DEFAULT_METHODS = ("uniad", "moead", "unilead", "rd4ad", "patchcore", "dinomaly")


# ------------------------------------------------------------------------------------- scale


def paper_feature_specs(method_names) -> dict[tuple, list[str]]:
    """(backbone, levels, image size) -> the methods whose paper preset reads it."""
    import methods

    specs: dict[tuple, list[str]] = {}
    for name in method_names:
        if methods.get(name).input_kind != "features":
            continue
        c = methods.preset_config(name, "paper", {})
        specs.setdefault((c["backbone"], tuple(c["backbone_levels"]), int(c["image_size"])), []).append(name)
    return specs


def synthetic_samples(folder: Path, count: int, size: int = 256) -> list:
    """``count`` samples of one noise image (random weights: the content does not change the sizes)."""
    from PIL import Image

    from harness.data.sample import Sample

    path = folder / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return [Sample("synthetic", "noise", "train", "good", f"noise/train/good/{i:04d}", 0, {"rgb": path}) for i in range(count)]


def before_in_memory(samples, backbone, image_size: int, folder: Path) -> None:
    """The cache's write path before issue 14: all levels concatenated in memory, then saved."""
    from harness.training.feature_cache import feature_batches

    outputs = [[] for _ in backbone.channels]
    for levels in feature_batches(samples, backbone, image_size):
        for store, level in zip(outputs, levels):
            store.append(np.ascontiguousarray(level))
    for i, level in enumerate([np.concatenate(store) for store in outputs]):
        np.save(folder / f"level{i}.npy", level)


def after_streamed(samples, backbone, image_size: int, folder: Path, dtype: str, at_neck_grid: bool) -> None:
    from harness.training.feature_cache import FeatureCache, FeatureKey, cached_features

    align = neck_alignment(backbone) if at_neck_grid else None
    key = FeatureKey("synthetic", "bench", "bench", backbone.weights_id, tuple(backbone.levels), image_size, dtype,
                     alignment=align.name if align else "")
    cached_features(key, "train", samples, backbone, cache=FeatureCache(folder), align=align)


def neck_alignment(backbone):
    """The UniAD family's neck as a LevelAlignment: every level at the coarsest grid, split back per level."""
    import torch

    from harness.training.feature_cache import LevelAlignment
    from methods.blocks.neck import MultiLevelFeatureNeck

    neck = MultiLevelFeatureNeck(backbone.channels, backbone.reductions)
    return LevelAlignment("neck grid", lambda levels: list(torch.split(neck(levels), neck.channels, dim=1)))


def reads_one_grid(method_names) -> bool:
    import methods
    from methods.reconstruction import TokenReconstructionMethod

    return all(issubclass(methods.get(name), TokenReconstructionMethod) for name in method_names)


def measure_arm(backbone_name: str, levels: list[int], image_size: int, images: int, arm: int) -> dict:
    """One arm in this (fresh) process: peak RSS and numpy peak while caching, and bytes written."""
    import torch

    from harness.backbones import create_backbone
    from harness.training.feature_cache import EXTRACTION_BATCH

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    with tempfile.TemporaryDirectory() as scratch:
        samples = synthetic_samples(Path(scratch), images)
        backbone = create_backbone(backbone_name, levels, weights="random")
        with torch.inference_mode():  # one batch's activations in the baseline, as in every arm
            backbone(torch.zeros(EXTRACTION_BATCH, 3, image_size, image_size))
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = Path(scratch) / "out"
        out.mkdir()
        import harness.training.feature_cache, methods.blocks.neck  # noqa: E401, F401  imported outside the traced part
        started = time.time()
        tracemalloc.start()
        if arm == 0:
            before_in_memory(samples, backbone, image_size, out)
        else:
            after_streamed(samples, backbone, image_size, out, ("float32", "float16")[(arm - 1) % 2], at_neck_grid=arm in NECK_ARMS)
        numpy_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        disk = sum(p.stat().st_size for p in out.rglob("level*.npy"))
    return {"baseline": baseline, "peak": peak, "numpy_peak": numpy_peak, "disk": disk, "seconds": time.time() - started}


def run_arm_in_child(backbone_name: str, levels, image_size: int, images: int, arm: int) -> dict:
    command = [sys.executable, __file__, "_arm", json.dumps([backbone_name, list(levels), image_size, images, arm])]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"arm {ARMS[arm]!r} of {backbone_name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def at_mvtec_scale(result: dict, images: int, arm: int) -> tuple[float, float]:
    """(peak RSS, disk) extrapolated to MVTec AD: the old path's peak grows by two float32 copies per image."""
    per_image = result["disk"] / images
    growth = 2 * per_image * (MVTEC_AD_IMAGES - images) if arm == 0 else 0.0
    return result["peak"] + growth, per_image * MVTEC_AD_IMAGES


def scale(args) -> None:
    console = Console(width=200)
    table = Table(title=f"feature cache of one split, measured on {args.images} synthetic images, extrapolated to MVTec AD ({MVTEC_AD_IMAGES})")
    for column in ("paper presets", "backbone, levels @ size", "arm", "peak RSS (MB)", "of which over baseline",
                   "numpy peak (MB)", "disk / image (KB)", f"peak RSS at {MVTEC_AD_IMAGES} (GB)", f"disk at {MVTEC_AD_IMAGES} (GB)", "s"):
        table.add_column(column, justify="left" if column in ("paper presets", "backbone, levels @ size", "arm") else "right")
    rows = []
    for (backbone_name, levels, size), names in paper_feature_specs(args.methods).items():
        for arm in [a for a in range(len(ARMS)) if a not in NECK_ARMS or reads_one_grid(names)]:
            result = run_arm_in_child(backbone_name, levels, size, args.images, arm)
            peak_at_scale, disk_at_scale = at_mvtec_scale(result, args.images, arm)
            rows.append({"methods": names, "backbone": backbone_name, "levels": list(levels), "image_size": size, "arm": ARMS[arm],
                         **result, "peak_at_mvtec_ad": peak_at_scale, "disk_at_mvtec_ad": disk_at_scale})
            table.add_row(", ".join(names), f"{backbone_name} {list(levels)} @ {size}", ARMS[arm], f"{result['peak'] / 1e6:.0f}",
                          f"{(result['peak'] - result['baseline']) / 1e6:.0f}", f"{result['numpy_peak'] / 1e6:.1f}",
                          f"{result['disk'] / args.images / 1e3:.1f}", f"{peak_at_scale / 1e9:.2f}", f"{disk_at_scale / 1e9:.2f}",
                          f"{result['seconds']:.1f}")
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


# --------------------------------------------------------------------------------- wall time


def four_trainings(dataset: str, data_root, epochs: int | None, use_cache: bool) -> float:
    from harness.training.loop import run_training

    started = time.time()
    for routing in ROUTING_MODES:
        overrides = {"routing": routing}
        if epochs is not None:
            overrides["epochs"] = epochs
        run_training(
            {"method": "unilead", "preset": "cpu", "dataset": dataset, "data_root": data_root, "method_config": overrides},
            use_feature_cache=use_cache,
        )
    return time.time() - started


def wall_time(args) -> None:
    console = Console()
    from harness.data import load_dataset

    load_dataset(args.dataset, args.data_root)  # generate the embedded dataset outside the timed arms
    with tempfile.TemporaryDirectory() as cache:
        os.environ["HARNESS_FEATURE_CACHE"] = cache  # a cold cache for this measurement only
        uncached = four_trainings(args.dataset, args.data_root, args.epochs, use_cache=False)
        cached = four_trainings(args.dataset, args.data_root, args.epochs, use_cache=True)
    table = Table(title="four UniLEAD trainings (softmax, gumbel_top1, top1, first)")
    table.add_column("arm")
    table.add_column("wall time (s)", justify="right")
    table.add_row("no feature cache", f"{uncached:.1f}")
    table.add_row("feature cache (cold start: first run computes)", f"{cached:.1f}")
    console.print(table)
    console.print(f"speed-up from the feature cache: [bold]{uncached / cached:.2f}x[/bold] (uncached / cached)")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_arm":  # one arm, in its own process (see run_arm_in_child)
        print(json.dumps(measure_arm(*json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    scale_parser = commands.add_parser("scale", help="peak memory and disk per image, before and after, for the paper presets")
    scale_parser.add_argument("--images", type=int, default=64, help="images measured (the numbers are extrapolated per image)")
    scale_parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="methods whose paper presets are measured")
    scale_parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    wall_parser = commands.add_parser("wall-time", help="four UniLEAD cpu trainings without and with the cache")
    wall_parser.add_argument("--dataset", default="embedded")
    wall_parser.add_argument("--data-root", default=None)
    wall_parser.add_argument("--epochs", type=int, default=None, help="override the cpu preset's epochs (default: the preset's)")
    args = parser.parse_args()
    {"scale": scale, "wall-time": wall_time}[args.command](args)


if __name__ == "__main__":
    main()
