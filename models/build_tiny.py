"""Create the embedded tiny Stable-Diffusion model in ``models/tiny-sd/`` (diffusers layout).

Same architecture family as SD1.5 (UNet2DConditionModel with cross-attention, AutoencoderKL,
CLIPTextModel, scaled-linear betas), shrunk so that a 20-step 64 px image takes about a second on
a laptop CPU. Weights come from a fixed seed; the committed safetensors files are the reference,
and this script reproduces them:

    python models/build_tiny.py          # rewrites models/tiny-sd/
    python models/build_tiny.py clip     # rewrites models/tiny-clip/
    python models/build_tiny.py refiner  # rewrites models/tiny-sdxl-refiner/

``tiny-clip`` is a tiny random CLIP (text and vision towers) for the CLIP metrics, so workflows
that score with CLIP run on a fresh machine ("embedded: tiny-clip"); like the tiny model's images,
its scores only show that the graph runs.

``tiny-sdxl-refiner`` is a random SDXL refiner: the shipped full-size refiner config
(models/configs/sdxl_refiner, stabilityai/stable-diffusion-xl-refiner-1.0's) with only the widths
shrunk, so every parameter name of the real refiner exists. It shares the world's VAE (as the
world models do), so it continues the latents of 'embedded: world-teacher' (Generate's refiner).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

OUT = Path(__file__).parent / "tiny-sd"
CLIP_OUT = Path(__file__).parent / "tiny-clip"
REFINER_OUT = Path(__file__).parent / "tiny-sdxl-refiner"
REFINER_CONFIG = Path(__file__).parent / "configs" / "sdxl_refiner"
SEED = 20261122
TOKENIZER = Path(__file__).parent / "tokenizers" / "clip"

UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
    attention_head_dim=8, norm_num_groups=16,
)
VAE = dict(
    sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=(16, 32, 32), norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
)
TEXT = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
    num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu",
)
# SD1.5's noise schedule; the Sampler node rebuilds schedulers from this config.
SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1,
)


def build(out: Path = OUT) -> dict[str, int]:
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**UNET)
    vae = AutoencoderKL(**VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT))
    scheduler = EulerDiscreteScheduler(**SCHEDULER)
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    text_encoder.save_pretrained(out / "text_encoder")
    scheduler.save_pretrained(out / "scheduler")
    counts = {name: sum(p.numel() for p in m.parameters())
              for name, m in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
    shutil.copytree(TOKENIZER, out / "tokenizer", dirs_exist_ok=True)
    # A standard model_index.json keeps the folder loadable by plain diffusers too.
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "image_encoder": [None, None],
        "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2) + "\n")
    (out / "README.md").write_text(
        f"Embedded tiny SD1-architecture model made by models/build_tiny.py (seed {SEED}).\n"
        f"Random weights for now. Parameters: {counts}.\n")
    return counts


def build_clip(out: Path = CLIP_OUT) -> int:
    torch.manual_seed(SEED + 1)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=32)
    model = CLIPModel(config)
    # fp16 halves the file; the CLIP metrics load it as fp32.
    model.to(torch.float16).save_pretrained(out)
    count = sum(p.numel() for p in model.parameters())
    (out / "README.md").write_text(
        f"Embedded tiny CLIP made by models/build_tiny.py (seed {SEED + 1}), random weights, {count} parameters.\n"
        "Its scores only show that a workflow runs; use a real CLIP folder for results.\n")
    return count


# Width-only changes to the real refiner's configs; depths, block types and the conditioning
# layout (addition_time_embed_dim 256, 5 time ids incl. the aesthetic score) stay as shipped.
# The widths keep the real ratios (1:2:4:4), so the same resnets carry a shortcut convolution.
REFINER_TEXT = dict(hidden_size=16, intermediate_size=64, num_attention_heads=2, projection_dim=16)
REFINER_UNET = dict(block_out_channels=[8, 16, 32, 32], attention_head_dim=[1, 2, 4, 4], norm_num_groups=8,
                    cross_attention_dim=16, sample_size=16)  # 64 px on the world VAE (4x)


def refiner_configs(config_dir: Path = REFINER_CONFIG) -> tuple[dict, dict]:
    """(unet config, text_encoder_2 config) of the tiny refiner: the real ones, narrower."""
    text = {**json.loads((config_dir / "text_encoder_2" / "config.json").read_text()), **REFINER_TEXT}
    unet = {**UNet2DConditionModel.load_config(config_dir / "unet"), **REFINER_UNET}
    # the pooled text embedding plus 5 time ids (original size, crop, aesthetic score) of 256 each
    unet["projection_class_embeddings_input_dim"] = text["projection_dim"] + 5 * unet["addition_time_embed_dim"]
    return unet, text


def build_refiner(out: Path = REFINER_OUT) -> dict[str, int]:
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(SEED + 2)
    unet_config, text_config = refiner_configs()
    unet = UNet2DConditionModel.from_config(unet_config)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))
    # fp16 on disk like the world models (loaded in the asked dtype)
    unet.to(torch.float16).save_pretrained(out / "unet")
    text_encoder_2.to(torch.float16).save_pretrained(out / "text_encoder_2")
    EulerDiscreteScheduler.from_pretrained(REFINER_CONFIG / "scheduler").save_pretrained(out / "scheduler")
    index = json.loads((REFINER_CONFIG / "model_index.json").read_text())
    (out / "model_index.json").write_text(json.dumps({**index, "_diffusers_version": diffusers.__version__},
                                                     indent=2) + "\n")
    counts = {name: sum(p.numel() for p in m.parameters())
              for name, m in (("unet", unet), ("text_encoder_2", text_encoder_2))}
    (out / "README.md").write_text(
        f"Embedded tiny SDXL refiner made by models/build_tiny.py (seed {SEED + 2}), random weights.\n"
        "The real refiner's architecture and parameter names (models/configs/sdxl_refiner) at small widths;\n"
        f"the world's VAE (models/world/vae) and the CLIP tokenizer are loaded with it. Parameters: {counts}.\n")
    return counts


if __name__ == "__main__":
    import sys

    builders = {"clip": build_clip, "refiner": build_refiner}
    print(builders[sys.argv[1]]() if sys.argv[1:] else build())
