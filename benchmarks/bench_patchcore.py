"""PatchCore's bank building (approximate greedy coreset) and scoring at a fraction of MVTec AD's size.

MVTec AD at 224 px with one bank for all classes (spec 10.8): 2,845,136 training patches of 1024
dims (11.65 GB as float32) before the coreset, int(0.1 * N) = 284,513 greedy iterations, a bank of
284,513 vectors (1.17 GB), and 1,725 test images of 784 queries each. Features here are synthetic
(random normal); only sizes matter for time and memory.

--scale s builds a bank from s * 2,845,136 patches and scores --images test images against it, on
faiss (IndexFlatL2) and on the torch fallback, each exact. The full-size figures printed last are an
EXTRAPOLATION, labelled as such: the coreset costs N x iterations = 0.1 N^2 distance rows, so time
grows as 1/s^2; a query's flat search grows with the bank, so scoring time as 1/s per image.

  .venv/bin/python benchmarks/bench_patchcore.py                # s = 0.01: seconds
  .venv/bin/python benchmarks/bench_patchcore.py --scale 0.05    # about 3 minutes on one core

The N^2 law ignores caches: the 128-d projection outgrows them as N grows, so extrapolations from
larger scales are the better guide (on our 2-core machine 0.01 gave 4.2 h for the coreset, 0.05 15 h).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from methods.patchcore import ExactSearch, approximate_greedy_coreset

MVTEC_PATCHES = 2_845_136  # 3,629 training images x 28 x 28
MVTEC_TEST_IMAGES = 1_725
PATCHES_PER_IMAGE = 784
DIMS = 1024


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build_bank(patches: int, ratio: float, seed: int) -> tuple[torch.Tensor, float]:
    features = torch.randn(patches, DIMS, generator=torch.Generator().manual_seed(seed))
    started = time.perf_counter()
    chosen = approximate_greedy_coreset(features, ratio, seed)
    return features[chosen].clone(), time.perf_counter() - started


def score(bank: torch.Tensor, images: int, backend: str) -> float:
    queries = torch.randn(images * PATCHES_PER_IMAGE, DIMS, generator=torch.Generator().manual_seed(1))
    search = ExactSearch(bank, backend)
    started = time.perf_counter()
    for part in queries.split(PATCHES_PER_IMAGE * 2):  # batches of 2 images, as the paper preset scores
        search.search(part, 1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=0.01, help="fraction of MVTec AD's 2,845,136 training patches")
    parser.add_argument("--ratio", type=float, default=0.1, help="coreset ratio p")
    parser.add_argument("--images", type=int, default=20, help="test images scored (784 queries each)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    patches = int(args.scale * MVTEC_PATCHES)
    print(f"measured: {patches:,} patches x {DIMS} (scale {args.scale}), coreset p = {args.ratio}, {args.threads} thread(s)")
    bank, build_s = build_bank(patches, args.ratio, seed=0)
    print(f"  coreset: {int(patches * args.ratio):,} iterations -> bank {len(bank):,} x {DIMS} "
          f"({bank.numel() * 4 / 1e6:.1f} MB) in {build_s:.1f} s; peak RSS {peak_rss_gb():.2f} GB")
    per_image = {}
    for backend in ("faiss", "torch"):
        try:
            seconds = score(bank, args.images, backend)
        except ImportError as error:
            print(f"  scoring ({backend}): unavailable ({error})")
            continue
        per_image[backend] = seconds / args.images
        print(f"  scoring ({backend}, exact): {args.images} images x {PATCHES_PER_IMAGE} queries in {seconds:.2f} s "
              f"({per_image[backend] * 1000:.1f} ms per image); peak RSS {peak_rss_gb():.2f} GB")

    full_bank = int(args.ratio * MVTEC_PATCHES)
    print(f"EXTRAPOLATED to MVTec AD, one bank for all classes ({MVTEC_PATCHES:,} patches; not measured):")
    print(f"  features before the coreset: {MVTEC_PATCHES * DIMS * 4 / 1e9:.2f} GB; "
          f"128-d projection {MVTEC_PATCHES * 128 * 4 / 1e9:.2f} GB; bank {full_bank:,} x {DIMS} = {full_bank * DIMS * 4 / 1e9:.2f} GB")
    print(f"  coreset: {full_bank:,} iterations, about {build_s / args.scale**2 / 3600:.1f} h at this machine's rate (time ~ N^2)")
    for backend, seconds in per_image.items():
        full = seconds / args.scale * MVTEC_TEST_IMAGES
        print(f"  scoring ({backend}): about {seconds / args.scale:.2f} s per image, {full / 3600:.1f} h for {MVTEC_TEST_IMAGES:,} test images")


if __name__ == "__main__":
    main()
