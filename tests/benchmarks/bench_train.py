"""Benchmark: a LoRA training step at full SD1.5 size (random weights), ours vs a reference loop.

The reference has the semantics of diffusers' ``train_text_to_image_lora.py``: VAE encode and text
encoder on every step, peft LoRA on attention (rank 4), AdamW, fp32. Ours is ``train_lora`` on
latents and embeddings cached once. Each side runs in its own process so peak memory is its own.
256 px = 32x32 latents, batch 1 (as REFERENCES.md measured).

    python tests/benchmarks/bench_train.py [--steps 4] [--rounds 2] [--size 256] [--gradient-checkpointing]
                                           [--mixed-precision bf16] [--fp32-math fast] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LORALAB_NO_PROGRESS", "1")


def build(tiny: bool = False):
    from fullsize import sd15_random_pipeline

    if not tiny:
        return sd15_random_pipeline()
    from diffusers import DDPMScheduler

    from loralab.core.pipeline import load_pipeline

    pipe = load_pipeline("embedded: tiny-sd", "fp32", "cpu").pipe
    pipe.scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return pipe


def run_reference(pipe, images, captions, steps):
    import torch
    from peft import LoraConfig

    unet, vae, te = pipe.unet, pipe.vae, pipe.text_encoder
    for m in (unet, vae, te):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sched = pipe.scheduler
    g = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        pixels = images[step % len(images)][None].permute(0, 3, 1, 2) * 2 - 1
        latents = vae.encode(pixels).latent_dist.sample(generator=g) * vae.config.scaling_factor
        ids = pipe.tokenizer(captions[step % len(captions)], padding="max_length", max_length=77,
                             truncation=True, return_tensors="pt").input_ids
        cond = te(ids)[0]
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, 1000, (1,), generator=g)
        noisy = sched.add_noise(latents, noise, t)
        loss = torch.nn.functional.mse_loss(unet(noisy, t, cond).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return times[1:]


def run_ours(pipe, images, captions, steps, checkpointing, precision, math):
    from loralab.core.lora import LoRAConfigSpec
    from loralab.core.noise import NoiseStrategy
    from loralab.core.train import TrainSpec, encode_dataset, train_lora

    data = encode_dataset(pipe, images, captions)
    times, last = [], [time.perf_counter()]

    def tick(step, loss):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    train_lora(pipe, data, NoiseStrategy(), LoRAConfigSpec(rank=4, alpha=4.0, init="gaussian"),
               TrainSpec(steps=steps + 1, lr=1e-4, gradient_checkpointing=checkpointing, mixed_precision=precision,
                         fp32_math=math),
               progress=tick)
    return times[1:]


def child(mode: str, steps: int, size: int, checkpointing: bool, precision: str, math: str, tiny: bool) -> None:
    import resource

    import torch

    pipe = build(tiny)
    images = torch.rand(4, size, size, 3, generator=torch.Generator().manual_seed(1))
    captions = ["a photo of a cat", "a red car", "a house", "a tree"]
    times = run_reference(pipe, images, captions, steps) if mode == "reference" else \
        run_ours(pipe, images, captions, steps, checkpointing, precision, math)
    print(json.dumps({"mode": mode, "seconds_per_step": sorted(times)[len(times) // 2],
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="processes per side, alternating; medians reported")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"], help="ours only")
    parser.add_argument("--fp32-math", default="highest", choices=["highest", "fast"], help="ours only")
    parser.add_argument("--tiny", action="store_true", help="the embedded tiny model instead of full-size SD1.5")
    parser.add_argument("--child", choices=["reference", "ours"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.size, args.gradient_checkpointing, args.mixed_precision, args.fp32_math,
              args.tiny)
        return
    runs: dict[str, list] = {"reference": [], "ours": []}
    for round_ in range(args.rounds):  # alternate the order so background load hits both sides alike
        for mode in ("reference", "ours") if round_ % 2 == 0 else ("ours", "reference"):
            cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--size", str(args.size)]
            if args.gradient_checkpointing:
                cmd.append("--gradient-checkpointing")
            cmd += ["--mixed-precision", args.mixed_precision, "--fp32-math", args.fp32_math]
            cmd += ["--tiny"] if args.tiny else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            runs[mode].append(json.loads(out))
    ref, ours = ({key: statistics.median(r[key] for r in runs[mode]) for key in ("seconds_per_step", "peak_rss_gib")}
                 for mode in ("reference", "ours"))
    model = "embedded tiny model" if args.tiny else "full-size SD1.5 (random weights)"
    print(f"LoRA training step, {model}, {args.size}px, batch 1, rank 4 attention, fp32"
          + (", gradient checkpointing (ours)" if args.gradient_checkpointing else "")
          + (f", {args.mixed_precision} autocast (ours)" if args.mixed_precision != "no" else "")
          + (", fp32 with fast math (ours)" if args.fp32_math == "fast" else ""))
    print(f"{'':34} {'s/step':>8} {'peak RSS GiB':>13}")
    print(f"{'reference (VAE + TE every step)':34} {ref['seconds_per_step']:8.3f} {ref['peak_rss_gib']:13.2f}")
    print(f"{'ours (cached latents/embeddings)':34} {ours['seconds_per_step']:8.3f} {ours['peak_rss_gib']:13.2f}")
    print(f"speed-up (steps/s ratio) {ref['seconds_per_step'] / ours['seconds_per_step']:.2f}x; "
          f"memory ratio {ours['peak_rss_gib'] / ref['peak_rss_gib']:.2f}")


if __name__ == "__main__":
    main()
