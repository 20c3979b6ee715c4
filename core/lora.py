"""``LL_LORA_CONFIG``: which modules get LoRA adapters, with what rank, alpha and variant.

Target presets name diffusers/transformers module paths; :func:`resolve_targets` turns a preset
into the exact list of module names of a given model, which peft then wraps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KOHYA_CONV = "all_linear+conv (kohya)"
UNET_PRESETS = ("attention", "attention+ff", "all_linear", "all_linear+conv", KOHYA_CONV, "custom")
# kohya sd-scripts' LoRA network (networks/lora.py) adapts the Linear and Conv2d layers inside these
# UNet blocks only (the last three with conv_dim), and its loader drops every other module: conv_in,
# conv_out, time_embedding (and SDXL's add_embedding) are lost there, and in diffusers <= 0.32.
KOHYA_UNET_BLOCKS = ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D")
INITS = ("kaiming", "gaussian")  # peft: init_lora_weights=True (Kaiming-uniform A, zero B) / "gaussian"
VARIANTS = ("lora", "dora", "rslora", "loha", "lokr")
# LyCORIS kinds (peft's LoHaConfig / LoKrConfig): ΔW is a Hadamard / Kronecker product of factors.
LYCORIS = ("loha", "lokr")
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
    # Block-wise UNet settings (kohya's block_dims / block_alphas / down,mid,up_lr_weight), each a comma
    # list of key=value with key down, mid, up or a kohya block name (:data:`BLOCK_NAMES`); "" = none.
    block_ranks: str = ""
    block_alphas: str = ""
    block_lr_weights: str = ""

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"input 'variant' = {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if self.variant in LYCORIS and self.dropout:
            raise ValueError(f"input 'dropout' = {self.dropout:g}: dropout on the adapter's input exists for "
                             f"lora/dora/rslora only; peft's {self.variant} layers have none (set it to 0)")
        if self.variant in LYCORIS and self.init != "kaiming":
            raise ValueError(f"input 'init' = {self.init!r}: {self.variant} has peft's own init only "
                             "(Kaiming-uniform factors, one of them zero, so ΔW starts at 0): use 'kaiming'")
        for name in BLOCK_FIELDS:
            parse_blocks(name, getattr(self, name))
        if self.parameter_budget > 0 and self.block_ranks.strip():
            raise ValueError(f"input 'block_ranks' = {self.block_ranks!r}: a parameter_budget picks one rank for "
                             "every module; give block ranks or a budget, not both")

    @property
    def scale(self) -> float:
        """The factor the update B·A is multiplied by: α/r, or α/√r for rsLoRA (Kalajdzievski 2023)."""
        return self.alpha / (self.rank**0.5 if self.variant == "rslora" else self.rank)


def kohya_alpha(alpha: float, rank: int, variant: str) -> float:
    """The alpha a kohya file must hold so that loaders' alpha/rank equals the trained scale
    (rsLoRA scales by α/√r, so it stores α·√r)."""
    return alpha * rank**0.5 if variant == "rslora" else alpha


def peft_config(lcfg: LoRAConfigSpec, targets: list[str], rank: int, alpha: float):
    """The peft config that wraps ``targets`` with ``lcfg``'s adapter kind. LoHa and LoKr scale ΔW by
    alpha/rank like LoRA; ``use_effective_conv2d`` keeps a k×k convolution's kernel as its own factor
    (LyCORIS' Tucker/CP form, ``hada_t1/t2``, ``lokr_t2``, or a 4-D ``lokr_w2``), so the file says the
    kernel shape and Blend LoRAs can write a kernel-shaped LoRA from it; 1×1 convs stay plain."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    if lcfg.variant in LYCORIS:
        kind = LoHaConfig if lcfg.variant == "loha" else LoKrConfig
        return kind(r=rank, alpha=alpha, target_modules=targets, init_weights=True, use_effective_conv2d=True)
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


def lora_parameter_count(model, targets: list[str], rank: int | dict[str, int], variant: str = "lora") -> int:
    """Trainable parameters of an adapter of ``rank`` on ``targets`` (DoRA's magnitudes not counted);
    ``rank`` may be {module: rank} (block-wise ranks, :func:`block_settings`).
    LoRA: r·(in + out) per Linear, r·(in·k·k + out) per Conv2d (A is a k×k conv to r channels, B a 1×1
    conv back). LoHa (two such pairs): twice that, but a k×k conv holds 2·(r·(in + out) + r·r·k·k)
    (CP form, :func:`peft_config`). LoKr with out = a·b, in = c·d (peft's ``factorization``): a full
    a×c factor, and a b×d(×k×k) one, full when r ≥ max(b, d)/2, else r·(b + d) (+ r·r·k·k)."""
    import torch.nn as nn

    modules = dict(model.named_modules())
    per_module = rank if isinstance(rank, dict) else None
    total = 0
    for name in targets:
        m = modules[name]
        if per_module is not None:
            rank = per_module[name]
        if isinstance(m, nn.Linear):
            out, inp, kernel = m.out_features, m.in_features, 1
        else:
            out, inp = m.out_channels, m.in_channels // m.groups
            kernel = m.kernel_size[0] * m.kernel_size[1]
        if variant == "loha":
            total += 2 * rank * (out + inp * kernel) if kernel == 1 else 2 * rank * (out + inp + rank * kernel)
        elif variant == "lokr":
            from peft.tuners.lokr.layer import factorization

            (a, b), (c, d) = factorization(out), factorization(inp)  # a ≤ b, c ≤ d
            total += a * c
            if rank >= max(b, d) / 2:
                total += b * d * kernel
            else:
                total += rank * (b + d * kernel) if kernel == 1 else rank * (b + d + rank * kernel)
        else:
            total += rank * (out + inp * kernel)
    return total


def fit_budget(pipe, lcfg: LoRAConfigSpec) -> LoRAConfigSpec:
    """With a parameter budget, the one rank r (shared by every adapted component) whose trainable
    parameter count (:func:`lora_parameter_count`) comes closest to it: UNet only, text encoder(s)
    only and both compared at an equal budget, as in seed 003 (≈3 M each). LoRA's count is r times
    the rank-1 count; LoHa's (CP cores) and LoKr's are not linear in r, so r counts up to it."""
    import dataclasses

    if lcfg.parameter_budget <= 0:
        return lcfg
    parts = []
    if lcfg.train_unet:  # without the blocks an LR weight of 0 leaves out (block ranks and a budget are refused)
        targets = resolve_targets(pipe.unet, lcfg.targets, lcfg.custom_modules)
        parts.append((pipe.unet, [t for t, r in block_settings(lcfg, targets)[0].items() if r]))
    if lcfg.text_encoder_rank:
        for encoder in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2")):
            if encoder is not None:
                parts.append((encoder, resolve_targets(encoder, "attention", text_encoder=True)))

    def count(rank: int) -> int:
        return sum(lora_parameter_count(model, targets, rank, lcfg.variant) for model, targets in parts)

    budget = lcfg.parameter_budget
    if lcfg.variant in LYCORIS:  # counts grow with r, not in proportion: the first r reaching it, or the one below
        rank = 1
        while rank < 4096 and count(rank) < budget:
            rank += 1
        if rank > 1 and abs(count(rank - 1) - budget) <= abs(count(rank) - budget):
            rank -= 1
    else:
        rank = max(1, round(lcfg.parameter_budget / count(1)))
    return dataclasses.replace(lcfg, rank=rank, text_encoder_rank=rank if lcfg.text_encoder_rank else 0)


# Block-wise settings. kohya sd-scripts (networks/lora.py get_block_index) numbers the UNet's blocks
# as the original model's input/middle/output blocks: down_blocks.i.(resnets|attentions).j is IN(1+3i+j),
# down_blocks.i.downsamplers.0 IN(3i+3), mid_block MID, up_blocks.i.(resnets|attentions).j OUT(3i+j),
# up_blocks.i.upsamplers.0 OUT(3i+2). SD1: IN01..IN11, MID, OUT00..OUT11; SDXL: IN01..IN08, MID,
# OUT00..OUT08. IN00 (conv_in), time/add embeddings and conv_out are in no block: they keep the base settings.
BLOCK_GROUPS = ("down", "mid", "up")
BLOCK_NAMES = (*(f"IN{i:02d}" for i in range(1, 12)), "MID", *(f"OUT{i:02d}" for i in range(12)))
BLOCK_FIELDS = {"block_ranks": "rank", "block_alphas": "alpha", "block_lr_weights": "LR weight"}
_VALID_KEYS = "down, mid, up, IN01..IN11, MID, OUT00..OUT11 (SDXL: IN01..IN08, MID, OUT00..OUT08)"
_UPDOWN = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.|$)")


