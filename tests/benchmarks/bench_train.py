"""Benchmark: a LoRA training step at SD1.5 size, ours vs diffusers' script vs ComfyUI's Train LoRA node.

Every side trains a rank-4 LoRA (batch 1, AdamW, lr 1e-4, MSE) on the same 4 images and captions (random
PNGs written once) and the same SD1.5 weights (random, in the real layout: fullsize.py), on the CPU, each in
its own process, in fp32 and in bf16:

- ours: loralab's ``train_lora`` (latents and text embeddings cached once; LoRA on attention), loading the
  weights from a diffusers folder with loralab's loader; bf16 = the weights loaded in bf16 (Load Pipeline's
  dtype bf16; the script likewise casts its frozen weights to bf16) and ``mixed_precision="bf16"``, so autocast
  keeps no bf16 copies of fp32 weights;
- script: diffusers' ``examples/text_to_image/train_text_to_image_lora.py`` run unchanged on the same folder
  (VAE and text encoder on every step; LoRA on attention); bf16 = ``--mixed_precision bf16``;
- comfyui: ComfyUI's TrainLoraNode (comfyui_train.py) on the same weights as one single-file checkpoint; the
  node has no target choice, so its LoRA covers every layer it wraps; bf16 = ``training_dtype="bf16"``.

Seconds per step: each side reports the end of every step as it happens (ours and ComfyUI: their progress
callbacks; the script: its tqdm "Steps" line), read here with a timestamp; s/step = (end of the last step -
end of the first) / (steps - 1), so start-up, loading and the first (warm-up) step are excluded. Peak memory:
the side's process's max RSS (``os.wait4``). The weights and images are written to a temporary folder
(removed at the end; ``--workdir`` keeps them for the next run).

    python tests/benchmarks/bench_train.py [--steps 4] [--rounds 1] [--precisions fp32,bf16]
        [--diffusers-script DIFFUSERS/examples/text_to_image/train_text_to_image_lora.py]
        [--comfyui COMFYUI_DIR [--comfyui-python PYTHON]] [--workdir DIR] [--size 256]
        [--gradient-checkpointing] [--fp32-math fast] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
CAPTIONS = ["a photo of a cat", "a red car", "a house", "a tree"]
SIDES = {"ours": "ours (loralab train_lora)", "script": "diffusers train_text_to_image_lora.py",
         "comfyui": "ComfyUI TrainLoraNode"}
GOALS = {"script": (2.0, 1.0), "comfyui": (5.0, 1.0)}  # ours' steps/s at least, ours' peak RSS at most
# Ours and ComfyUI print "loralab-bench-step N"; the script's tqdm bar prints "Steps:  40%|####  | 2/5 [...]".
STEP = re.compile(r"loralab-bench-step (\d+)|Steps:\s*\d+%\|[^|]*\|\s*(\d+)/\d+")
LOSS = re.compile(r"step_loss=([^,\]\s]+)")
DONE = re.compile(r"loralab-bench-done (\{.*\})")  # ours and ComfyUI: the final loss and the LoRA's size


def build(tiny: bool):
    """The pipeline every side trains on: SD1.5's full-size architecture or the embedded tiny model."""
    if not tiny:
        from fullsize import sd15_random_pipeline

        return sd15_random_pipeline()
    from diffusers import DDPMScheduler

    from loralab.core.pipeline import load_pipeline

    pipe = load_pipeline("embedded: tiny-sd", "fp32", "cpu").pipe
    pipe.scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return pipe


def prepare(workdir: Path, size: int, tiny: bool, single_file: bool) -> None:
    """Write the shared inputs: an imagefolder (PNGs + metadata.jsonl with ``file_name``/``text``, as the
    script's ``--train_data_dir`` reads it), the weights as a diffusers folder and, for ComfyUI, as a
    single-file checkpoint in the original layout (tests/ldm_layout.py, checked against diffusers' converters)."""
    import numpy as np
    import torch
    from PIL import Image

    pipe = build(tiny)
    images = workdir / "images"
    images.mkdir(parents=True, exist_ok=True)
    pixels = torch.rand(len(CAPTIONS), size, size, 3, generator=torch.Generator().manual_seed(1))
    rows = []
    for k, caption in enumerate(CAPTIONS):
        Image.fromarray((pixels[k].numpy() * 255).round().astype(np.uint8)).save(images / f"{k}.png")
        rows.append(json.dumps({"file_name": f"{k}.png", "text": caption}))
    (images / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    pipe.save_pretrained(workdir / "diffusers", safe_serialization=True)
    if single_file:
        sys.path.insert(0, str(HERE.parent))
        from ldm_layout import clip_to_ldm, unet_to_ldm, vae_to_ldm
        from safetensors.torch import save_file

        unet, vae, te = pipe.unet, pipe.vae, pipe.text_encoder
        ldm = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config),
               **clip_to_ldm(te.state_dict(), "cond_stage_model.transformer.")}
        save_file({k: v.contiguous() for k, v in ldm.items()}, str(workdir / "sd15.safetensors"))


