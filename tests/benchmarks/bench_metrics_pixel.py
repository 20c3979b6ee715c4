"""Benchmark: images per second of each pixel metric on the CPU, batched vs one image at a time.

Each image is scored against its own reference. "batched" scores the whole set in one call (the
metric's chunked, vectorised path); "one by one" calls the metric once per image, as a per-image
loop would. Ratio = batched / one by one (above 1: batching pays).

    python tests/benchmarks/bench_metrics_pixel.py [--repeats 5] [--sizes 64,512]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from loralab.core.metrics import pixel

METRICS = {
    "mse": pixel.mse,
    "psnr_db": pixel.psnr_db,
    "ssim": pixel.ssim,
    "ms_ssim": pixel.ms_ssim,
    "histogram (3 methods)": pixel.histogram_similarity,
    "phash_sim": lambda x, y: pixel.hash_similarity(x, y, "phash"),
    "dhash_sim": lambda x, y: pixel.hash_similarity(x, y, "dhash"),
    "ahash_sim": lambda x, y: pixel.hash_similarity(x, y, "ahash"),
    "color_w1_sim": pixel.color_w1_similarity,
}
IMAGES_PER_SIZE = {64: 64, 512: 8}


def median_seconds(runs: dict, repeats: int) -> dict:
    """Median seconds of each callable; runs interleaved, alternating which goes first, so machine
    load and cache effects hit both sides alike."""
    for fn in runs.values():
        fn()  # warm-up
    times = {label: [] for label in runs}
    for r in range(repeats):
        for label, fn in list(runs.items())[::1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def bench(sizes: list[int], repeats: int) -> list[tuple]:
    rows = []
    for size in sizes:
        n = IMAGES_PER_SIZE.get(size, 8)
        g = torch.Generator().manual_seed(0)
        images = torch.rand(n, size, size, 3, generator=g)
        reference = (images + 0.1 * torch.randn(n, size, size, 3, generator=g)).clamp(0, 1)
        for name, metric in METRICS.items():
            if name == "ms_ssim" and size < pixel.MS_SSIM_MIN_SIZE:
                continue
            t = median_seconds({
                "batched": lambda m=metric, x=images, y=reference: m(x, y),
                "single": lambda m=metric, x=images, y=reference: [m(x[i:i + 1], y[i:i + 1]) for i in range(len(x))],
            }, repeats)
            rows.append((name, size, n, n / t["batched"], n / t["single"], t["single"] / t["batched"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="64,512")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench([int(s) for s in args.sizes.split(",")], args.repeats)
    print(f"Pixel metrics on the CPU, images/second, median of {args.repeats} "
          f"(torch threads: {torch.get_num_threads()}); ms_ssim needs >= {pixel.MS_SSIM_MIN_SIZE} px")
    print(f"{'metric':22} {'size':>5} {'n':>4} {'batched':>10} {'one by one':>11} {'ratio':>7}")
    for name, size, n, batched, single, ratio in rows:
        print(f"{name:22} {size:5d} {n:4d} {batched:10.1f} {single:11.1f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
