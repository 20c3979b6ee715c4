"""Recipes for the procedural world's shipped models in ``models/world/``.

    python models/build_world.py evaluator   # trains evaluator.safetensors (~12 min on 2 CPU cores)
    python models/build_world.py vae         # trains the world VAE in vae/ (~18 min)
    python models/build_world.py student     # pretrains world-student in student/ (~55 min, 1 thread)
    python models/build_world.py teacher     # pretrains world-teacher in teacher/ (~55 min, 1 thread)
    python models/build_world.py evaluate    # samples both on held-out prompts: student.json, teacher.json

student and teacher may run at the same time (one thread each).

The VAE recipe is a first version: 2,500 steps (10.5 min) reached 25.6 dB PSNR on held-out scenes
and the evaluator read 0.89 of the caption attributes in its reconstructions (0.98 in the originals:
small shapes blur, colours drift), too low a ceiling for the world student; it needs more steps or
width before its weights ship.

The recipe is deterministic on one machine (fixed seeds, one thread); the committed file is the
reference. Held-out accuracy per head is measured on scenes of another seed and written beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from safetensors.torch import save_file

from loralab.core.world.evaluator import WEIGHTS, accuracy, degrade, render_scenes, train_evaluator, world_scenes

HELDOUT_SEED, HELDOUT_IMAGES = 999, 3000
# The embedded tiny model's VAE architecture (models/build_tiny.py): 64 px -> 16x16x4 latents.
VAE = dict(sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
           block_out_channels=(32, 48, 64), norm_num_groups=8,
           down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)


def build_evaluator() -> None:
    start = time.perf_counter()
    model = train_evaluator()
    seconds = time.perf_counter() - start
    scenes = world_scenes(HELDOUT_IMAGES, HELDOUT_SEED)
    clean = render_scenes(scenes)
    report = {"train_seconds": round(seconds, 1), "heldout_images": HELDOUT_IMAGES,
              "accuracy_clean": accuracy(model, scenes, clean),
              "accuracy_degraded": accuracy(model, scenes, degrade(clean, torch.Generator().manual_seed(1)))}
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(WEIGHTS),
              metadata={"recipe": "models/build_world.py evaluator"})
    (WEIGHTS.parent / "evaluator.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def heldout_reconstructions(vae):
    """(scenes, renders, latent means, decoded renders) of 600 held-out scenes of every variant."""
    vae.eval()
    held = world_scenes(600, HELDOUT_SEED)
    clean = render_scenes(held)
    with torch.no_grad():
        latents = vae.encode(clean.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
        rec = ((vae.decode(latents).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    return held, clean, latents, rec


def build_vae(steps: int = 2000, batch: int = 24, seed: int = 0) -> None:
    """AutoencoderKL on rendered scenes of every variant: L1 + MSE reconstruction and a KL weight of
    1e-6 (SD's VAE recipe without its LPIPS and GAN terms, which flat shapes do not need); the
    scaling factor is 1 / std of the latents, as SD's 0.18215 was chosen."""
    from diffusers import AutoencoderKL

    from loralab.core.world.evaluator import CONTENT, HEADS, adherence, load_evaluator
    from loralab.core.world.scene import caption

    torch.manual_seed(seed)
    scenes = world_scenes(steps * batch // 4, seed)  # each image seen about 4 times
    x = render_scenes(scenes).permute(0, 3, 1, 2) * 2 - 1
    vae = AutoencoderKL(**VAE)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        xb = x[torch.randint(len(x), (batch,), generator=gen)]
        posterior = vae.encode(xb).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        loss = (rec - xb).abs().mean() + ((rec - xb) ** 2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 250 == 0:
            print(f"step {step + 1}/{steps}: loss {loss.item():.4f}", flush=True)
    seconds = time.perf_counter() - start
    held, clean, latents, rec = heldout_reconstructions(vae)
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    evaluator = load_evaluator()
    base = [i for i, s in enumerate(held) if s.style != "concept"]
    texts = [caption(held[i]) for i in base]
    hits = adherence(evaluator, rec[base], texts)
    report = {"train_seconds": round(seconds, 1), "steps": steps, "batch": batch,
              "scaling_factor": vae.config.scaling_factor,
              "adherence_per_attribute": {k: float(v.nanmean()) for k, v in hits.items() if k != "adherence"},
              "psnr_db": float(10 * torch.log10(1 / ((rec - clean) ** 2).mean())),
              "adherence_of_reconstructions": float(adherence(evaluator, rec[base], texts)["adherence"].mean()),
              "adherence_of_originals": float(adherence(evaluator, clean[base], texts)["adherence"].mean()),
              "heads": list(CONTENT), "n_heldout": len(held), "style_classes": list(HEADS["style"])}
    vae.to(torch.float16).save_pretrained(WEIGHTS.parent / "vae")  # fp16 on disk, loaded as fp32
    (WEIGHTS.parent / "vae.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def finetune_vae_decoder(steps: int = 1500, batch: int = 24, seed: int = 1) -> None:
    """Second stage, as SD's ft-MSE VAE: the encoder (so the latent space the UNets learn in) stays
    frozen and the decoder trains on, with pixels of the shapes weighted 4x (the first stage got
    backgrounds right but blurred the shapes' colours)."""
    from diffusers import AutoencoderKL

    from loralab.core.world.evaluator import CONTENT, adherence, load_evaluator
    from loralab.core.world.scene import caption

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(WEIGHTS.parent / "vae", torch_dtype=torch.float32)
    vae.requires_grad_(False)
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in trained:
        p.requires_grad_(True)
    scenes = world_scenes(steps * batch // 3, seed + 100)
    x = render_scenes(scenes).permute(0, 3, 1, 2) * 2 - 1
    opt = torch.optim.AdamW(trained, lr=5e-4, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-4, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        xb = x[torch.randint(len(x), (batch,), generator=gen)]
        with torch.no_grad():
            z = vae.encode(xb).latent_dist.sample(generator=gen)
        rec = vae.decode(z).sample
        background = xb.flatten(2).median(dim=2).values[:, :, None, None]
        weight = 1 + 3 * ((xb - background).abs().amax(1, keepdim=True) > 0.1).float()
        loss = (weight * ((rec - xb).abs() + (rec - xb) ** 2)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 250 == 0:
            print(f"decoder step {step + 1}/{steps}: loss {loss.item():.4f}", flush=True)
    seconds = time.perf_counter() - start
    held, clean, latents, rec = heldout_reconstructions(vae)
    evaluator = load_evaluator()
    base = [i for i, s in enumerate(held) if s.style != "concept"]
    hits = adherence(evaluator, rec[base], [caption(held[i]) for i in base])
    report = json.loads((WEIGHTS.parent / "vae.json").read_text())
    report["decoder_finetune"] = {
        "train_seconds": round(seconds, 1), "steps": steps, "batch": batch,
        "psnr_db": float(10 * torch.log10(1 / ((rec - clean) ** 2).mean())),
        "adherence_of_reconstructions": float(hits["adherence"].mean()),
        "adherence_per_attribute": {k: float(hits[k].nanmean()) for k in CONTENT}}
    vae.to(torch.float16).save_pretrained(WEIGHTS.parent / "vae")
    (WEIGHTS.parent / "vae.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["decoder_finetune"], indent=2))


# The world student: SD1.5's architecture (UNet2DConditionModel with cross-attention in the lower
# blocks, one CLIP text encoder read at its last layer, the real CLIP tokenizer), shrunk.
TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407,
            pad_token_id=49407, hidden_act="quick_gelu")
STUDENT_UNET = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                    block_out_channels=(32, 64, 96), norm_num_groups=16, cross_attention_dim=32, attention_head_dim=8,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
# The world teacher: SDXL's architecture (two text encoders read at their penultimate layers and
# concatenated, the second's pooled projection plus size/crop ids as added conditioning, deeper
# transformers in the lowest block, linear projections), wider and deeper than the student.
TEACHER_UNET = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                    block_out_channels=(48, 96, 96), norm_num_groups=16, cross_attention_dim=64,
                    attention_head_dim=8, transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
                    addition_embed_type="text_time", addition_time_embed_dim=8,
                    projection_class_embeddings_input_dim=6 * 8 + 32,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
# SD1.5's and SDXL's noise schedule (they share it).
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)
# Pretraining phases, each from the previous one's weights: scenes drawn (train half of the
# captions) from a data seed, optimizer steps, batch, peak LR (warmup, then cosine decay).
PRETRAIN = {
    "student": [dict(scenes=30_000, data_seed=0, steps=4_000, batch=48, lr=6e-4),
                dict(scenes=30_000, data_seed=1, steps=3_000, batch=48, lr=3e-4)],
    "teacher": [dict(scenes=30_000, data_seed=0, steps=3_200, batch=48, lr=5e-4),
                dict(scenes=20_000, data_seed=1, steps=1_200, batch=48, lr=2.5e-4),
                dict(scenes=30_000, data_seed=2, steps=3_000, batch=48, lr=2.5e-4)],
}


def fresh_pipeline(kind: str, seed: int = 0):
    """A randomly initialised world pipeline around the trained world VAE."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from loralab.core.checkpoints import _tokenizers
    from loralab.core.pipeline import LabPipeline

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(WEIGHTS.parent / "vae", torch_dtype=torch.float32)
    scheduler = EulerDiscreteScheduler(**SCHEDULER)
    if kind == "student":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT)),
                                       unet=UNet2DConditionModel(**STUDENT_UNET), scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                                       **_tokenizers("sd1"))
        return LabPipeline(pipe, "world-student", "sd1")
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT)),
                                     text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**TEXT)),
                                     unet=UNet2DConditionModel(**TEACHER_UNET), scheduler=scheduler,
                                     **_tokenizers("sdxl"))
    return LabPipeline(pipe, "world-teacher", "sdxl")


def save_world_model(lp, kind: str):
    """Write ``lp``'s own components to models/world/<kind>/: fp16 on disk (half the size; loaded as
    fp32 on CPUs). model_index.json names every component; the VAE and tokenizers are shared
    (core/pipeline.py passes them in), so plain diffusers loads the folder given vae= and tokenizer=."""
    out = WEIGHTS.parent / kind
    names = ["unet", "text_encoder"] + (["text_encoder_2"] if kind == "teacher" else [])
    for name in names:
        copy.deepcopy(getattr(lp.pipe, name)).to(torch.float16).save_pretrained(out / name)
    lp.pipe.scheduler.save_pretrained(out / "scheduler")
    lp.pipe.save_config(out)
    return out, names


def build_world_model(kind: str, seed: int = 0) -> None:
    """Full fine-tuning from random weights (UNet and text encoders together) with LoRA Lab's own
    trainer: min-SNR-5 weighting, 10 % caption dropout for classifier-free guidance, cosine LR, in
    the phases of ``PRETRAIN``. Checkpoints every 500 steps in models/world/.pretrain-<kind>[-k]/:
    a killed run resumes, and a finished phase is loaded from its last checkpoint, not retrained."""
    from safetensors.torch import load_file

    from loralab.core.noise import NoiseStrategy
    from loralab.core.train import TrainSpec, finetune_from_images
    from loralab.core.world import world_dataset

    lp = fresh_pipeline(kind, seed)
    names = ["unet", "text_encoder"] + (["text_encoder_2"] if kind == "teacher" else [])
    report = {"kind": kind, "seed": seed, "phases": []}
    for k, phase in enumerate(PRETRAIN[kind]):
        folder = WEIGHTS.parent / (f".pretrain-{kind}" + (f"-{k + 1}" if k else ""))
        final = folder / f"checkpoint-{phase['steps']:07d}" / "adapter.safetensors"
        if final.is_file():
            weights = load_file(final)
            for name in names:
                getattr(lp.pipe, name).load_state_dict({key[len(name) + 1:]: v for key, v in weights.items()
                                                        if key.startswith(name + ".")})
            report["phases"].append({**phase, "loaded_from": str(final.relative_to(WEIGHTS.parent))})
            continue
        data = world_dataset("base", phase["scenes"], seed=phase["data_seed"])
        spec = TrainSpec(steps=phase["steps"], batch_size=phase["batch"], lr=phase["lr"], lr_schedule="cosine",
                         warmup_steps=200, weight_decay=0.01, max_grad_norm=1.0, seed=seed + k,
                         checkpoint_every=500, caption_dropout=0.1)
        start = time.perf_counter()
        lp, result = finetune_from_images(lp, data.images, data.captions, NoiseStrategy(loss_weighting="min_snr"),
                                          spec, text_encoder=True, checkpoint_dir=folder)
        losses = torch.tensor(result.losses)
        report["phases"].append({**phase, "train_seconds": round(time.perf_counter() - start, 1),
                                 "loss_first_100": float(losses[:100].mean()),
                                 "loss_last_100": float(losses[-100:].mean())})
    out, names = save_world_model(lp, kind)
    report["parameters"] = {n: sum(p.numel() for p in getattr(lp.pipe, n).parameters()) for n in names}
    (out / "train.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


# What "default sampler" means: the Sampler and Generate nodes' defaults.
DEFAULT_SAMPLING = dict(sampler="euler", steps=20, cfg=7.5)
EVAL_PROMPTS, EVAL_SEED = 300, 4242


def evaluate_model(name: str, prompts: int = EVAL_PROMPTS) -> dict:
    """Adherence per attribute and category on held-out prompts (one image each, default sampler),
    and the domain FID/KID against renders of the same captions."""
    from loralab.core.generate import GenerateSettings, generate
    from loralab.core.metrics.fid import fid_kid
    from loralab.core.pipeline import load_pipeline
    from loralab.core.samplers import SamplerSpec
    from loralab.core.world import sample_scenes, world_prompts
    from loralab.core.world.evaluator import DomainFeatures, adherence, load_evaluator

    scenes = sample_scenes(prompts, EVAL_SEED, split="heldout", distinct=True)  # the prompts' own scenes
    asked = world_prompts(prompts, EVAL_SEED)
    lp = load_pipeline(name, "fp32", "cpu")
    start = time.perf_counter()
    images, _ = generate(lp, SamplerSpec(DEFAULT_SAMPLING["sampler"]), asked,
                         GenerateSettings(steps=DEFAULT_SAMPLING["steps"], cfg=DEFAULT_SAMPLING["cfg"], seed=0))
    seconds = time.perf_counter() - start
    evaluator = load_evaluator()
    hits = adherence(evaluator, images, [p.text for p in asked])
    categories = {c: float(hits["adherence"][[i for i, p in enumerate(asked) if p.category == c]].mean())
                  for c in sorted({p.category for p in asked})}
    domain = fid_kid(images, render_scenes(scenes), DomainFeatures(evaluator), kid_subset_size=100)
    return {"model": name, "prompts": prompts, **DEFAULT_SAMPLING, "seconds_per_image": seconds / prompts,
            "adherence": float(hits["adherence"].mean()),
            "per_attribute": {k: float(v.nanmean()) for k, v in hits.items() if k != "adherence"},
            "per_category": categories, "domain_fid": domain["fid"], "domain_kid": domain["kid_mean"]}


EXAMPLE_PROMPTS = ("a large red circle on a blue background", "two small yellow stars on a black background",
                   "a small white triangle on a green background in the top left corner",
                   "a close-up of a purple heart on a yellow background",
                   "three small orange squares on a grey background", "a medium blue hexagon on a pink background")


def examples() -> None:
    """README's pictures: the example prompts (listed in README) with each world model, the Sampler
    node's defaults and seed 0, side by side at 2x (nearest neighbour, so pixels stay pixels)."""
    import numpy as np
    from PIL import Image

    from loralab.core.generate import GenerateSettings, generate
    from loralab.core.pipeline import load_pipeline
    from loralab.core.prompts import Prompt
    from loralab.core.samplers import SamplerSpec

    out = WEIGHTS.parent / "examples"
    out.mkdir(exist_ok=True)
    for kind in ("student", "teacher"):
        lp = load_pipeline(f"embedded: world-{kind}", "fp32", "cpu")
        images, _ = generate(lp, SamplerSpec(DEFAULT_SAMPLING["sampler"]), [Prompt(p) for p in EXAMPLE_PROMPTS],
                             GenerateSettings(steps=DEFAULT_SAMPLING["steps"], cfg=DEFAULT_SAMPLING["cfg"], seed=0))
        strip = np.concatenate(list((images.numpy() * 255).round().astype("uint8")), axis=1)
        Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST).save(
            out / f"{kind}.png", optimize=True)


def evaluate() -> None:
    report = {name: evaluate_model(f"embedded: {name}") for name in ("world-student", "world-teacher", "tiny-sd")}
    (WEIGHTS.parent / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


RECIPES = {"evaluator": build_evaluator, "vae": build_vae, "vae-decoder": finetune_vae_decoder,
           "student": lambda: build_world_model("student"), "teacher": lambda: build_world_model("teacher"),
           "evaluate": evaluate, "examples": examples}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=list(RECIPES))
    what = parser.parse_args().what
    torch.set_num_threads(2 if what == "vae" else 1)
    RECIPES[what]()
