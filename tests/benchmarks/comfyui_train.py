"""ComfyUI's own Train LoRA node (``comfy_extras/nodes_train.py``: TrainLoraNode) on a single-file SD1.5
checkpoint, outside the server, as the workflow Load Checkpoint -> VAE Encode + CLIP Text Encode -> Train LoRA
runs it: the node's own ``execute`` with its inputs as lists (it declares ``is_input_list``).

bench_train.py runs this with ComfyUI's Python (which must see ComfyUI's requirements), on the CPU. It prints
``loralab-bench-step N`` when ComfyUI's progress-bar hook fires (the node updates it after every optimizer step)
and, at the end, ``loralab-bench-done {json}`` with the node's loss history.

    PYTHON tests/benchmarks/comfyui_train.py --comfyui DIR --checkpoint FILE --images DIR --steps N
        [--precision fp32|bf16] [--gradient-checkpointing]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--comfyui", required=True, type=Path, help="ComfyUI's folder (v0.8.0)")
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--images", required=True, type=Path, help="an imagefolder: PNGs + metadata.jsonl")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    from bench_train import read_images  # this file's folder is on sys.path as the script's

    sys.path.insert(0, str(args.comfyui))
    os.chdir(args.comfyui)  # ComfyUI finds its folders (models/, custom_nodes/) relative to itself
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management reads it: the benchmark compares CPU runs
    import comfy.sd
    import comfy.utils
    import torch
    from comfy_extras.nodes_train import TrainLoraNode

    import nodes

    with torch.inference_mode():  # as ComfyUI's executor runs a prompt (the node leaves it to train)
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            str(args.checkpoint), output_vae=True, output_clip=True, embedding_directory=None)[:3]
        print(f"ComfyUI detected {type(model.model.model_config).__name__}", flush=True)
        pixels, captions = read_images(args.images)
        latents = [nodes.VAEEncode().encode(vae, pixels)[0]]
        positive = [nodes.CLIPTextEncode().encode(clip, caption)[0] for caption in captions]
        comfy.utils.set_progress_bar_global_hook(
            lambda value, total, preview, node_id=None: print(f"loralab-bench-step {value}", flush=True))
        out = TrainLoraNode.execute(
            model=[model], latents=latents, positive=positive, batch_size=[1], grad_accumulation_steps=[1],
            steps=[args.steps], learning_rate=[1e-4], rank=[4], optimizer=["AdamW"], loss_function=["MSE"], seed=[0],
            training_dtype=[args.precision], lora_dtype=["fp32"],  # fp32 LoRA weights, as ours and peft's upcast
            algorithm=["LoRA"], gradient_checkpointing=[args.gradient_checkpointing], existing_lora=["[None]"],
            bucket_mode=[False])
    _, lora, loss_map, _ = out.result
    print("loralab-bench-done " + json.dumps({"loss": loss_map["loss"][-1], "losses": loss_map["loss"],
                                              "lora": f"{len(lora)} tensors"}), flush=True)


if __name__ == "__main__":
    main()
