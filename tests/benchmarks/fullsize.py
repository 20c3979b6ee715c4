"""SD1.5's full-size architecture with random weights, built from the shipped configs (no download)."""

from __future__ import annotations


def sd15_random_pipeline(scheduler=None):
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from loralab.core.checkpoints import CONFIGS, TOKENIZER

    root = CONFIGS["sd1"]
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=77),
        unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
        scheduler=scheduler or DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
