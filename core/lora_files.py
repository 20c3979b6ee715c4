"""LoRA files in the layout every UI loads: kohya keys with ``alpha`` and ``ss_*`` metadata.

UNet:  ``lora_unet_<diffusers module path, . -> _>.lora_down.weight / .lora_up.weight / .alpha``
SD1 text encoder: ``lora_te_text_model_encoder_layers_<i>_self_attn_q_proj…``; SDXL: ``lora_te1_``,
``lora_te2_``. transformers 5's CLIPTextModel has no ``text_model.`` level in its module paths;
ComfyUI only matches keys with it, so we add it back (REFERENCES.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .files import atomic_write

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
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


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


def module_index(pipe) -> dict[str, tuple[object, str]]:
    """kohya name -> (component, module path) for every Linear/Conv2d LoRA could target."""
    import torch.nn as nn

    index = {}
    prefixes = [("unet", "lora_unet")]
    if getattr(pipe, "text_encoder_2", None) is not None:
        prefixes += [("text_encoder", "lora_te1"), ("text_encoder_2", "lora_te2")]
    else:
        prefixes += [("text_encoder", "lora_te")]
    for component, prefix in prefixes:
        model = getattr(pipe, component)
        for path, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                index[kohya_name(path, prefix)] = (component, path)
    return index


def merged_copy(pipe, kohya: dict[str, torch.Tensor], unet_strength: float, text_strength: float):
    """A pipeline whose touched components are copies with W + strength·ΔW merged in (the
    original pipeline, shared with other nodes, is left alone). Returns (pipe, unmatched names)."""
    import copy

    deltas = delta_weights(kohya)
    index = module_index(pipe)
    touched = {index[name][0] for name in deltas if name in index}
    new = copy.copy(pipe)
    for component in touched:
        setattr(new, component, copy.deepcopy(getattr(pipe, component)))
    modules = {c: dict(getattr(new, c).named_modules()) for c in touched}
    unmatched = []
    with torch.no_grad():
        for name, delta in deltas.items():
            if name not in index:
                unmatched.append(name)
                continue
            component, path = index[name]
            strength = unet_strength if component == "unet" else text_strength
            weight = modules[component][path].weight
            weight += (strength * delta).reshape(weight.shape).to(weight.dtype)
    return new, unmatched
