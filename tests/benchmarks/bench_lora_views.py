"""Benchmark: peak memory of a workflow holding several LoRAs of SD1.5, as views vs as copies.

SD1.5's full-size architecture with random weights (fp32, CPU); N different rank-16 LoRAs on the
UNet's attention and the text encoder, each applied to the base model as its own pipeline (as a
sweep over LoRAs holds them), then one image sampled with each. "views" is Apply LoRA now
(core/patches.py); "copies" is the reference, each LoRA merged into its own copy of the touched
modules (what Apply LoRA did before). Every measurement runs in a fresh process and reads its peak
RSS. Goal: views with 4 LoRAs <= 1.1x views with 1.

    python tests/benchmarks/bench_lora_views.py [--loras 1,4] [--modes views,copies] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LORALAB_NO_PROGRESS", "1")


def random_lora(pipe, seed: int, rank: int = 16) -> dict:
    """kohya tensors for every attention projection of the UNet and the text encoder."""
    import torch

    from loralab.core.lora_files import module_index

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (component, path) in module_index(pipe).items():
        if name.startswith("diffusion_model.") or not path.endswith(("to_q", "to_k", "to_v", "to_out.0", "q_proj",
                                                                    "k_proj", "v_proj", "out_proj")):
            continue
        weight = dict(getattr(pipe, component).named_modules())[path].weight
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, weight.shape[1], generator=g) * 0.01
        tensors[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=g) * 0.01
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    return tensors


def child(mode: str, n: int, size: int) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from fullsize import sd15_random_pipeline

    from loralab.core.generate import GenerateSettings, generate
    from loralab.core.lab_lora import LabLoRA, apply_lora
    from loralab.core.lora_files import merged_copy
    from loralab.core.pipeline import LabPipeline
    from loralab.core.prompts import Prompt
    from loralab.core.samplers import SamplerSpec

    torch.set_grad_enabled(False)
    base = LabPipeline(sd15_random_pipeline(), "sd15-random", "sd1")
    loras = [LabLoRA(random_lora(base.pipe, k), 16, 16.0, "sd1", f"lora{k}") for k in range(n)]
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    if mode == "views":
        pipelines = [apply_lora(base, lora, 1.0, 1.0)[0] for lora in loras]
    else:
        pipelines = [LabPipeline(merged_copy(base.pipe, lora.tensors, 1.0, 1.0)[0], lora.name, "sd1") for lora in loras]
    for lp in pipelines:  # every pipeline is used while all are held
        generate(lp, SamplerSpec("euler"), [Prompt("a cat")], GenerateSettings(steps=1, width=size, height=size))
    return {"mode": mode, "loras": n, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "model_gib": after_load, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loras", default="1,4")
    parser.add_argument("--modes", default="views,copies")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.size)))
        return
    rows = []
    for mode in args.modes.split(","):
        for n in [int(x) for x in args.loras.split(",")]:
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(n), "--size", str(args.size)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
    print(f"\nSD1.5 random weights, fp32, CPU; one {args.size}px image per LoRA pipeline\n")
    print("| mode | LoRAs | peak RSS GiB | model alone GiB | vs 1 LoRA (same mode) | seconds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        one = next((r for r in rows if r["mode"] == row["mode"] and r["loras"] == 1), row)
        print(f"| {row['mode']} | {row['loras']} | {row['peak_rss_gib']:.2f} | {row['model_gib']:.2f} | "
              f"{row['peak_rss_gib'] / one['peak_rss_gib']:.2f}x | {row['seconds']:.1f} |")


if __name__ == "__main__":
    main()
