"""Manual check (not run by CI): our kohya SD1.5 files load in real ComfyUI's LoraLoader with no
"lora key not loaded" warning.

1. ``python tests/manual/comfyui_loraloader.py make COMFY_DIR`` writes a full-size SD1.5 checkpoint
   with random weights (original single-file layout, fp16, 2.1 GB) into COMFY_DIR/models/checkpoints
   and five LoRA files made by our writer (attention; all linear + conv; attention + ff as DoRA; all
   linear + conv as LoHa and as LoKr, LyCORIS keys with Tucker-form 3x3 convolutions, as Train LoRA
   writes them; each with a text-encoder part) plus a control file with one bogus module into
   COMFY_DIR/models/loras. ``make COMFY_DIR loha lokr`` writes only the files named.
2. Start ComfyUI (``python main.py --cpu``) and run ``python tests/manual/comfyui_loraloader.py post``:
   each file goes through CheckpointLoaderSimple -> LoraLoader -> KSampler (1 step, 64 px)
   (``post loha lokr``: only those files).
3. ``grep "lora key not loaded" comfyui.log`` must list only the control file's three keys.
"""

from __future__ import annotations

import copy
import json
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = {"loralab_attention": ("attention", "attention", "lora"),
         "loralab_all_linear_conv": ("all_linear+conv", "all_linear", "lora"),
         "loralab_attention_ff_dora": ("attention+ff", "attention", "dora"),
         "loralab_all_linear_conv_loha": ("all_linear+conv", "all_linear", "loha"),
         "loralab_all_linear_conv_lokr": ("all_linear+conv", "all_linear", "lokr")}


def make(comfy: Path, only: tuple[str, ...] = ()) -> None:
    sys.path[:0] = [str(HERE.parent), str(HERE.parent / "benchmarks")]
    import torch
    from fullsize import sd15_random_pipeline
    from ldm_layout import clip_to_ldm, unet_to_ldm, vae_to_ldm
    from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model
    from safetensors.torch import save_file

    from loralab.core.lora import resolve_targets
    from loralab.core.lora_files import kohya_metadata, save_lora_file, to_kohya

    pipe = sd15_random_pipeline()
    unet, vae, te = pipe.unet, pipe.vae, pipe.text_encoder
    ldm = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config),
           **clip_to_ldm(te.state_dict(), "cond_stage_model.transformer.")}
    (comfy / "models/checkpoints").mkdir(parents=True, exist_ok=True)
    checkpoint = comfy / "models/checkpoints/sd15_random.safetensors"
    if not checkpoint.exists():
        save_file({k: v.half().contiguous() for k, v in ldm.items()}, str(checkpoint))

    def random_lora(model, targets, variant):
        config = {"loha": LoHaConfig(r=4, alpha=4, target_modules=targets, use_effective_conv2d=True),
                  "lokr": LoKrConfig(r=4, alpha=4, target_modules=targets, use_effective_conv2d=True)}.get(
                      variant, LoraConfig(r=4, lora_alpha=4, target_modules=targets, use_dora=variant == "dora"))
        wrapped = inject_adapter_in_model(config, copy.deepcopy(model))
        g = torch.Generator().manual_seed(0)
        return {n.replace(".default", ""): torch.randn(p.shape, generator=g) * 0.01
                for n, p in wrapped.named_parameters() if any(k in n for k in ("lora_", "hada_", "lokr_"))}

    loras = comfy / "models/loras"
    for name, (preset, te_preset, variant) in FILES.items():
        if only and not any(name.endswith(o) for o in only):
            continue
        te_targets = resolve_targets(te, te_preset, text_encoder=True)
        kohya = {**to_kohya(random_lora(unet, resolve_targets(unet, preset), variant), 4.0, rank=4),
                 **to_kohya(random_lora(te, te_targets, variant), 4.0, "lora_te", rank=4)}
        save_lora_file(kohya, kohya_metadata(4, 4.0, "sd1", variant=variant), loras / f"{name}.safetensors")
        if name == "loralab_attention":
            kohya["lora_unet_bogus_module.lora_down.weight"] = torch.zeros(4, 8)
            kohya["lora_unet_bogus_module.lora_up.weight"] = torch.zeros(8, 4)
            kohya["lora_unet_bogus_module.alpha"] = torch.tensor(4.0)
            save_lora_file(kohya, {}, loras / "control_bogus.safetensors")


def post(url: str = "http://127.0.0.1:8188", only: tuple[str, ...] = ()) -> None:
    for name in [n for n in [*FILES, "control_bogus"] if not only or any(n.endswith(o) for o in only)]:
        prompt = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15_random.safetensors"}},
            "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                         "lora_name": f"{name}.safetensors",
                                                         "strength_model": 1.0, "strength_clip": 1.0}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a photo of a cat"}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "5": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["3", 0],
                                                       "latent_image": ["4", 0], "seed": 0, "steps": 1, "cfg": 1.0,
                                                       "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}}
        request = urllib.request.Request(f"{url}/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                         headers={"Content-Type": "application/json"})
        pid = json.loads(urllib.request.urlopen(request).read())["prompt_id"]
        for _ in range(200):
            time.sleep(3)
            history = json.loads(urllib.request.urlopen(f"{url}/history/{pid}").read())
            if pid in history:
                print(name, history[pid]["status"]["status_str"])
                break


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(Path(sys.argv[2]), tuple(sys.argv[3:]))
    else:
        post(only=tuple(sys.argv[2:]))