def block_of(module: str) -> str | None:
    """The kohya block name of a diffusers UNet module name, or None outside the blocks."""
    m = _UPDOWN.match(module)
    if m:
        side, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        index = 3 * i + (2 if kind in ("downsamplers", "upsamplers") else j)
        return f"IN{index + 1:02d}" if side == "down" else f"OUT{index:02d}"
    return "MID" if module == "mid_block" or module.startswith("mid_block.") else None


def _group(block: str) -> str:
    return "mid" if block == "MID" else "down" if block.startswith("IN") else "up"


def parse_blocks(field: str, text: str) -> dict[str, float]:
    """A block field's ``key=value`` list as {key: value}; keys are groups (down, mid, up) or block
    names (case and zero padding free: in1 = IN01). Ranks are whole numbers ≥ 0, alphas > 0, LR
    weights ≥ 0."""
    import math

    what, out = BLOCK_FIELDS[field], {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, sep, value = (x.strip() for x in item.partition("="))
        numbered = re.fullmatch(r"(IN|OUT)(\d{1,2})", key.upper())
        name = key.lower() if key.lower() in BLOCK_GROUPS else (
            f"{numbered[1]}{int(numbered[2]):02d}" if numbered else key.upper())
        if not sep or name not in BLOCK_GROUPS + BLOCK_NAMES:
            raise ValueError(f"input '{field}': {item!r} is not key=value with a key among {_VALID_KEYS}")
        if name in out:
            raise ValueError(f"input '{field}': {name} is given twice")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        valid = {"rank": number >= 0 and number.is_integer(), "alpha": 0 < number < math.inf,
                 "LR weight": 0 <= number < math.inf}[what]
        if not valid:
            needed = {"rank": "a whole number >= 0 (0 = no adapter)", "alpha": "a number > 0",
                      "LR weight": "a number >= 0 (0 = frozen)"}[what]
            raise ValueError(f"input '{field}': {key}={value!r}: the {what} must be {needed}")
        out[name] = int(number) if what == "rank" else number
    return out


def block_wise(lcfg: LoRAConfigSpec) -> bool:
    return any(getattr(lcfg, name).strip() for name in BLOCK_FIELDS)


def _lookup(table: dict, block: str | None, base):
    """A block's value: its own entry, else its group's, else the base (also outside the blocks)."""
    if block is None or block not in BLOCK_NAMES:
        return base
    return table.get(block, table.get(_group(block), base))


def block_settings(lcfg: LoRAConfigSpec, targets: list[str]) -> tuple[dict[str, int], dict[str, float],
                                                                       dict[str, float]]:
    """Each UNet target's rank, alpha and LR weight. A block without its own alpha keeps the base
    alpha (its scale is alpha/its rank), as kohya's block_alphas default. An LR weight of 0 gives the
    block rank 0, as kohya (remove_block_dims_and_alphas): frozen at its zero init, an adapter is the
    identity, so it is left out rather than carried untrained."""
    ranks_t, alphas_t, weights_t = (parse_blocks(name, getattr(lcfg, name)) for name in BLOCK_FIELDS)
    ranks, alphas, weights = {}, {}, {}
    for target in targets:
        block = block_of(target)
        weights[target] = _lookup(weights_t, block, 1.0)
        ranks[target] = _lookup(ranks_t, block, lcfg.rank) if weights[target] else 0
        alphas[target] = _lookup(alphas_t, block, lcfg.alpha)
    return ranks, alphas, weights


def _blocks_of(unet) -> list[str]:
    present = {block_of(name) for name, _ in unet.named_modules()}
    return [b for b in BLOCK_NAMES if b in present]


def check_blocks(lcfg: LoRAConfigSpec, unet) -> None:
    """Refuses a block name the UNet does not have (IN10 on SDXL), naming the model family and its blocks."""
    blocks = _blocks_of(unet)
    family = "SDXL" if unet.config.get("addition_embed_type") == "text_time" else "SD1"
    for name in BLOCK_FIELDS:
        missing = [k for k in parse_blocks(name, getattr(lcfg, name)) if k not in BLOCK_GROUPS + tuple(blocks)]
        if missing:
            raise ValueError(f"input '{name}': the {family} UNet has no block {', '.join(missing)}; its blocks "
                             f"are {', '.join(blocks)} (and the groups down, mid, up)")


def _patterns(values: dict[str, float], base: float) -> dict[str, float]:
    """peft's rank_pattern / alpha_pattern for per-module values. peft matches a key as the regex
    ``(.*\\.)?(key)$`` against each module's full name and takes the first key that matches
    (peft.utils.other.get_pattern_key), so a bare name would also match any module ending in it, and
    its dots any character. One key per value, the escaped full names of its modules: each matches
    exactly its own modules, and few keys keep peft's matching (keys × modules regexes) fast."""
    groups: dict[float, list[str]] = {}
    for module, value in values.items():
        if value != base:
            groups.setdefault(value, []).append(re.escape(module))
    return {"(?:" + "|".join(names) + ")": value for value, names in groups.items()}


def block_targets(lcfg: LoRAConfigSpec, unet, targets: list[str]) -> tuple[list[str], dict[str, dict]]:
    """The UNet targets that keep an adapter (rank > 0) and the peft config attributes
    (``rank_pattern``, ``alpha_pattern``) that give each its block's rank and alpha."""
    if not block_wise(lcfg):
        return targets, {}
    check_blocks(lcfg, unet)
    ranks, alphas, _ = block_settings(lcfg, targets)
    kept = [t for t in targets if ranks[t]]
    if not kept:
        raise ValueError(f"inputs 'block_ranks' = {lcfg.block_ranks!r} / 'block_lr_weights' = "
                         f"{lcfg.block_lr_weights!r} leave no targeted UNet module with an adapter (rank or LR "
                         "weight 0 everywhere); turn train_unet off for a text-encoder-only LoRA")
    return kept, {"rank_pattern": _patterns({t: ranks[t] for t in kept}, lcfg.rank),
                  "alpha_pattern": _patterns({t: alphas[t] for t in kept}, lcfg.alpha)}


def split_by_settings(state: dict, ranks: dict[str, int], alphas: dict[str, float]) -> dict[tuple, dict]:
    """A peft state (``<module>.lora_A.weight`` …) split by its modules' (rank, alpha), to write each
    part with its own file alpha."""
    parts: dict[tuple, dict] = {}
    for key, value in state.items():
        pieces = key.split(".")
        module = next((m for m in (".".join(pieces[:i]) for i in range(len(pieces) - 1, 0, -1)) if m in ranks), None)
        if module is None:
            raise ValueError(f"LoRA tensor {key!r} belongs to no trained UNet module")
        parts.setdefault((ranks[module], alphas[module]), {})[key] = value
    return parts


def kohya_network_args(lcfg: LoRAConfigSpec, family: str, unet=None, targets: list[str] = ()) -> dict[str, str]:
    """The block settings as kohya's network_args (what ``ss_network_args`` holds): block_dims and
    block_alphas over kohya's slots, SD1 25 (IN00..IN11, MID, OUT00..OUT11), SDXL 23 (embeddings,
    IN00..IN08, MID x3, OUT00..OUT08, out); the same as conv_block_dims/alphas when 3×3 convolutions
    inside the blocks train (kohya adapts those only then); down/mid/up_lr_weight (SD1 12/1/12, SDXL
    9/3/9 values). Slots without modules (IN00, embeddings, out) hold the base values."""
    if not block_wise(lcfg):
        return {}
    sdxl = family == "sdxl"
    n = 9 if sdxl else 12
    down, mid, up = [f"IN{i:02d}" for i in range(n)], ["MID"] * (3 if sdxl else 1), [f"OUT{i:02d}" for i in range(n)]
    slots = ([None] if sdxl else []) + down + mid + up + ([None] if sdxl else [])
    ranks_t, alphas_t, weights_t = (parse_blocks(name, getattr(lcfg, name)) for name in BLOCK_FIELDS)

    def rank(block):
        return _lookup(ranks_t, block, lcfg.rank) if _lookup(weights_t, block, 1.0) else 0

    def text(values):
        return ",".join(f"{v:g}" for v in values)

    args = {"block_dims": text(rank(b) for b in slots), "block_alphas": text(_lookup(alphas_t, b, lcfg.alpha)
                                                                             for b in slots)}
    if unet is not None:
        modules = dict(unet.named_modules())
        if any(block_of(t) and getattr(modules.get(t), "kernel_size", (1, 1)) != (1, 1) for t in targets):
            args["conv_block_dims"], args["conv_block_alphas"] = args["block_dims"], args["block_alphas"]
    if weights_t:
        for key, blocks in (("down_lr_weight", down), ("mid_lr_weight", mid), ("up_lr_weight", up)):
            args[key] = text(_lookup(weights_t, b, 1.0) for b in blocks)
    return args
