"""LoRA files in the layout every UI loads: kohya keys with ``alpha`` and ``ss_*`` metadata.

UNet:  ``lora_unet_<diffusers module path, . -> _>.lora_down.weight / .lora_up.weight / .alpha``
SD1 text encoder: ``lora_te_text_model_encoder_layers_<i>_self_attn_q_proj…``; SDXL: ``lora_te1_``,
``lora_te2_``. transformers 5's CLIPTextModel has no ``text_model.`` level in its module paths;
ComfyUI only matches keys with it, so we add it back (REFERENCES.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

BASE_MODEL_VERSION = {"sd1": "sd_v1", "sdxl": "sdxl_base_v1-0"}


def _modules(peft_state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in peft_state.items():
        for part, name in ((".lora_A.weight", "down"), (".lora_B.weight", "up")):
            if key.endswith(part):
                grouped.setdefault(key[: -len(part)], {})[name] = value
    return grouped


def kohya_name(module: str, prefix: str) -> str:
    if prefix.startswith("lora_te") and not module.startswith("text_model."):
        module = "text_model." + module
    return f"{prefix}_{module.replace('.', '_')}"


def to_kohya(peft_state: dict[str, torch.Tensor], alpha: float, prefix: str = "lora_unet") -> dict[str, torch.Tensor]:
    """peft ``<module>.lora_A/B.weight`` tensors -> kohya keys; ``alpha`` is stored as trained."""
    out = {}
    for module, pair in _modules(peft_state).items():
        if set(pair) != {"down", "up"}:
            raise ValueError(f"LoRA weights for {module!r} lack lora_A or lora_B")
        name = kohya_name(module, prefix)
        out[f"{name}.lora_down.weight"] = pair["down"].contiguous()
        out[f"{name}.lora_up.weight"] = pair["up"].contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def kohya_metadata(rank: int, alpha: float, family: str, extra: dict | None = None) -> dict[str, str]:
    """kohya's ``ss_*`` keys (strings, as safetensors metadata must be) plus our own settings."""
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
            "ss_base_model_version": BASE_MODEL_VERSION.get(family, family), "ss_v2": "False",
            "ss_sd_model_name": "", "loralab_version": "0.1.0"}
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value, default=str)
    return meta


def save_lora_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> Path:
    """Write safetensors atomically (temp file in the same folder, then rename)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def delta_weights(kohya: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kohya name -> ΔW = (alpha/rank)·up·down, for linear and convolution LoRAs."""
    deltas = {}
    for key in kohya:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        down, up = kohya[key].float(), kohya[f"{name}.lora_up.weight"].float()
        rank = down.shape[0]
        alpha = float(kohya.get(f"{name}.alpha", torch.tensor(float(rank))))
        if down.ndim == 4:
            delta = torch.einsum("or,rikl->oikl", up.flatten(1), down)
        else:
            delta = up @ down
        deltas[name] = delta * (alpha / rank)
    return deltas