def read_images(folder: Path):
    """The imagefolder as ComfyUI images (``[N,H,W,3]`` in 0..1) and captions, for ours and for ComfyUI."""
    import numpy as np
    import torch
    from PIL import Image

    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    images = [np.asarray(Image.open(folder / row["file_name"]).convert("RGB"), dtype=np.float32) / 255 for row in rows]
    return torch.from_numpy(np.stack(images)), [row["text"] for row in rows]


def run_ours(workdir: Path, steps: int, checkpointing: bool, precision: str, math: str) -> None:
    import torch

    from loralab.core.checkpoints import load_diffusers_folder
    from loralab.core.lora import LoRAConfigSpec
    from loralab.core.noise import NoiseStrategy
    from loralab.core.train import TrainSpec, encode_dataset, train_lora

    pipe, _ = load_diffusers_folder(workdir / "diffusers", torch.float32 if precision == "fp32" else torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    data = encode_dataset(pipe, *read_images(workdir / "images"))
    result = train_lora(pipe, data, NoiseStrategy(), LoRAConfigSpec(rank=4, alpha=4.0, init="gaussian"),
                        TrainSpec(steps=steps, lr=1e-4, gradient_checkpointing=checkpointing,
                                  mixed_precision="no" if precision == "fp32" else precision, fp32_math=math),
                        progress=lambda step, loss: print(f"loralab-bench-step {step}", flush=True))
    tensors = sum(len(state) for state in result.states.values())
    print("loralab-bench-done " + json.dumps({"loss": result.losses[-1], "lora": f"{tensors} tensors"}), flush=True)


def measure(cmd: list[str], cwd: Path | None, env: dict) -> dict:
    """Run one side; time the end of each step as its output reports it; read its peak RSS."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    ends, loss, done, tail, pending = {}, None, {}, deque(maxlen=30), b""
    for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
        now = time.perf_counter()
        *lines, pending = re.split(rb"[\r\n]", pending + chunk)  # tqdm redraws its line with \r
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            tail.append(line)
            if (step := STEP.search(line)) and int(step.group(1) or step.group(2)) > 0:
                ends.setdefault(int(step.group(1) or step.group(2)), now)
            if found := LOSS.search(line):
                loss = float(found.group(1))
            if found := DONE.search(line):
                done = json.loads(found.group(1))
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN would mix the sides)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or len(ends) < 2:
        raise RuntimeError(f"{cmd[1]} exited {proc.returncode} after {len(ends)} reported steps; last output:\n"
                           + "\n".join(tail))
    first, last = min(ends), max(ends)
    return {"seconds_per_step": (ends[last] - ends[first]) / (last - first), "steps": last,
            "peak_rss_gib": usage.ru_maxrss / 2**20, "loss": done.get("loss", loss), "lora": done.get("lora")}


def script_output(workdir: Path, precision: str) -> Path:
    return workdir / f"script-{precision}"


def side_command(side: str, precision: str, args, workdir: Path) -> tuple[list[str], Path | None]:
    steps = str(args.steps + 1)  # + the warm-up step
    if side == "ours":
        cmd = [sys.executable, __file__, "--child", "--workdir", str(workdir), "--steps", steps,
               "--precisions", precision, "--fp32-math", args.fp32_math]
        return cmd + (["--gradient-checkpointing"] if args.gradient_checkpointing else []), None
    if side == "script":
        out = script_output(workdir, precision)
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, str(args.diffusers_script), "--pretrained_model_name_or_path",
               str(workdir / "diffusers"), "--train_data_dir", str(workdir / "images"), "--caption_column", "text",
               "--resolution", str(args.size), "--train_batch_size", "1", "--rank", "4", "--max_train_steps", steps,
               "--learning_rate", "1e-4", "--output_dir", str(out), "--seed", "0", "--dataloader_num_workers", "0",
               "--mixed_precision", "no" if precision == "fp32" else precision]
        return cmd + (["--gradient_checkpointing"] if args.gradient_checkpointing else []), None
    cmd = [args.comfyui_python, str(HERE / "comfyui_train.py"), "--comfyui", str(args.comfyui), "--checkpoint",
           str(workdir / "sd15.safetensors"), "--images", str(workdir / "images"), "--steps", steps,
           "--precision", precision]
    return cmd + (["--gradient-checkpointing"] if args.gradient_checkpointing else []), args.comfyui


def skipped_sides(args) -> dict[str, str]:
    skipped = {}
    if args.diffusers_script is None:
        skipped["script"] = "no --diffusers-script given"
    elif not args.diffusers_script.is_file():
        skipped["script"] = f"--diffusers-script {args.diffusers_script} is not a file"
    if args.comfyui is None:
        skipped["comfyui"] = "no --comfyui given"
    elif not (args.comfyui / "comfy_extras" / "nodes_train.py").is_file():
        skipped["comfyui"] = f"--comfyui {args.comfyui} has no comfy_extras/nodes_train.py"
    elif args.tiny:
        skipped["comfyui"] = "ComfyUI recognises real SD1.5 layouts only, not --tiny"
    return skipped


def print_table(results: dict, args, skipped: dict[str, str]) -> None:
    model = "embedded tiny model" if args.tiny else "full-size SD1.5 (random weights)"
    print(f"\nLoRA training step, {model}, {args.size}px, batch 1, rank 4, AdamW, CPU; s/step over {args.steps} "
          f"steps after a warm-up step, median of {args.rounds} run(s)"
          + (", gradient checkpointing" if args.gradient_checkpointing else "")
          + (", fp32 fast math (ours)" if args.fp32_math == "fast" else "") + "\n")
    print("| precision | side | s/step | ours steps/s ratio (goal) | peak RSS GiB | ours memory ratio (goal) "
          "| last loss | LoRA |")
    print("|---|---|---|---|---|---|---|---|")
    for precision, rows in results.items():
        ours = rows.get("ours")
        for side, row in rows.items():
            speed = memory = "-"
            if side != "ours" and ours:
                goal_speed, goal_memory = GOALS[side]
                speed = f"{row['seconds_per_step'] / ours['seconds_per_step']:.2f}x (>= {goal_speed:g}x)"
                memory = f"{ours['peak_rss_gib'] / row['peak_rss_gib']:.2f}x (<= {goal_memory:g}x)"
            print(f"| {precision} | {SIDES[side]} | {row['seconds_per_step']:.3f} | {speed} | "
                  f"{row['peak_rss_gib']:.2f} | {memory} | {row['loss']:.4f} | {row['lora'] or '-'} |")
    for side, why in skipped.items():
        print(f"skipped {SIDES[side]}: {why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (one warm-up step more)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per side, order alternating; medians reported")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--diffusers-script", type=Path, help="diffusers' train_text_to_image_lora.py")
    parser.add_argument("--comfyui", type=Path, help="ComfyUI's folder (v0.8.0)")
    parser.add_argument("--comfyui-python", default=sys.executable, help="a Python with ComfyUI's requirements")
    parser.add_argument("--workdir", type=Path, help="keep the written weights and images here and reuse them")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on every side")
    parser.add_argument("--fp32-math", default="highest", choices=["highest", "fast"], help="ours only")
    parser.add_argument("--tiny", action="store_true", help="the embedded tiny model instead of full-size SD1.5")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.workdir, args.size, args.tiny, args.comfyui is not None)
        return
    if args.child:
        run_ours(args.workdir, args.steps, args.gradient_checkpointing, args.precisions, args.fp32_math)
        return
    skipped = skipped_sides(args)
    sides = [side for side in SIDES if side not in skipped]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="loralab-bench-train-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "LORALAB_NO_PROGRESS": "1",
           "HF_DATASETS_CACHE": str(workdir / "hf-datasets"), "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    try:
        inputs = {"size": args.size, "tiny": args.tiny, "single_file": "comfyui" in sides}
        marker = workdir / "inputs.json"
        if not marker.is_file() or json.loads(marker.read_text()) != inputs:
            subprocess.run([sys.executable, __file__, "--prepare", "--workdir", str(workdir), "--size", str(args.size)]
                           + (["--tiny"] if args.tiny else []) + (["--comfyui", str(args.comfyui)]
                                                                  if inputs["single_file"] else []),
                           env=env, check=True)
            marker.write_text(json.dumps(inputs))
        results = {}
        for precision in args.precisions.split(","):
            runs: dict[str, list] = {side: [] for side in sides}
            for round_ in range(args.rounds):  # alternate the order so background load hits every side alike
                for side in sides if round_ % 2 == 0 else sides[::-1]:
                    row = measure(*side_command(side, precision, args, workdir), env=env)
                    if side == "script":  # its result is a file: the peft LoRA in the diffusers layout
                        lora = script_output(workdir, precision) / "pytorch_lora_weights.safetensors"
                        row["lora"] = f"{lora.name} {lora.stat().st_size / 2**20:.1f} MiB" if lora.is_file() else "none"
                    runs[side].append(row)
                    print(f"{precision} {side}: {json.dumps(runs[side][-1])}", flush=True)
            results[precision] = {side: {**rs[-1], **{key: statistics.median(r[key] for r in rs)
                                                      for key in ("seconds_per_step", "peak_rss_gib")}}
                                  for side, rs in runs.items()}
        print_table(results, args, skipped)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
