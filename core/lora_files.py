"""LoRA files in the layout every UI loads: kohya keys with ``alpha`` and ``ss_*`` metadata.

UNet:  ``lora_unet_<diffusers module path, . -> _>.lora_down.weight / .lora_up.weight / .alpha``
SD1 text encoder: ``lora_te_text_model_encoder_layers_<i>_self_attn_q_proj…``; SDXL: ``lora_te1_``,
``lora_te2_``. transformers 5's CLIPTextModel has no ``text_model.`` level in its module paths;
ComfyUI only matches keys with it, so we add it back (REFERENCES.md).
LoHa/LoKr (LyCORIS) modules use the same module names with their factors as LyCORIS, ComfyUI
(comfy/weight_adapter/loha.py, lokr.py) and peft name them: ``.hada_w1_a``, ``.hada_w1_b``,
``.hada_w2_a``, ``.hada_w2_b`` (``.hada_t1``, ``.hada_t2``), ``.lokr_w1`` or ``.lokr_w1_a/_b``,
``.lokr_w2`` or ``.lokr_w2_a/_b`` (``.lokr_t2``), and ``.alpha``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from .choices import DORA_NORMS
from .files import atomic_write

BASE_MODEL_VERSION = {"sd1": "sd_v1", "sdxl": "sdxl_base_v1-0"}


_PEFT_PARTS = ((".lora_A.weight", "down"), (".lora_B.weight", "up"),
               (".lora_magnitude_vector.weight", "magnitude"), (".lora_magnitude_vector", "magnitude"))


# LyCORIS factors, named alike by peft (after the adapter name), LyCORIS and ComfyUI.
LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
LYCORIS_PARTS = LOHA_PARTS + LOKR_PARTS
# A ΔW that Blend LoRAs forms without a model to check it against: SD1/SDXL's largest weight is a
# 1280×1280×3×3 convolution (14.7 M values); a file claiming more is refused before any multiply.
MAX_BLEND_DELTA = 2**25


def _modules(peft_state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in peft_state.items():
        for part, name in _PEFT_PARTS + tuple(("." + p, p) for p in LYCORIS_PARTS):
            if key.endswith(part):
                grouped.setdefault(key[: -len(part)], {})[name] = value
                break
    return grouped


def kohya_name(module: str, prefix: str) -> str:
    if prefix.startswith("lora_te") and not module.startswith("text_model."):
        module = "text_model." + module
    return f"{prefix}_{module.replace('.', '_')}"


def to_kohya(peft_state: dict[str, torch.Tensor], alpha: float, prefix: str = "lora_unet",
             rank: int | None = None) -> dict[str, torch.Tensor]:
    """peft ``<module>.lora_A/B.weight`` tensors -> kohya keys. ``alpha`` is the effective one, so
    that alpha/rank is the trained scale (for rsLoRA pass α·√r). A DoRA magnitude becomes
    ``.dora_scale`` shaped ``[out, 1, …]`` (the LyCORIS/ComfyUI output-axis convention). peft LoHa/LoKr
    factors (``<module>.hada_w1_a`` …) keep their names (LyCORIS layout, :func:`_lycoris_tensors`);
    LoKr needs ``rank`` (the trained r) where a module's factors are both full."""
    out = {}
    for module, parts in _modules(peft_state).items():
        if any(p in LYCORIS_PARTS for p in parts):
            out.update(_lycoris_tensors(kohya_name(module, prefix), parts, alpha, rank))
            continue
        if not {"down", "up"} <= set(parts):
            raise ValueError(f"LoRA weights for {module!r} lack lora_A or lora_B")
        name = kohya_name(module, prefix)
        out[f"{name}.lora_down.weight"] = parts["down"].contiguous()
        out[f"{name}.lora_up.weight"] = parts["up"].contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
        if "magnitude" in parts:
            shape = (-1,) + (1,) * (parts["down"].ndim - 1)
            out[f"{name}.dora_scale"] = parts["magnitude"].reshape(shape).contiguous()
    return out


def _lycoris_tensors(name: str, parts: dict[str, torch.Tensor], alpha: float, rank: int | None):
    """A LoHa/LoKr module's file tensors. Scales: peft multiplies every LoHa/LoKr ΔW by alpha/r;
    ComfyUI (0.8) and LyCORIS by alpha/(factor rank) (LoHa: ``hada_w1_b.shape[0]``; LoKr: the rank of
    its decomposed factor, ``lokr_w1_b``/``lokr_w2_b.shape[0]``), which is r — except a LoKr module whose
    two Kronecker factors are both full: those loaders then ignore alpha and use 1. There alpha/r is
    folded into ``lokr_w1`` and alpha written as r (LyCORIS' own convention), so every loader merges
    what peft trained. A Tucker LoKr factor (``lokr_t2``) is written as the full ``lokr_w2`` it builds."""
    unknown = [p for p in parts if p not in LYCORIS_PARTS]
    if unknown:
        raise ValueError(f"LoRA module {name!r} mixes LoHa/LoKr factors with {unknown[0]!r}")
    if "lokr_t2" in parts:
        # ComfyUI 0.8 cannot apply a Tucker LoKr factor (torch.kron of its non-contiguous einsum fails, the
        # module is skipped with a logged error): write that factor whole, [b, d, kh, kw] (small: b·d ≈ √(out·in)).
        check_lora_shapes({f"{name}.{p}": v for p, v in parts.items()})
        w2 = torch.einsum("ijkl,jr,ip->prkl", parts["lokr_t2"], parts["lokr_w2_b"], parts["lokr_w2_a"])
        parts = {**{p: v for p, v in parts.items() if not p.startswith(("lokr_t2", "lokr_w2"))}, "lokr_w2": w2}
    out = {f"{name}.{p}": v.detach().contiguous() for p, v in parts.items()}
    if "lokr_w1" in parts and "lokr_w2" in parts:
        if rank is None:
            raise ValueError(f"LoKr module {name!r} has two full factors (no rank in the file): its rank is needed")
        out[f"{name}.lokr_w1"] = (parts["lokr_w1"].detach() * (alpha / rank)).contiguous()
        alpha = float(rank)
    out[f"{name}.alpha"] = torch.tensor(float(alpha))
    check_lora_shapes(out)
    return out


