"""``LL_LORA_CONFIG``: which modules get LoRA adapters, with what rank, alpha and variant.

Target presets name diffusers/transformers module paths; :func:`resolve_targets` turns a preset
into the exact list of module names of a given model, which peft then wraps.
"""

from __future__ import annotations

from dataclasses import dataclass

KOHYA_CONV = "all_linear+conv (kohya)"
UNET_PRESETS = ("attention", "attention+ff", "all_linear", "all_linear+conv", KOHYA_CONV, "custom")
# kohya sd-scripts' LoRA network (networks/lora.py) adapts the Linear and Conv2d layers inside these
# UNet blocks only (the last three with conv_dim), and its loader drops every other module: conv_in,
# conv_out, time_embedding (and SDXL's add_embedding) are lost there, and in diffusers <= 0.32.
KOHYA_UNET_BLOCKS = ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D")
INITS = ("kaiming", "gaussian")  # peft: init_lora_weights=True (Kaiming-uniform A, zero B) / "gaussian"
VARIANTS = ("lora", "dora", "rslora")
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
TEXT_MLP = ("fc1", "fc2")


@dataclass(frozen=True)
class LoRAConfigSpec:
    rank: int = 8
    alpha: float = 8.0
    targets: str = "attention"
    custom_modules: tuple[str, ...] = ()
    text_encoder_rank: int = 0  # 0 = no text-encoder LoRA
    text_encoder_alpha: float = 0.0  # 0 = same as the rank
    train_unet: bool = True
    init: str = "kaiming"
    dropout: float = 0.0
    variant: str = "lora"
    parameter_budget: int = 0  # > 0: choose the rank(s) so the trainable count comes closest to it

    @property
    def scale(self) -> float:
        """The factor the update B·A is multiplied by: α/r, or α/√r for rsLoRA (Kalajdzievski 2023)."""
        return self.alpha / (self.rank**0.5 if self.variant == "rslora" else self.rank)


def kohya_alpha(alpha: float, rank: int, variant: str) -> float:
    """The alpha a kohya file must hold so that loaders' alpha/rank equals the trained scale
    (rsLoRA scales by α/√r, so it stores α·√r)."""
    return alpha * rank**0.5 if variant == "rslora" else alpha


def peft_config(lcfg: LoRAConfigSpec, targets: list[str], rank: int, alpha: float):
    """The peft config that wraps ``targets`` with ``lcfg``'s adapter kind."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=lcfg.dropout,
                      init_lora_weights=True if lcfg.init == "kaiming" else "gaussian",
                      use_dora=lcfg.variant == "dora", use_rslora=lcfg.variant == "rslora")


def _matches(name: str, suffixes) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def resolve_targets(model, preset: str, custom: tuple[str, ...] = (), text_encoder: bool = False) -> list[str]:
    """Full module names of ``model`` that the preset selects (sorted). Raises when nothing matches,
    naming what would have been valid."""
    import torch.nn as nn

    if preset not in UNET_PRESETS:
        raise ValueError(f"target preset {preset!r} is not one of {', '.join(UNET_PRESETS)}")
    modules = dict(model.named_modules())
    linear = {n for n, m in modules.items() if isinstance(m, nn.Linear)}
    conv = {n for n, m in modules.items() if isinstance(m, nn.Conv2d)}
    if preset == "custom":
        chosen = {n for n in linear | conv if _matches(n, custom)}
    elif text_encoder:
        names = TEXT_ATTENTION if preset == "attention" else TEXT_ATTENTION + TEXT_MLP
        chosen = {n for n in linear if _matches(n, names)}
    elif preset == "attention":
        chosen = {n for n in linear if _matches(n, ATTENTION)}
    elif preset == "attention+ff":
        chosen = {n for n in linear if _matches(n, ATTENTION + FEED_FORWARD)}
    elif preset == KOHYA_CONV:
        blocks = [n for n, m in modules.items() if type(m).__name__ in KOHYA_UNET_BLOCKS]
        chosen = {n for n in linear | conv if any(n.startswith(b + ".") for b in blocks)}
    else:
        chosen = linear | (conv if preset == "all_linear+conv" else set())
    if not chosen:
        raise ValueError(f"target modules {list(custom) if preset == 'custom' else preset!r} match no Linear or "
                         f"Conv2d module of {type(model).__name__}; e.g. {', '.join(sorted(linear)[:4])}")
    return sorted(chosen)


def lora_parameter_count(model, targets: list[str], rank: int) -> int:
    """Trainable parameters of plain LoRA on ``targets``: r·(in + out) per Linear, r·(in·k·k + out)
    per Conv2d (A is a k×k conv to r channels, B a 1×1 conv back)."""
    import torch.nn as nn

    modules = dict(model.named_modules())
    total = 0
    for name in targets:
        m = modules[name]
        if isinstance(m, nn.Linear):
            total += rank * (m.in_features + m.out_features)
        else:
            total += rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
    return total


def fit_budget(pipe, lcfg: LoRAConfigSpec) -> LoRAConfigSpec:
    """With a parameter budget, the one rank r (shared by every adapted component) whose plain-LoRA
    parameter count r·Σ(in + out) comes closest to it: UNet only, text encoder(s) only and both
    compared at an equal budget, as in seed 003 (≈3 M each)."""
    import dataclasses

    if lcfg.parameter_budget <= 0:
        return lcfg
    per_rank = 0
    if lcfg.train_unet:
        per_rank += lora_parameter_count(pipe.unet, resolve_targets(pipe.unet, lcfg.targets, lcfg.custom_modules), 1)
    if lcfg.text_encoder_rank:
        for encoder in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2")):
            if encoder is not None:
                per_rank += lora_parameter_count(encoder, resolve_targets(encoder, "attention", text_encoder=True), 1)
    rank = max(1, round(lcfg.parameter_budget / per_rank))
    return dataclasses.replace(lcfg, rank=rank, text_encoder_rank=rank if lcfg.text_encoder_rank else 0)
