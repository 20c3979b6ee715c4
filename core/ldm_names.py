"""Parameter names of the original (LDM/SGM) Stable Diffusion UNet for a diffusers UNet.

Single-file checkpoints and ComfyUI (its models and its own LoRA trainer) name UNet parameters
the original way (``input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight``); diffusers names
them by block (``down_blocks.0.attentions.0...``). This is the inverse of diffusers'
``convert_ldm_unet_checkpoint``; tests/test_checkpoints.py checks the round trip through it.
"""

from __future__ import annotations

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def rename_prefix(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_ldm_keys(keys, config) -> dict[str, str]:
    """diffusers UNet parameter name -> original name (without the ``model.diffusion_model.`` prefix)."""
    keys = list(keys)
    lpb = config["layers_per_block"]
    up_with_attention = {int(k.split(".")[1]) for k in keys if k.startswith("up_blocks.") and ".attentions." in k}
    out = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] in ("down_blocks", "up_blocks"):
            i, kind, j, rest = int(parts[1]), parts[2], parts[3], ".".join(parts[4:])
            inner = rename_prefix(rest, RESNET) if kind == "resnets" else rest
            if parts[0] == "down_blocks":
                if kind == "downsamplers":
                    ldm = f"input_blocks.{(i + 1) * (lpb + 1)}.0.op.{rest.removeprefix('conv.')}"
                else:
                    ldm = f"input_blocks.{i * (lpb + 1) + int(j) + 1}.{0 if kind == 'resnets' else 1}.{inner}"
            elif kind == "upsamplers":
                ldm = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if i in up_with_attention else 1}.{rest}"
            else:
                ldm = f"output_blocks.{i * (lpb + 1) + int(j)}.{0 if kind == 'resnets' else 1}.{inner}"
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            inner = rename_prefix(rest, RESNET) if kind == "resnets" else rest
            ldm = f"middle_block.{2 * j if kind == 'resnets' else 1}.{inner}"
        else:
            ldm = rename_prefix(key, UNET_TOP)
        out[key] = ldm
    return out