_UNET_BLOCKS = ("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_")


def kohya_dropped(kohya: dict[str, torch.Tensor]) -> list[str]:
    """UNet modules that kohya sd-scripts' loader (and every UI loading through it) and diffusers <= 0.32
    drop silently: those outside the down/mid/up blocks (conv_in, conv_out, time_embedding, SDXL's
    add_embedding), where kohya adapts only layers inside its block classes (core/lora.py)."""
    return sorted(name for name in _kohya_modules(kohya)
                  if name.startswith("lora_unet_") and not name.startswith(_UNET_BLOCKS))


def compatibility_warning(kohya: dict[str, torch.Tensor]) -> str | None:
    """The warning Save LoRA logs and records for a file others load only in part, or None."""
    dropped = kohya_dropped(kohya)
    if not dropped:
        return None
    return (f"{len(dropped)} of {len(_kohya_modules(kohya))} LoRA modules ({', '.join(dropped)}) are dropped "
            "silently by kohya sd-scripts (and UIs that load through it) and diffusers <= 0.32; ComfyUI and "
            "newer diffusers apply them. Train with targets 'all_linear+conv (kohya)' for a file that loads "
            "the same everywhere.")


def kohya_metadata(rank: int, alpha: float, family: str, extra: dict | None = None,
                   variant: str = "lora") -> dict[str, str]:
    """kohya's ``ss_*`` keys (strings, as safetensors metadata must be) plus our own settings. A LoHa/LoKr
    file says so as kohya + LyCORIS do: module ``lycoris.kohya``, ``ss_network_args`` ``{"algo": …}``."""
    module = "lycoris.kohya" if variant in ("loha", "lokr") else "networks.lora"
    meta = {"ss_network_module": module, "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
            "ss_base_model_version": BASE_MODEL_VERSION.get(family, family), "ss_v2": "False",
            "ss_sd_model_name": "", "loralab_version": "0.1.0"}
    if variant in ("loha", "lokr"):
        meta["ss_network_args"] = json.dumps({"algo": variant})
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value, default=str)
    return meta


def schedule_metadata(schedule: dict) -> dict[str, str]:
    """The noise schedule a LoRA trained with, as file metadata: ours in full (diffusers'
    scheduler-config keys) and kohya's two flags, which kohya, A1111 and other tools read."""
    return {"loralab_schedule": json.dumps(schedule, sort_keys=True),
            "ss_v_parameterization": str(schedule["prediction_type"] == "v_prediction"),
            "ss_zero_terminal_snr": str(bool(schedule["rescale_betas_zero_snr"]))}


def schedule_from_metadata(metadata: dict[str, str]) -> dict | None:
    """The schedule a LoRA file says it trained with (scheduler-config keys), or None when it says
    nothing: ours, else kohya's ``ss_v_parameterization`` / ``ss_zero_terminal_snr``. Checked, since
    a shared file is untrusted: only the schedule's keys, with values sampling can use."""
    from .noise import DIFFUSERS_BETAS, SD_SCHEDULE

    if "loralab_schedule" in metadata:
        try:
            schedule = json.loads(metadata["loralab_schedule"])
        except ValueError:
            raise ValueError("metadata 'loralab_schedule' is not JSON") from None
        if not isinstance(schedule, dict):
            raise ValueError("metadata 'loralab_schedule' is not an object")
    else:
        flags = {key: metadata[key] for key in ("ss_v_parameterization", "ss_zero_terminal_snr") if key in metadata}
        if not any(value == "True" for value in flags.values()):
            return None  # kohya writes False for an ordinary epsilon LoRA: nothing to change
        schedule = {"prediction_type": "v_prediction" if flags.get("ss_v_parameterization") == "True" else "epsilon",
                    "rescale_betas_zero_snr": flags.get("ss_zero_terminal_snr") == "True"}
    valid = {"prediction_type": lambda v: v in ("epsilon", "v_prediction"),
             "beta_schedule": lambda v: v in DIFFUSERS_BETAS.values(),
             "rescale_betas_zero_snr": lambda v: isinstance(v, bool),
             "num_train_timesteps": lambda v: isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 100_000,
             "beta_start": lambda v: isinstance(v, (int, float)) and 0 < v < 1,
             "beta_end": lambda v: isinstance(v, (int, float)) and 0 < v < 1,
             "trained_betas": lambda v: v is None or (isinstance(v, list) and 2 <= len(v) <= 100_000 and all(
                 isinstance(b, (int, float)) and 0 < b < 1 for b in v))}
    for key, value in schedule.items():
        if key not in valid or not valid[key](value):
            raise ValueError(f"metadata 'loralab_schedule' has {key!r} = {value!r}; valid keys: "
                             f"{', '.join(SD_SCHEDULE)}")
    return schedule


