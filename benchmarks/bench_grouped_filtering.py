"""UniMMAD's grouped dynamic filtering against each sample's experts run one by one (issue 10 item 4).

The cpu preset's C-MoE widths (64 channels, 32 leaders over 8 bases, top-2) at its three scales
(32, 16 and 8 px at 128 px input), batch 16 (pairs), in eval mode with the cached leader kernels:
``grouped`` mixes each pair's two routed kernels by their scores and applies every pair's (fixed,
mixed) kernels in one grouped convolution; ``per_sample`` runs the fixed and each top-2 expert per pair.
Prints the max abs difference of the C-MoE outputs (tolerance 1e-4 in float32) and the speed ratio.

    .venv/bin/python benchmarks/bench_grouped_filtering.py [--batch 16] [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import methods
from methods.blocks.cmoe import CrossMoE

TOLERANCE = 1e-4


def build_moes(config: dict) -> list[tuple[CrossMoE, int, int]]:
    """One C-MoE per scale at the cpu preset's widths: (module, level channels, map side)."""
    channels, strides = (24, 40, 112), (4, 8, 16)
    moes = []
    for c, s in zip(channels, strides):
        moe = CrossMoE(c, config["moe_width"], config["base_experts"], config["leaders"], config["top_k"], config["kernel_sizes"]).eval()
        moes.append((moe, c, config["image_size"] // s))
    return moes


def run(moes, inputs, mode: str) -> list[torch.Tensor]:
    for moe, _, _ in moes:
        moe.set_filtering(mode)
    with torch.no_grad():
        return [moe(g, u)[0] for (moe, _, _), (g, u) in zip(moes, inputs)]


def median_times(moes, inputs, repeats: int) -> dict[str, float]:
    """Median seconds per batch of each mode, the two modes interleaved so that load from other jobs hits both alike."""
    times = {"per_sample": [], "grouped": []}
    for _ in range(repeats):
        for mode in times:
            started = time.perf_counter()
            run(moes, inputs, mode)
            times[mode].append(time.perf_counter() - started)
    return {mode: statistics.median(values) for mode, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = methods.preset_config("unimmad", "cpu")
    moes = build_moes(config)
    inputs = [(torch.randn(args.batch, c, side, side), torch.randn(args.batch, c, side, side)) for _, c, side in moes]
    reference = run(moes, inputs, "per_sample")  # also warms up and fills the leader-kernel caches
    outputs = run(moes, inputs, "grouped")
    seconds = median_times(moes, inputs, args.repeats)
    per_sample_s, grouped_s = seconds["per_sample"], seconds["grouped"]
    diff = max(float((a - b).abs().max()) for a, b in zip(outputs, reference))
    print(f"C-MoE x3 scales, width {config['moe_width']}, {config['leaders']} leaders over {config['base_experts']} bases, "
          f"top-{config['top_k']}, batch {args.batch}, {args.threads} threads")
    print(f"per-sample experts one by one: {per_sample_s * 1000:.1f} ms per batch (median of {args.repeats})")
    print(f"grouped dynamic filtering:     {grouped_s * 1000:.1f} ms per batch (median of {args.repeats})")
    print(f"speed ratio: {per_sample_s / grouped_s:.2f}x; max abs difference {diff:.2e} (tolerance {TOLERANCE:g}: "
          f"{'within' if diff <= TOLERANCE else 'OUTSIDE'})")


if __name__ == "__main__":
    main()
