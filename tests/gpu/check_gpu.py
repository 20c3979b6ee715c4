"""GPU check: the paths a CPU never runs, in one short call (under 8 minutes on one GPU).

    python tests/gpu/check_gpu.py                 # on a CUDA machine: SD1.5 size, 512 px
    python tests/gpu/check_gpu.py --smoke         # the same checks on the CPU at the tiny model's size (CI runs it)

SD1.5's full-size architecture with random weights in the real layout (no download). Each check
asserts and prints seconds, it/s and peak memory:

- training steps (rank 4 attention LoRA, batch 1) in fp32, fp32 with TF32 (``fp32_math`` fast),
  bf16 weights + bf16 autocast, fp16 weights + fp16 autocast with GradScaler (accelerate's): the
  losses are finite and the LoRA moved;
- Generate (euler, CFG 7.5) next to diffusers' own pipeline with the same scheduler and steps:
  finite, not blank;
- the offload modes (model, sequential): the same images as without offload, less GPU memory.

Exit status 1 if any check failed (all are run and printed either way).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LORALAB_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import torch  # noqa: E402

ROWS: list[tuple] = []  # (check, seconds, it/s, peak MB, status)


def check(name: str):
    def wrap(fn):
        def run(*args, **kwargs):
            try:
                seconds, rate, peak = fn(*args, **kwargs)
                ROWS.append((name, seconds, rate, peak, "ok"))
            except Exception as e:  # noqa: BLE001 (a failed check is reported, the others still run)
                traceback.print_exc()
                ROWS.append((name, float("nan"), float("nan"), float("nan"), f"FAILED: {e}"[:120]))
        return run
    return wrap


def base_pipeline(smoke: bool):
    """fp32 on the CPU: SD1.5 at full size, or the embedded tiny model."""
    if smoke:
        from loralab.core.pipeline import load_pipeline

        return load_pipeline("embedded: tiny-sd", "fp32", "cpu").pipe
    from fullsize import sd15_random_pipeline

    return sd15_random_pipeline()


def view(master, dtype, device, offload="none"):
    """A copy of the master pipeline in ``dtype`` on ``device`` (with an offload mode)."""
    import copy

    from loralab.core.pipeline import LabPipeline, place

    pipe = copy.deepcopy(master).to(dtype=dtype)
    place(pipe, device, offload=offload)
    return LabPipeline(pipe, "sd15-random", "sd1")


def peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


@check("train")
def train(master, device, size, steps, dtype, precision, math):
    from loralab.core.lora import LoRAConfigSpec
    from loralab.core.noise import NoiseStrategy
    from loralab.core.train import TrainSpec, encode_dataset, train_lora

    lp = view(master, dtype, device)
    images = torch.rand(4, size, size, 3, generator=torch.Generator().manual_seed(0))
    data = encode_dataset(lp.pipe, images, ["a photo of a cat", "a red car", "a house", "a tree"])
    reset(device)
    marks = []
    result = train_lora(lp.pipe, data, NoiseStrategy(), LoRAConfigSpec(rank=4, alpha=4.0, init="gaussian"),
                        TrainSpec(steps=steps + 1, lr=1e-4, mixed_precision=precision, fp32_math=math),
                        progress=lambda step, loss: marks.append(time.perf_counter()))
    assert all(torch.isfinite(torch.tensor(result.losses))), f"losses {result.losses}"
    assert any(v.abs().sum() > 0 for k, v in result.unet_state.items() if "lora_B" in k), "the LoRA did not move"
    seconds = (marks[-1] - marks[0]) / steps  # the first step (warm-up) left out
    return seconds, 1 / seconds, peak_mb(device)


def render(lp, size, steps):
    from loralab.core.generate import GenerateSettings, generate
    from loralab.core.prompts import Prompt
    from loralab.core.samplers import SamplerSpec

    settings = GenerateSettings(steps=steps, cfg=7.5, seed=0, width=size, height=size)
    return generate(lp, SamplerSpec("euler"), [Prompt("a photo of a cat")], settings)[0]


@check("generate (ours)")
def generate_ours(master, device, size, steps, dtype):
    lp = view(master, dtype, device)
    render(lp, size, 1)  # warm-up
    reset(device)
    start = time.perf_counter()
    images = render(lp, size, steps)
    seconds = time.perf_counter() - start
    assert torch.isfinite(images).all() and images.std() > 0.01, "blank or non-finite image"
    return seconds, steps / seconds, peak_mb(device)


@check("generate (diffusers pipeline)")
def generate_diffusers(master, device, size, steps, dtype):
    from diffusers import EulerDiscreteScheduler

    pipe = view(master, dtype, device).pipe
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe("a photo of a cat", num_inference_steps=1, height=size, width=size, output_type="pt")
    reset(device)
    start = time.perf_counter()
    images = pipe("a photo of a cat", num_inference_steps=steps, height=size, width=size, output_type="pt").images
    seconds = time.perf_counter() - start
    assert torch.isfinite(images).all()
    return seconds, steps / seconds, peak_mb(device)


@check("offload")
def offload(master, device, size, steps, dtype, mode, plain_images):
    lp = view(master, dtype, device, offload=mode)
    reset(device)
    start = time.perf_counter()
    images = render(lp, size, steps)
    seconds = time.perf_counter() - start
    torch.testing.assert_close(images, plain_images, atol=2e-2, rtol=0)
    return seconds, steps / seconds, peak_mb(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the tiny model on the CPU, to check the script runs")
    parser.add_argument("--size", type=int, default=None, help="image size (default 512; smoke 32)")
    parser.add_argument("--steps", type=int, default=None, help="training and sampling steps (default 20; smoke 2)")
    args = parser.parse_args()
    device = torch.device("cpu") if args.smoke else torch.device("cuda")
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU: run with --smoke for the CPU version", file=sys.stderr)
        return 2
    size, steps = args.size or (32 if args.smoke else 512), args.steps or (2 if args.smoke else 20)
    half = torch.float32 if args.smoke else torch.float16  # fp16 inference is GPU-only
    master = base_pipeline(args.smoke)
    precisions = [("fp32", torch.float32, "no", "highest"), ("bf16", torch.bfloat16, "bf16", "highest")]
    if not args.smoke:
        precisions[1:1] = [("fp32 + TF32", torch.float32, "no", "fast")]
        precisions.append(("fp16 + GradScaler", torch.float16, "fp16", "highest"))
    for label, dtype, precision, math in precisions:
        train(master, device, size, steps, dtype, precision, math)
        ROWS[-1] = (f"train {label}", *ROWS[-1][1:])
    generate_ours(master, device, size, steps, half)
    generate_diffusers(master, device, size, steps, half)
    if not args.smoke:
        plain = render(view(master, half, device), size, 4)
        for mode in ("model", "sequential"):
            offload(master, device, size, 4, half, mode, plain)
            ROWS[-1] = (f"offload {mode} (4 steps)", *ROWS[-1][1:])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\nGPU check on {name}, {'tiny model' if args.smoke else 'SD1.5 random weights'}, {size}px, "
          f"{steps} steps; memory: {'peak CUDA allocated' if device.type == 'cuda' else 'peak RSS'}\n")
    print("| check | seconds/step or total | it/s | peak MB | status |")
    print("|---|---|---|---|---|")
    for check_name, seconds, rate, peak, status in ROWS:
        print(f"| {check_name} | {seconds:.3f} | {rate:.2f} | {peak:.0f} | {status} |")
    return 0 if all(row[-1] == "ok" for row in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