def save_lora_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


_KOHYA_PARTS = (".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale", *("." + p for p in LYCORIS_PARTS))


def _kohya_modules(kohya: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """module name -> {".lora_down.weight": tensor, ".lora_up.weight": …, ".alpha": …, ".dora_scale": …,
    ".hada_w1_a": … (LoHa/LoKr factors)}."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in kohya.items():
        for part in _KOHYA_PARTS:
            if key.endswith(part):
                grouped.setdefault(key[: -len(part)], {})[part] = value
                break
    return grouped


def _without_1x1(shape) -> tuple:
    """A [a, b, 1, 1] shape as [a, b]: a 1x1 convolution and a Linear layer take the same LoRA."""
    shape = tuple(shape)
    return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape


def _is_lycoris(parts: dict[str, torch.Tensor]) -> bool:
    return any(part[1:] in LYCORIS_PARTS for part in parts)


def lycoris_layout(name: str, parts: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], int | None]:
    """A LoHa/LoKr module's (ΔW shape as its factors build it, the rank alpha is divided by or None),
    from the shapes alone, or a ValueError naming the key. ``parts`` as :func:`_kohya_modules` groups
    them. The rank is ComfyUI's (0.8): LoHa ``hada_w1_b.shape[0]``; LoKr the decomposed factor's
    ``lokr_w2_b`` (else ``lokr_w1_b``) ``.shape[0]``, None when both factors are full (scale 1)."""

    def get(part):
        return parts.get("." + part)

    def refuse(part, needed):
        raise ValueError(f"key {name + '.' + part!r} has shape {list(get(part).shape)}; {needed}")

    def need(*names):
        missing = [n for n in names if get(n) is None]
        if missing:
            raise ValueError(f"LoRA module {name!r} has {', '.join(p[1:] for p in parts if p != '.alpha')} "
                             f"but no {missing[0]}")

    def matrix(*names):
        for part in names:
            if get(part).ndim != 2:
                refuse(part, "a factor here is a matrix")

    def pair(a, b):  # ΔW factor a @ b
        need(a, b)
        matrix(a, b)
        if get(a).shape[1] != get(b).shape[0]:
            refuse(b, f"its rows must equal {a}'s columns ({get(a).shape[1]})")
        return (get(a).shape[0], get(b).shape[1]), get(b).shape[0]

    def tucker(t, a, b):  # einsum("i j k l, j r, i p -> p r k l", t, b, a), as peft, LyCORIS and ComfyUI
        need(t, a, b)
        matrix(a, b)
        if get(t).ndim != 4:
            refuse(t, "a Tucker core is [rank, rank, kh, kw]")
        if get(a).shape[0] != get(t).shape[0]:
            refuse(a, f"it needs {get(t).shape[0]} rows ({t}'s first dimension)")
        if get(b).shape[0] != get(t).shape[1]:
            refuse(b, f"it needs {get(t).shape[1]} rows ({t}'s second dimension)")
        return (get(a).shape[1], get(b).shape[1], *get(t).shape[2:]), get(b).shape[0]

    if any(p in parts for p in (".lora_down.weight", ".lora_up.weight")):
        raise ValueError(f"LoRA module {name!r} mixes lora_down/lora_up with LoHa/LoKr factors")
    if any(part[1:] in LOHA_PARTS for part in parts):
        if any(part[1:] in LOKR_PARTS for part in parts):
            raise ValueError(f"LoRA module {name!r} mixes LoHa (hada_) and LoKr (lokr_) factors")
        if get("hada_t1") is not None or get("hada_t2") is not None:
            (s1, rank), (s2, _) = (tucker("hada_t1", "hada_w1_a", "hada_w1_b"),
                                   tucker("hada_t2", "hada_w2_a", "hada_w2_b"))
        else:
            (s1, rank), (s2, _) = pair("hada_w1_a", "hada_w1_b"), pair("hada_w2_a", "hada_w2_b")
        if s1 != s2:
            refuse("hada_w2_b", f"the hada_w2 factors build {list(s2)} and the hada_w1 factors {list(s1)}; "
                                "their elementwise product needs one shape")
        return s1, rank
    rank = None
    if get("lokr_w1") is not None:
        matrix("lokr_w1")
        s1 = tuple(get("lokr_w1").shape)
    else:
        s1, rank = pair("lokr_w1_a", "lokr_w1_b")
    if get("lokr_w2") is not None:
        if get("lokr_w2").ndim not in (2, 4):
            refuse("lokr_w2", "a full LoKr factor is [out, in] or [out, in, kh, kw]")
        s2 = tuple(get("lokr_w2").shape)
    elif get("lokr_t2") is not None:
        s2, rank = tucker("lokr_t2", "lokr_w2_a", "lokr_w2_b")
    else:
        s2, rank = pair("lokr_w2_a", "lokr_w2_b")
    return (s1[0] * s2[0], s1[1] * s2[1], *s2[2:]), rank


def _fits(delta_shape, weight_shape) -> bool:
    """Whether a ΔW of ``delta_shape`` updates a weight of ``weight_shape``. Loaders (ComfyUI, A1111) reshape
    ΔW to the weight, so a convolution's ΔW may come flattened to [out, in·kh·kw]; a 4-D one must match."""
    import math

    delta_shape, weight_shape = tuple(delta_shape), tuple(weight_shape)
    if len(delta_shape) == len(weight_shape) == 4:
        return delta_shape == weight_shape
    return (delta_shape[0] == weight_shape[0] and len(delta_shape) in (2, 4)
            and math.prod(delta_shape[1:]) == math.prod(weight_shape[1:]))


def check_lora_shapes(kohya: dict[str, torch.Tensor], weights: dict[str, tuple[str, torch.Size]] | None = None):
    """Raise a ValueError naming the key and the shapes unless every LoRA tensor fits: up [out, r(,1,1)],
    down [r, in(,kh,kw)] (or [r, in·kh·kw], which ComfyUI reshapes), one rank per module, a scalar alpha,
    a DoRA magnitude of ``out`` values, LoHa/LoKr factors that agree (:func:`lycoris_layout`); and with
    ``weights`` (kohya name -> (module path, weight shape) of the model it is applied to) the model's
    [out, in(,kh,kw)]. Checked before any multiply: a small file claiming large dimensions would
    otherwise allocate ΔW = up·down of any size."""
    for name, parts in _kohya_modules(kohya).items():
        if _is_lycoris(parts):
            shape, _ = lycoris_layout(name, parts)
            if ".alpha" in parts and parts[".alpha"].numel() != 1:
                raise ValueError(f"key {name + '.alpha'!r} has shape {list(parts['.alpha'].shape)}; "
                                 "alpha is one number")
            if ".dora_scale" in parts and parts[".dora_scale"].numel() != shape[0]:
                raise ValueError(f"key {name + '.dora_scale'!r} has shape {list(parts['.dora_scale'].shape)}; a DoRA "
                                 f"magnitude holds one value per output ({shape[0]})")
            if weights is not None and name in weights and not _fits(shape, weights[name][1]):
                path, weight = weights[name]
                raise ValueError(f"LoRA module {name!r}: its factors build an update of shape {list(shape)}; the "
                                 f"model's module {path!r} has weight {list(weight)}")
            continue
        down, up = parts.get(".lora_down.weight"), parts.get(".lora_up.weight")
        if down is None and up is None:
            continue
        if down is None or up is None:
            raise ValueError(f"LoRA module {name!r} has a {'lora_up' if down is None else 'lora_down'} weight "
                             "but no matching lora_down/lora_up")

        def refuse(part: str, needed: str, name=name, parts=parts):
            raise ValueError(f"key {name + part!r} has shape {list(parts[part].shape)}; {needed}")

        if down.ndim not in (2, 4):
            refuse(".lora_down.weight", "a lora_down weight is [rank, in] or [rank, in, kh, kw]")
        rank = down.shape[0]
        if up.ndim not in (2, 4) or up.shape[1] != rank or any(d != 1 for d in up.shape[2:]):
            refuse(".lora_up.weight", f"it needs [out, {rank}] (or [out, {rank}, 1, 1]) to match lora_down's "
                                      f"rank {rank}")
        if ".alpha" in parts and parts[".alpha"].numel() != 1:
            refuse(".alpha", "alpha is one number")
        if ".dora_scale" in parts and parts[".dora_scale"].numel() != up.shape[0]:
            refuse(".dora_scale", f"a DoRA magnitude holds one value per output ({up.shape[0]})")
        if weights is None or name not in weights:
            continue
        path, shape = weights[name]
        where = f"the model's module {path!r} has weight {list(shape)}, so it needs"
        needed_down, needed_up = (rank, *shape[1:]), (shape[0], rank) + (1, 1) * (len(shape) == 4)
        flattened = down.ndim == 2 and len(shape) == 4 and _fits((rank, *down.shape[1:]), (rank, *shape[1:]))
        if _without_1x1(down.shape) != _without_1x1(needed_down) and not flattened:
            refuse(".lora_down.weight", f"{where} {list(needed_down)}")
        if _without_1x1(up.shape) != _without_1x1(needed_up):
            refuse(".lora_up.weight", f"{where} {list(needed_up)}")


def _lycoris_delta(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """A LoHa/LoKr module's ΔW before scaling, as ComfyUI 0.8 and peft build it: LoHa (w1a·w1b)⊙(w2a·w2b),
    LoKr w1 ⊗ w2; Tucker factors by einsum("i j k l, j r, i p -> p r k l", t, b, a)."""

    def f(part):
        return parts["." + part].float()

    def build(t, a, b):
        if "." + t in parts:
            return torch.einsum("ijkl,jr,ip->prkl", f(t), f(b), f(a))
        return f(a) @ f(b)

    if ".hada_w1_a" in parts:
        return build("hada_t1", "hada_w1_a", "hada_w1_b") * build("hada_t2", "hada_w2_a", "hada_w2_b")
    w1 = f("lokr_w1") if ".lokr_w1" in parts else f("lokr_w1_a") @ f("lokr_w1_b")
    w2 = f("lokr_w2") if ".lokr_w2" in parts else build("lokr_t2", "lokr_w2_a", "lokr_w2_b")
    if w2.ndim == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1.contiguous(), w2.contiguous())  # kron views its inputs (as peft, contiguous)


def lycoris_deltas(kohya: dict[str, torch.Tensor], names=None) -> dict[str, torch.Tensor]:
    """kohya name -> ΔW = scale·(LoHa/LoKr product) for the LoHa/LoKr modules (all, or those in
    ``names``), shaped as the factors build it (a non-Tucker convolution's flattened to [out, in·kh·kw];
    :func:`merge_into` reshapes it to the weight). scale = alpha/rank with ComfyUI's rank
    (:func:`lycoris_layout`), 1 without alpha or for a LoKr with two full factors. Check shapes first."""
    deltas = {}
    for name, parts in _kohya_modules(kohya).items():
        if not _is_lycoris(parts) or (names is not None and name not in names):
            continue
        _, rank = lycoris_layout(name, parts)
        scale = float(parts[".alpha"]) / rank if ".alpha" in parts and rank is not None else 1.0
        deltas[name] = _lycoris_delta(parts) * scale
    return deltas


def delta_weights(kohya: dict[str, torch.Tensor], names=None) -> dict[str, torch.Tensor]:
    """kohya name -> ΔW = (alpha/rank)·up·down, for linear and convolution LoRAs, and LoHa/LoKr modules
    (:func:`lycoris_deltas`) (all of them, or those in ``names``). Check shapes first
    (:func:`check_lora_shapes`)."""
    deltas = lycoris_deltas(kohya, names)
    for key in kohya:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        if names is not None and name not in names:
            continue
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
    # ComfyUI's own LoRA trainer names UNet modules the original way, under "diffusion_model.".
    from .ldm_names import unet_ldm_keys

    weighted = [path for path, module in pipe.unet.named_modules() if hasattr(module, "weight")]
    for key, ldm in unet_ldm_keys([f"{p}.weight" for p in weighted], pipe.unet.config).items():
        index["diffusion_model." + ldm.removesuffix(".weight")] = ("unet", key.removesuffix(".weight"))
    return index


def offsets(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """Full weight/bias offsets (``<module>.diff`` / ``.diff_b``) that ComfyUI's trainer writes for
    layers it trains directly (norms, biases): module name -> (parameter, offset)."""
    out = {}
    for key, value in tensors.items():
        for suffix, parameter in ((".diff_b", "bias"), (".diff", "weight")):
            if key.endswith(suffix):
                out[key[: -len(suffix)] + "|" + parameter] = (parameter, value)
                break
    return out


def dora_weight(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, norm: str = "peft"):
    """DoRA's merged weight, per output row: peft (the paper) m·(W+ΔW)/‖W+ΔW‖; ComfyUI (0.8,
    ``weight_decompose``) m·(W+ΔW)/(‖W‖ + ε), ε = float32's machine epsilon: it normalises by the
    base weight's norm, so the change it makes differs from the one trained."""
    if norm not in DORA_NORMS:
        raise ValueError(f"DoRA norm {norm!r} is not one of {', '.join(DORA_NORMS)}")
    merged = weight.float() + delta
    reference = merged if norm == "peft" else weight.float()
    row_norm = reference.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (merged.ndim - 1))
    if norm == "comfyui":
        row_norm = row_norm + torch.finfo(torch.float32).eps
    return merged * (magnitude.float().reshape(row_norm.shape) / row_norm)


def lora_plan(pipe, kohya: dict[str, torch.Tensor]) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """What merging ``kohya`` into ``pipe`` changes, with every shape checked against the model
    first: [(kohya module name, component, module path, parameter)] and the LoRA's names the model
    lacks. No weight is computed here (an update is as large as its weight)."""
    extra = offsets(kohya)
    index = module_index(pipe)
    originals = {c: dict(getattr(pipe, c).named_modules()) for c in {c for c, _ in index.values()}}
    lora_names = [name for name, parts in _kohya_modules(kohya).items()
                  if ".lora_down.weight" in parts or _is_lycoris(parts)]
    check_lora_shapes(kohya, {name: (index[name][1], originals[index[name][0]][index[name][1]].weight.shape)
                              for name in lora_names if name in index})
    unmatched = [name for name in lora_names if name not in index]
    plan = [(name, *index[name], "weight") for name in lora_names if name in index]
    for key, (parameter, offset) in extra.items():
        name = key.split("|")[0]
        target = getattr(originals[index[name][0]][index[name][1]], parameter, None) if name in index else None
        if target is None:
            unmatched.append(name)
            continue
        if offset.numel() != target.numel():
            raise ValueError(f"key {name + ('.diff' if parameter == 'weight' else '.diff_b')!r} has shape "
                             f"{list(offset.shape)}; the model's {index[name][1]}.{parameter} is {list(target.shape)}")
        plan.append((name, *index[name], "offset:" + parameter))
    return plan, unmatched


def merge_into(pipe, kohya: dict[str, torch.Tensor], plan: list, unet_strength: float, text_strength: float,
               dora_norm: str = "peft", before=None) -> None:
    """Add ``plan``'s updates (:func:`lora_plan`) to ``pipe``'s weights in place: W + strength·ΔW,
    DoRA modules normalised as ``dora_norm`` says (:func:`dora_weight`), full offsets added.
    ``before(parameter)`` is called before a parameter first changes (to back it up)."""
    modules = {c: dict(getattr(pipe, c).named_modules()) for c in {c for _, c, _, _ in plan}}
    extra, seen = offsets(kohya), set()
    with torch.no_grad():
        for name, component, path, what in plan:
            module = modules[component][path]
            if hasattr(module, "base_layer"):  # wrapped by peft while a LoRA trains on top of this one
                module = module.base_layer
            strength = unet_strength if component == "unet" else text_strength
            offset = what.startswith("offset:")
            parameter = getattr(module, what.removeprefix("offset:"))
            if before is not None and id(parameter) not in seen:
                seen.add(id(parameter))
                before(parameter)
            if offset:
                value = extra[f"{name}|{what.removeprefix('offset:')}"][1]
                parameter += (strength * value.float()).reshape(parameter.shape).to(parameter.dtype)
                continue
            delta = delta_weights(kohya, {name})[name].reshape(parameter.shape)
            if f"{name}.dora_scale" in kohya:
                delta = dora_weight(parameter, delta, kohya[f"{name}.dora_scale"], dora_norm) - parameter.float()
            parameter += (strength * delta).to(parameter.dtype)


def merged_copy(pipe, kohya: dict[str, torch.Tensor], unet_strength: float, text_strength: float,
                dora_norm: str = "peft"):
    """A pipeline whose touched components are copies with the LoRA merged in (:func:`merge_into`);
    the original pipeline is left alone. Every shape is checked against the model first. Returns
    (pipe, unmatched names). Apply LoRA does not copy: it patches the shared modules while they are
    used (core/patches.py)."""
    import copy

    plan, unmatched = lora_plan(pipe, kohya)
    new = copy.copy(pipe)
    for component in {c for _, c, _, _ in plan}:
        setattr(new, component, copy.deepcopy(getattr(pipe, component)))
    merge_into(new, kohya, plan, unet_strength, text_strength, dora_norm)
    return new, unmatched


def read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """kohya-layout tensors and metadata from a LoRA file in kohya layout, in ComfyUI's trainer layout
    (``diffusion_model.<original module>.lora_up/down.weight``, ``.alpha``, ``.diff``, ``.diff_b``: kept
    as they are and matched to the model when applied), or in diffusers/peft layout
    (``unet.<module>.lora_A.weight``; alpha = rank unless peft's adapter metadata says otherwise).
    Only safetensors files are read."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"LoRA file {str(path)!r}: only .safetensors LoRA files are read (no pickles)")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"LoRA file {str(path)!r} is not a readable safetensors file ({e})") from None
    if any(k.startswith(("lora_unet_", "lora_te", "diffusion_model.")) for k in tensors):
        if not any(k.endswith((".lora_down.weight", ".diff", ".diff_b", ".hada_w1_a", ".lokr_w1", ".lokr_w1_a"))
                   for k in tensors):
            raise ValueError(f"LoRA file {str(path)!r} holds no LoRA weights (no .lora_down.weight, LoHa/LoKr "
                             "factor, .diff or .diff_b key)")
        return _checked(path, tensors), metadata  # kohya, or ComfyUI's trainer (resolved when applied)
    two_encoders = any(k.startswith("text_encoder_2.") for k in tensors)
    prefixes = {"unet.": "lora_unet", "text_encoder.": "lora_te1" if two_encoders else "lora_te",
                "text_encoder_2.": "lora_te2"}
    # diffusers keeps each component's peft config as "<component>.lora_alpha" etc.; peft's own
    # save_pretrained as plain "lora_alpha". Without it, alpha = rank (scale 1), as diffusers assumes.
    config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    out = {}
    for prefix, kohya_prefix in prefixes.items():
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        component = prefix[:-1]
        for module, parts in _modules(state).items():
            rank = parts["down"].shape[0] if "down" in parts else 0
            alpha = (config.get(f"{component}.alpha_pattern", {}).get(module)
                     or config.get(f"{component}.lora_alpha") or config.get("lora_alpha") or rank)
            out.update(to_kohya({f"{module}{p}": parts[n] for p, n in _PEFT_PARTS[:3] if n in parts},
                                float(alpha), kohya_prefix))
    suffixes = tuple(p for p, _ in _PEFT_PARTS)
    unknown = [k for k in tensors if not k.startswith(tuple(prefixes)) or not k.endswith(suffixes)]
    if unknown:
        raise ValueError(f"LoRA file {str(path)!r}: key {unknown[0]!r} is neither kohya nor diffusers/peft layout")
    if not out:
        raise ValueError(f"LoRA file {str(path)!r} holds no LoRA weights")
    return _checked(path, out), metadata


def _checked(path: Path, kohya: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors, once their shapes agree with each other (the model's are checked when applied)."""
    try:
        check_lora_shapes(kohya)
    except ValueError as e:
        raise ValueError(f"LoRA file {str(path)!r}: {e}") from None
    return kohya


@functools.lru_cache(maxsize=2)
def reference_index(family: str) -> dict[str, tuple[str, str]]:
    """kohya name -> (component, module path) in the family's architecture, built on the meta
    device from the shipped configs (no weights). Smaller models of the family (the embedded one)
    use a subset of these names."""
    from types import SimpleNamespace

    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .checkpoints import CONFIGS

    root = CONFIGS[family]
    with init_empty_weights():
        parts = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
                 "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))}
        if (root / "text_encoder_2").is_dir():
            config = CLIPTextConfig.from_pretrained(root / "text_encoder_2")
            parts["text_encoder_2"] = CLIPTextModelWithProjection(config)
    return module_index(SimpleNamespace(**parts))


def _peft_magnitude(dora_scale: torch.Tensor, conv: bool) -> torch.Tensor:
    """peft's DoRA magnitude shape: [out] for a Linear layer, [1, out, 1, 1] for a Conv2d."""
    magnitude = dora_scale.flatten()
    return magnitude.reshape(1, -1, 1, 1) if conv else magnitude


def _magnitude_key(component: str, path: str) -> str:
    """peft writes ``<module>.lora_magnitude_vector`` and adds ``.weight`` when loading; transformers
    (5.x), which loads diffusers' text-encoder LoRAs, does not, and would leave the magnitude at its
    initial value. ``….lora_magnitude_vector.weight`` loads through both, so text encoders get it."""
    suffix = "" if component == "unet" else ".weight"
    return f"{component}.{path}.lora_magnitude_vector{suffix}"


def to_diffusers(kohya: dict[str, torch.Tensor], family: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """kohya tensors -> diffusers/peft layout (``unet.<module>.lora_A.weight``, ``text_encoder…``,
    DoRA ``…lora_magnitude_vector``) with the peft config per component in ``lora_adapter_metadata``,
    as diffusers' ``save_lora_weights`` writes it, so ``load_lora_weights`` restores the same scale."""
    if any(k.endswith((".diff", ".diff_b")) for k in kohya):
        raise ValueError("full weight offsets (.diff/.diff_b, from ComfyUI's trainer) have no diffusers/peft "
                         "form; save this LoRA in kohya layout")
    lycoris = next((k for k in kohya if k.rsplit(".", 1)[-1] in LYCORIS_PARTS), None)
    if lycoris is not None:
        raise ValueError(f"LoHa/LoKr factors (e.g. {lycoris!r}) have no diffusers layout (diffusers' "
                         "load_lora_weights reads LoRA A/B pairs only); save this LoRA in kohya layout, which "
                         "ComfyUI, A1111 and LyCORIS load")
    index = reference_index(family)
    out, config = {}, {}
    for key, down in kohya.items():
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        if name not in index:
            raise ValueError(f"LoRA module {name!r} does not exist in the {family} architecture; save in kohya layout")
        component, path = index[name]
        out[f"{component}.{path}.lora_A.weight"] = down
        out[f"{component}.{path}.lora_B.weight"] = kohya[f"{name}.lora_up.weight"]
        if f"{name}.dora_scale" in kohya:
            out[_magnitude_key(component, path)] = _peft_magnitude(kohya[f"{name}.dora_scale"], down.ndim == 4)
        rank = down.shape[0]
        alpha = float(kohya.get(f"{name}.alpha", torch.tensor(float(rank))))
        config.setdefault(component, []).append((path, rank, alpha, f"{name}.dora_scale" in kohya))
    metadata = {}
    for component, entries in config.items():
        _, rank, alpha, dora = entries[0]
        metadata.update({f"{component}.r": rank, f"{component}.lora_alpha": alpha, f"{component}.use_dora": dora,
                         f"{component}.target_modules": sorted(p for p, *_ in entries),
                         f"{component}.rank_pattern": {p: r for p, r, _, _ in entries if r != rank},
                         f"{component}.alpha_pattern": {p: a for p, _, a, _ in entries if a != alpha}})
    return out, {"format": "pt", "lora_adapter_metadata": json.dumps(metadata, sort_keys=True)}


def blend(loras: list[dict[str, torch.Tensor]], weights: list[float],
          rank: int | None = None) -> dict[str, torch.Tensor]:
    """Σ wᵢ·ΔWᵢ as one kohya LoRA. Without ``rank`` the result is exact (the ranks are stacked);
    with it, each module's sum is truncated to that rank (the best rank-r approximation,
    Eckart–Young), as in style interpolation with a fixed file size. Only the factors are used:
    ΔW is as large as the weight a file claims, and there is no model here to check the claim.

    LoHa/LoKr modules are blended through their ΔW (:func:`_blend_deltas`): a Hadamard or Kronecker
    product does not add factor-wise (the sum of two LoHa updates is no LoHa of the same form), so the
    result is a LoRA by SVD of Σ wᵢ·ΔWᵢ — exact (every non-negligible singular value kept) without
    ``rank``. DoRA is refused: its magnitudes do not add."""
    if any(k.endswith(".dora_scale") for lora in loras for k in lora):
        raise ValueError("DoRA LoRAs cannot be blended (their magnitudes do not add); blend plain LoRAs")
    modules: dict[str, list[tuple[float, dict]]] = {}
    for lora, w in zip(loras, weights, strict=True):
        check_lora_shapes(lora)
        for name, parts in _kohya_modules(lora).items():
            if ".lora_down.weight" in parts or _is_lycoris(parts):
                modules.setdefault(name, []).append((w, parts))
    out = {}
    for name, entries in modules.items():
        if any(_is_lycoris(parts) for _, parts in entries):
            up, down, shape = _blend_deltas(name, entries, rank)
        else:
            up, down, shape = _blend_factors(name, entries, rank)
        r = down.shape[0]
        if len(shape) == 4:  # convolution: down keeps the kernel, up is a 1x1 conv
            up, down = up[:, :, None, None], down.reshape(r, *shape[1:])
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(r))
    return out


def _update_shape(name: str, parts: dict[str, torch.Tensor]) -> list[int]:
    if _is_lycoris(parts):
        return list(lycoris_layout(name, parts)[0])
    return [parts[".lora_up.weight"].shape[0], *parts[".lora_down.weight"].shape[1:]]


def _different_models(name: str, a, b):
    raise ValueError(f"LoRA module {name!r} updates a weight of shape {list(a)} in one LoRA and {list(b)} in "
                     "another: they are for different models")


def _blend_factors(name: str, entries: list, rank: int | None):
    """LoRA pairs only: stacked factors (exact), or their best rank-``rank`` approximation."""
    ups, downs, shape = [], [], _update_shape(name, entries[0][1])
    for w, parts in entries:
        down, up = parts[".lora_down.weight"].float(), parts[".lora_up.weight"].float().flatten(1)
        scale = float(parts.get(".alpha", torch.tensor(float(down.shape[0])))) / down.shape[0]
        if _update_shape(name, parts) != shape:
            _different_models(name, shape, _update_shape(name, parts))
        ups.append(w * scale * up)
        downs.append(down.flatten(1))
    up, down = torch.cat(ups, dim=1), torch.cat(downs)
    if rank is not None:
        up, down = _best_rank(up, down, rank)
    return up, down, shape


def _blend_deltas(name: str, entries: list, rank: int | None):
    """A module some LoHa/LoKr adapts: Σ wᵢ·ΔWᵢ formed as [out, in·kh·kw] (refused above
    ``MAX_BLEND_DELTA`` values, before any multiply), then up·down = its SVD truncated to ``rank``
    (or to its numerical rank). The kernel shape comes from an input that has one (a LoRA's 4-D
    lora_down, a Tucker core, a 4-D lokr_w2); where every input has it flattened, lora_down stays
    [r, in·kh·kw] — ComfyUI reshapes that to the weight (kohya and A1111 want a kernel-shaped one)."""
    import math

    shapes = [_update_shape(name, parts) for _, parts in entries]
    flat = [(s[0], math.prod(s[1:])) for s in shapes]
    for s, f in zip(shapes, flat, strict=True):
        if f != flat[0]:
            _different_models(name, shapes[0], s)
        if len(s) == 4 and len(shapes[0]) == 4 and s != shapes[0]:
            _different_models(name, shapes[0], s)
    out_dim, in_dim = flat[0]
    if out_dim * in_dim > MAX_BLEND_DELTA:
        raise ValueError(f"LoRA module {name!r} claims an update of shape {shapes[0]} ({out_dim * in_dim:,} values), "
                         f"more than any SD1/SDXL weight ({MAX_BLEND_DELTA:,}); LoHa/LoKr modules blend through "
                         "their full update, so this file is refused")
    total = torch.zeros(out_dim, in_dim)
    for w, parts in entries:
        if _is_lycoris(parts):
            delta = lycoris_deltas({f"{name}{p}": v for p, v in parts.items()})[name]
        else:
            down, up = parts[".lora_down.weight"].float(), parts[".lora_up.weight"].float().flatten(1)
            alpha = float(parts.get(".alpha", torch.tensor(float(down.shape[0]))))
            delta = up @ down.flatten(1) * (alpha / down.shape[0])
        total += w * delta.reshape(out_dim, in_dim)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    if rank is None:  # the numerical rank (numpy's matrix_rank tolerance), so the LoRA equals the sum
        rank = int((s > s.max() * max(out_dim, in_dim) * torch.finfo(torch.float32).eps).sum()) if s.numel() else 0
    k = max(1, min(rank, s.shape[0]))
    shape = next((sh for sh in shapes if len(sh) == 4), [out_dim, in_dim])
    return u[:, :k] * s[:k], vh[:k], shape


def _best_rank(up: torch.Tensor, down: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of the best rank-``rank`` approximation of up·down without forming it: with up = Q₁R₁
    and downᵀ = Q₂R₂, up·down = Q₁(R₁R₂ᵀ)Q₂ᵀ, so the SVD of the small core R₁R₂ᵀ gives the SVD of
    the product."""
    q1, r1 = torch.linalg.qr(up)
    q2, r2 = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(r1 @ r2.T, full_matrices=False)
    k = min(rank, s.shape[0])
    return (q1 @ u[:, :k]) * s[:k], vh[:k] @ q2.T
