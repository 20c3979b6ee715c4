"""Test fixtures: write diffusers/transformers weights in the original (LDM) single-file layout
that SD1.x/SDXL checkpoints use, so loading can be tested offline on tiny models.

The inverse of diffusers' ``convert_ldm_*`` functions (single_file_utils.py); the tests check the
round trip through diffusers' own converters, so a wrong key here fails loudly.
"""

from __future__ import annotations

from loralab.core.ldm_names import unet_ldm_keys

VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
def _rename(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_to_ldm(state: dict, config) -> dict:
    names = unet_ldm_keys(state, config)
    return {"model.diffusion_model." + names[k]: v for k, v in state.items()}


def vae_to_ldm(state: dict, config) -> dict:
    n = len(config["block_out_channels"])
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        coder = parts[0]
        if len(parts) > 2 and parts[1] in ("down_blocks", "up_blocks"):
            i = int(parts[2]) if parts[1] == "down_blocks" else n - 1 - int(parts[2])
            where = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] == "resnets":
                ldm = f"{coder}.{where}.{i}.block.{parts[4]}." + _rename(".".join(parts[5:]), VAE_RESNET)
            else:  # downsamplers / upsamplers
                ldm = f"{coder}.{where}.{i}.{where}sample." + ".".join(parts[5:])
        elif len(parts) > 2 and parts[1] == "mid_block":
            if parts[2] == "resnets":
                ldm = f"{coder}.mid.block_{int(parts[3]) + 1}." + _rename(".".join(parts[4:]), VAE_RESNET)
            else:
                ldm = f"{coder}.mid.attn_1." + _rename(".".join(parts[4:]), VAE_ATTENTION)
                if value.ndim == 2:  # LDM stores the attention projections as 1x1 convolutions
                    value = value[:, :, None, None]
        else:
            ldm = key.replace("conv_norm_out", "norm_out")
        out["first_stage_model." + ldm] = value
    return out


def clip_to_ldm(state: dict, prefix: str) -> dict:
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def openclip_to_ldm(state: dict, prefix: str = "conditioner.embedders.1.model.") -> dict:
    out = {}
    for key, value in state.items():
        k = key.removeprefix("text_model.")
        if k == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif k == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif k.startswith("final_layer_norm."):
            out[prefix + "ln_final." + k.split(".")[-1]] = value
        elif k == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif k.startswith("encoder.layers."):
            layer, rest = k.split(".")[2], ".".join(k.split(".")[3:])
            base = f"{prefix}transformer.resblocks.{layer}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                kind = rest.split(".")[2]
                name = base + f"attn.in_proj_{kind}"
                out.setdefault(name, {})[rest.split(".")[1]] = value
            else:
                rest = (rest.replace("self_attn.out_proj", "attn.out_proj").replace("layer_norm1", "ln_1")
                        .replace("layer_norm2", "ln_2").replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj"))
                out[base + rest] = value
    import torch

    for name, value in list(out.items()):
        if isinstance(value, dict):
            out[name] = torch.cat([value["q_proj"], value["k_proj"], value["v_proj"]])
    return out
