"""Benchmark: images per second of each model-based metric on the CPU, batched vs one image at a time.

Full-size architectures with random weights (no real weights offline; the cost is the same):
torchmetrics' FID Inception-v3 (2048 features), CLIP ViT-B/32 (transformers' CLIPConfig defaults)
and LPIPS v0.1 with the AlexNet trunk. "batched" runs the whole set in one batch, "one by one" with
batch size 1 (the same code path). Images counted are the network inputs: FID/KID embeds the
generated and the reference set, CLIP content similarity each image and its source; CLIP score
embeds the images (its one prompt once). Inception and CLIP resize every image to their input size
(299, 224 px), so the image size mostly changes the resize; LPIPS runs at the image size.

    python tests/benchmarks/bench_metrics_model.py [--repeats 3] [--sizes 64,512]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LORALAB_NO_PROGRESS", "1")

import torch  # noqa: E402

from loralab.core.metrics import clip, fid, lpips  # noqa: E402

IMAGES_PER_SIZE = {64: 16, 512: 8}


def random_inception() -> torch.nn.Module:
    from torchmetrics.image.fid import NoTrainInceptionV3

    class RandomInception(NoTrainInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random initial weights

    buffer = io.BytesIO()
    torch.save({}, buffer)
    buffer.seek(0)
    model = RandomInception("inception-v3-compat", ["2048"], buffer)
    model.num_features = 2048
    return model


def random_clip() -> clip.Clip:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from loralab.core.checkpoints import TOKENIZER

    return clip.Clip(CLIPModel(CLIPConfig()).eval(), CLIPImageProcessor(),
                     CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=77))


def random_lpips_alex():
    import lpips as lpips_package

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lpips_package.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()


def median_seconds(runs: dict, repeats: int) -> dict:
    """Median seconds of each callable, interleaved (alternating which goes first) so machine load
    hits both sides alike."""
    times = {label: [] for label in runs}
    for r in range(repeats):
        for label, fn in list(runs.items())[::1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def bench_size(size: int, n: int, inception, model: clip.Clip, alex, repeats: int) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    images, other = torch.rand(n, size, size, 3, generator=g), torch.rand(n, size, size, 3, generator=g)
    metrics = {  # name: (network inputs per call, fn(batch_size))
        "fid_kid (inception)": (2 * n, lambda b: fid.fid_kid(images, other, inception, batch_size=b)),
        "clip_score (ViT-B/32)": (n, lambda b: clip.clip_score(model, images, ["a photo"] * n, batch_size=b)),
        "clip_content_sim": (2 * n, lambda b: clip.content_similarity(model, images, other, batch_size=b)),
        "lpips_alex": (2 * n, lambda b: lpips.lpips_distance(alex, images, other, batch_size=b)),
    }
    rows = []
    for name, (count, metric) in metrics.items():
        metric(n)  # warm-up
        t = median_seconds({"batched": lambda m=metric: m(n), "single": lambda m=metric: m(1)}, repeats)
        rows.append((name, size, n, count / t["batched"], count / t["single"], t["single"] / t["batched"]))
    return rows


def bench(sizes: list[int], repeats: int) -> list[tuple]:
    torch.manual_seed(0)
    nets = random_inception(), random_clip(), random_lpips_alex()
    return [row for size in sizes for row in bench_size(size, IMAGES_PER_SIZE.get(size, 4), *nets, repeats)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="64,512")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = bench([int(s) for s in args.sizes.split(",")], args.repeats)
    print(f"Model metrics on the CPU (random full-size weights), network inputs/second, median of "
          f"{args.repeats} (torch threads: {torch.get_num_threads()}; {time.perf_counter() - start:.0f} s in all)")
    print(f"{'metric':22} {'size':>5} {'n':>4} {'batched':>10} {'one by one':>11} {'ratio':>7}")
    for name, size, n, batched, single, ratio in rows:
        print(f"{name:22} {size:5d} {n:4d} {batched:10.2f} {single:11.2f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
