"""Neighbour-masked attention: three formulations of the same function, timed side by side.

At UniAD's shapes (196 tokens of a 14x14 grid, width 256, 8 heads, the 7x7 neighbour mask; spec
section 1.1) on one CPU thread, for forward (eval) and forward + backward (train, dropout off so
the outputs can be compared):
- matmul:  QK^T, then the scale, then an out-of-place masked_fill (the harness's first version);
- baddbmm: as PyTorch's nn.MultiheadAttention does it for UniAD: q pre-scaled, the additive float
  mask added inside one batched matmul (torch.baddbmm);
- sdpa:    torch.nn.functional.scaled_dot_product_attention with the additive mask.
The implementations are timed interleaved (round robin, the minimum of the rounds kept) so that a
busy machine slows all of them alike. Prints times, ratios to baddbmm and the largest output and
gradient differences from it.

    .venv/bin/python benchmarks/bench_attention.py [--batches 8 16] [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import time

import torch

from methods.blocks.attention import ATTENTION_IMPLS, NeighbourMaskedAttention, neighbour_mask

REFERENCE = "baddbmm"


def build(impl: str, dim: int, heads: int) -> NeighbourMaskedAttention:
    torch.manual_seed(0)
    return NeighbourMaskedAttention(dim, heads, dropout=0.0, impl=impl)


def step(module: NeighbourMaskedAttention, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, backward: bool):
    """One call as UniAD makes it: query = key = x + pos, value = x; optionally backward of the sum."""
    if not backward:
        with torch.no_grad():
            return module(x + pos, x + pos, x, mask), None
    x = x.detach().requires_grad_(True)
    out = module(x + pos, x + pos, x, mask)
    out.sum().backward()
    return out.detach(), x.grad


def time_round(fn, seconds: float) -> float:
    """Mean seconds per call of ``fn`` over about ``seconds``."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--seconds", type=float, default=1.5, help="per implementation per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dim, heads, grid, window = 256, 8, 14, 7
    mask = neighbour_mask(grid, grid, window)
    modules = {impl: build(impl, dim, heads) for impl in ATTENTION_IMPLS}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {grid * grid} tokens, dim {dim}, {heads} heads, {window}x{window} mask")
    print(f"{'batch':>5} {'pass':<16} {'impl':<8} {'ms':>8} {'x baddbmm':>9} {'max |out diff|':>15} {'max |grad diff|':>16}")
    for batch in args.batches:
        torch.manual_seed(1)
        x = torch.randn(batch, grid * grid, dim)
        pos = torch.rand(1, grid * grid, dim)
        for backward in (False, True):
            results = {impl: step(m, x, pos, mask, backward) for impl, m in modules.items()}
            best = {impl: float("inf") for impl in modules}
            for _ in range(args.rounds):
                for impl, m in modules.items():
                    best[impl] = min(best[impl], time_round(lambda: step(m, x, pos, mask, backward), args.seconds))
            ref_out, ref_grad = results[REFERENCE]
            for impl in modules:
                out, grad = results[impl]
                out_diff = (out - ref_out).abs().max().item()
                grad_diff = "" if grad is None else f"{(grad - ref_grad).abs().max().item():.2e}"
                name = "forward+backward" if backward else "forward"
                print(f"{batch:>5} {name:<16} {impl:<8} {1e3 * best[impl]:>8.2f} {best[impl] / best[REFERENCE]:>9.3f} {out_diff:>15.2e} {grad_diff:>16}")


if __name__ == "__main__":
    main()
