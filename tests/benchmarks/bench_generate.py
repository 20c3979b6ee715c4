"""Benchmark: LoRA Lab's Generate vs calling the same diffusers pipeline directly.

Same model (embedded tiny SD, or SD1.5's full-size architecture with random weights), scheduler,
steps, size and seed; runs are interleaved, alternating which goes first, so machine load and
cache effects hit both sides alike. Goal: ratio (ours / diffusers) <= 1.05.

    python tests/benchmarks/bench_generate.py [--steps 20] [--repeats 7] [--samplers euler,ddim]
    python tests/benchmarks/bench_generate.py --full-size --steps 1 --size 256 --samplers euler,dpmpp_2m
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LORALAB_NO_PROGRESS", "1")

import torch  # noqa: E402

from loralab.core.generate import GenerateSettings, generate  # noqa: E402
from loralab.core.pipeline import load_pipeline  # noqa: E402
from loralab.core.prompts import Prompt  # noqa: E402
from loralab.core.samplers import SAMPLERS, SamplerSpec  # noqa: E402

# The baseline: diffusers' scheduler of the same algorithm (the UNet passes per step match; the
# sigmas and noise do not, which does not matter for timing).
DIFFUSERS = {"euler": ("EulerDiscreteScheduler", {}), "ddim": ("EulerDiscreteScheduler", {}),
             "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}), "heun": ("HeunDiscreteScheduler", {}),
             "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
             "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
             "dpmpp_sde": ("DPMSolverSDEScheduler", {"noise_sampler_seed": 0}),
             "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3}),
             "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2", "solver_order": 3}),
             "lcm": ("LCMScheduler", {})}


def full_size_sd15():
    from fullsize import sd15_random_pipeline

    from loralab.core.pipeline import LabPipeline

    scheduler = load_pipeline("embedded: tiny-sd", "fp32", "cpu").pipe.scheduler  # SD1.5's noise schedule
    return LabPipeline(sd15_random_pipeline(scheduler), "sd15-random", "sd1")


def bench(samplers: list[str], steps: int, repeats: int, size: int, full_size: bool = False) -> list[tuple]:
    lp = full_size_sd15() if full_size else load_pipeline("embedded: tiny-sd", dtype="fp32", device="cpu")
    prompt = "a photo of a cat"
    settings = GenerateSettings(steps=steps, cfg=7.5, seed=0, width=size, height=size)
    rows = []
    for name in samplers:
        spec = SamplerSpec(name)

        def ours(spec=spec):
            generate(lp, spec, [Prompt(prompt)], settings)

        def direct(spec=spec):
            import diffusers

            cls, options = DIFFUSERS[spec.name]
            config = {**lp.pipe.scheduler.config, "timestep_spacing": "linspace", **options}
            pipe = lp.with_scheduler(getattr(diffusers, cls).from_config(config))
            pipe(prompt, num_inference_steps=steps, guidance_scale=7.5, width=size, height=size,
                 generator=[torch.Generator().manual_seed(0)], output_type="pt")

        times = {"ours": [], "diffusers": []}
        with torch.inference_mode():
            ours(), direct()  # warm-up
            for r in range(repeats):
                pair = (("ours", ours), ("diffusers", direct))
                for label, fn in pair if r % 2 == 0 else pair[::-1]:  # alternate who runs first
                    start = time.perf_counter()
                    fn()
                    times[label].append(time.perf_counter() - start)
        a, b = statistics.median(times["ours"]), statistics.median(times["diffusers"])
        rows.append((name, a, b, a / b))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--full-size", action="store_true",
                        help="SD1.5's full-size architecture with random weights (try --steps 1 --size 256)")
    args = parser.parse_args()
    rows = bench(args.samplers.split(","), args.steps, args.repeats, args.size, args.full_size)
    model = "full-size SD1.5 (random weights)" if args.full_size else "tiny model"
    print(f"Generate vs bare diffusers, {model}, {args.size}px, {args.steps} steps, "
          f"median of {args.repeats} (torch threads: {torch.get_num_threads()})")
    print(f"{'sampler':16} {'ours s':>8} {'diffusers s':>12} {'ratio':>7}")
    for name, a, b, r in rows:
        print(f"{name:16} {a:8.3f} {b:12.3f} {r:7.3f}")
    print(f"{'geomean ratio':16} {statistics.geometric_mean(r for *_, r in rows):29.3f}")


if __name__ == "__main__":
    main()
