"""Text-to-image generation: prompts x images-per-prompt, one reproducible seed per image."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .measure import measure
from .pipeline import LabPipeline
from .prompts import Prompt
from .runtime import check_interrupted, progress
from .samplers import SamplerSpec
from .scores import ScoreTable

SCORE_KEYS = ("model", "sampler", "steps", "cfg", "category", "prompt", "seed")


@dataclass(frozen=True)
class GenerateSettings:
    steps: int = 20
    cfg: float = 7.5
    seed: int = 0
    width: int = 64
    height: int = 64
    images_per_prompt: int = 1
    negative_prompt: str = ""
    prompts_per_batch: int = 1  # prompts sampled in one UNet batch: faster, same images up to rounding
    # φ of rescaled CFG (Lin et al. 2023); None: 0.7 for a zero-terminal-SNR schedule, as the paper
    # recommends, else 0 (plain CFG)
    cfg_rescale: float | None = None


@dataclass(frozen=True)
class Refiner:
    """An SDXL refiner finishing the base model's schedule (the ensemble of experts of the SDXL
    paper, diffusers' ``denoising_end`` / ``denoising_start`` = 1 − ``fraction``): ``fraction`` is the
    refiner's share of the schedule (seed 003: 0.2). The base denoises the steps down to training
    timestep ``round(T·fraction)``, the refiner the rest from the base's latent, and the refiner's
    VAE decodes. ``fraction`` 0 runs the base alone, 1 the refiner alone. The aesthetic scores are the
    refiner's extra conditioning (diffusers' defaults 6 and 2.5)."""

    pipeline: LabPipeline
    fraction: float = 0.2
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5

    def cutoff(self, train_timesteps: int) -> int:
        # diffusers' discrete_timestep_cutoff with denoising_end = 1 − fraction, the same float expression
        return int(round(train_timesteps - (1 - self.fraction) * train_timesteps))


def refiner_problem(base: LabPipeline, refiner: LabPipeline, width: int, height: int) -> str | None:
    """Why ``refiner`` cannot finish ``base``'s images at this size (None when it can)."""
    if refiner.family != "sdxl_refiner":
        return (f"'{refiner.name}' is not an SDXL refiner (it is {refiner.family}); load an SDXL refiner "
                "(sd_xl_refiner_1.0.safetensors, a diffusers refiner folder or 'embedded: tiny-sdxl-refiner')")
    if base.family != "sdxl":
        return (f"the refiner finishes SDXL base images, but the pipeline '{base.name}' is {base.family}; "
                "use an SDXL base model")
    b, r = base.base, refiner.base
    if (b.unet.config.out_channels, b.vae_scale_factor) != (r.unet.config.in_channels, r.vae_scale_factor):
        return (f"'{refiner.name}' works on {r.unet.config.in_channels}-channel latents at 1/{r.vae_scale_factor} "
                f"size, the base '{base.name}' makes {b.unet.config.out_channels}-channel latents at "
                f"1/{b.vae_scale_factor} size; use a refiner of the same latent space")
    return refiner.size_problem(width, height)


def cfg_rescale_for(s: GenerateSettings, scheduler_config) -> float:
    if s.cfg_rescale is not None:
        if not 0.0 <= s.cfg_rescale <= 1.0:
            raise ValueError(f"cfg_rescale {s.cfg_rescale} is not in [0, 1]")
        return s.cfg_rescale
    return 0.7 if dict(scheduler_config).get("rescale_betas_zero_snr") else 0.0


def image_seeds(seed: int, images_per_prompt: int) -> list[int]:
    """Image k of every prompt uses ``seed + k``: a grid cell (prompt, seed) is reproducible on
    its own, and every prompt is sampled from the same noise for a fair comparison. Seeds wrap
    at 2**64 like ComfyUI's seed widget."""
    return [(seed + k) % 2**64 for k in range(images_per_prompt)]


def to_comfy_images(images: torch.Tensor) -> torch.Tensor:
    """diffusers ``[B,3,H,W]`` in 0..1 -> ComfyUI ``IMAGE`` float32 ``[B,H,W,3]`` on the CPU."""
    return images.permute(0, 2, 3, 1).float().cpu().contiguous()


def unet_model(lp: LabPipeline, prompts: list[str], negative: str, cfg: float, batch: int, width: int,
               height: int, aesthetic: tuple[float, float] = (6.0, 2.5)):
    """``model(x_in, t)`` -> the UNet's outputs for [cond] or [cond, uncond], ``batch`` images of each
    prompt (prompt-major, as diffusers' ``num_images_per_prompt``). The unconditional pass is
    skipped only at cfg 1, where it cannot change the result (ComfyUI's rule). An SDXL refiner is
    conditioned as diffusers' refiner pipeline does it: its one text encoder, and time ids of
    size, crop and ``aesthetic`` score (positive, negative)."""
    pipe, guided = lp.pipe, cfg != 1.0
    negative = [negative] * len(prompts) if negative else None
    added = {}
    if lp.family in ("sdxl", "sdxl_refiner"):
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
            prompts, device=lp.device, num_images_per_prompt=batch, do_classifier_free_guidance=guided,
            negative_prompt=negative)
        projection = pipe.text_encoder_2.config.projection_dim
        if lp.family == "sdxl":
            time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=cond.dtype,
                                              text_encoder_projection_dim=projection)
            time_ids = [time_ids] * 2
        else:
            time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), *aesthetic, (height, width),
                                              (0, 0), (height, width), dtype=cond.dtype,
                                              text_encoder_projection_dim=projection)
        pooled = [pooled, uncond_pooled] if guided else [pooled]
        time_ids = torch.cat([ids.to(lp.device).repeat(len(cond), 1) for ids in time_ids[:len(pooled)]])
        added = {"text_embeds": torch.cat(pooled), "time_ids": time_ids}
    else:
        cond, uncond = pipe.encode_prompt(prompts, lp.device, batch, guided, negative)
    context = torch.cat([cond, uncond] if guided else [cond])
    chunks = 2 if guided else 1

    def model(x_in, t):
        x = torch.cat([x_in] * chunks).to(lp.device, lp.dtype)  # a refiner may live on another device
        out = pipe.unet(x, t.float().to(lp.device), encoder_hidden_states=context,
                        added_cond_kwargs=added or None, return_dict=False)[0]
        return out.to(x_in.device).chunk(chunks)
    return model


@contextmanager
def vae_precision(lp: LabPipeline):
    """The VAE, in fp32 while in use when it is fp16 and says it overflows there (SDXL's), as
    diffusers' pipelines do."""
    vae = lp.pipe.vae
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        yield vae
    finally:
        if upcast:
            vae.to(torch.float16)


def decode(lp: LabPipeline, latents: torch.Tensor) -> torch.Tensor:
    """Latents (diffusers' units, scaled by the VAE's factor) -> images ``[B,3,H,W]`` in 0..1."""
    with vae_precision(lp) as vae:
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            latents = (latents * torch.tensor(std).view(shape).to(latents) / vae.config.scaling_factor
                       + torch.tensor(mean).view(shape).to(latents))
        else:
            latents = latents / vae.config.scaling_factor
        images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def encode(lp: LabPipeline, images: torch.Tensor) -> torch.Tensor:
    """ComfyUI ``IMAGE`` -> latents: the mode of the VAE's posterior, scaled (ComfyUI's VAE Encode
    takes the mode, not a sample)."""
    with vae_precision(lp) as vae:
        pixels = images.permute(0, 3, 1, 2).to(lp.device, vae.dtype) * 2 - 1
        return vae.encode(pixels).latent_dist.mode().float() * vae.config.scaling_factor


def _render(lp: LabPipeline, sampler: SamplerSpec, prompts: list[Prompt], s: GenerateSettings,
            start_for, extra_columns: dict, refiner: Refiner | None = None) -> tuple[torch.Tensor, ScoreTable]:
    """The loop shared by text-to-image and image-to-image: ``s.prompts_per_batch`` prompts per
    batch, per-image seeds, progress, cost rows (a batch's time split evenly over its images).
    ``start_for(index)`` gives prompt ``index``'s keyword arguments for :func:`ksampling.sample`
    (latent, strength, mask), each latent and mask one row. A ``refiner`` takes over from the
    base at its cutoff and decodes."""
    from .ksampling import cfg_denoiser, sample
    from .samplers import noise_levels

    if s.prompts_per_batch < 1:
        raise ValueError(f"prompts_per_batch must be at least 1, got {s.prompts_per_batch}")
    seeds = image_seeds(s.seed, s.images_per_prompt)
    levels = noise_levels(lp.pipe.scheduler.config)
    rescale = cfg_rescale_for(s, lp.pipe.scheduler.config)
    if refiner is not None:
        if problem := refiner_problem(lp, refiner.pipeline, s.width, s.height):
            raise ValueError(problem)
        if not 0 <= refiner.fraction <= 1:
            raise ValueError(f"refine fraction {refiner.fraction} is not in [0, 1]")
        if refiner.fraction == 0:
            refiner = None  # the base runs every step: exactly the base alone
    if refiner is not None:
        refined = refiner.pipeline
        refiner_levels = noise_levels(refined.pipe.scheduler.config)
        refiner_rescale = cfg_rescale_for(s, refined.pipe.scheduler.config)
        extra_columns = {**extra_columns, "refiner": refined.name, "refine_fraction": refiner.fraction}
    decoder = refiner.pipeline if refiner is not None else lp
    table = ScoreTable(SCORE_KEYS)
    batches = []
    f = lp.pipe.vae_scale_factor
    shape = (lp.pipe.unet.config.in_channels, s.height // f, s.width // f)

    def on_step():
        bar.update(1)
        check_interrupted()

    groups = [range(i, min(i + s.prompts_per_batch, len(prompts))) for i in range(0, len(prompts), s.prompts_per_batch)]
    with progress(len(groups) * s.steps, "generate") as bar, torch.no_grad():
        for group in groups:
            check_interrupted()
            images = len(group) * len(seeds)
            decoder.prepare_vae(s.width, s.height, images)
            with measure(lp.device) as cost:
                texts = [prompts[i].text for i in group]
                model = unet_model(lp, texts, s.negative_prompt, s.cfg, len(seeds), s.width, s.height)
                if refiner is not None:
                    refiner_model = unet_model(refined, texts, s.negative_prompt, s.cfg, len(seeds), s.width,
                                               s.height, (refiner.aesthetic_score, refiner.negative_aesthetic_score))
                    start = {"handoff": (refiner.cutoff(len(levels.sigmas)),
                                         cfg_denoiser(refiner_levels, refiner_model, s.cfg, refiner_rescale))}
                else:
                    start = {}
                start.update(_stack([start_for(i) for i in group], len(seeds)))
                latents = sample(sampler, cfg_denoiser(levels, model, s.cfg, rescale), levels, s.steps, seeds, shape,
                                 lp.device, on_step, prompts=len(group), **start)
                batches.append(to_comfy_images(decode(decoder, latents.to(decoder.device))))
            for i in group:
                for x in seeds:
                    table.rows.append({
                        "model": lp.name, "sampler": sampler.label, "steps": s.steps, "cfg": s.cfg,
                        "category": prompts[i].category, "prompt": prompts[i].text, "seed": x,
                        "width": s.width, "height": s.height, **extra_columns,
                        "seconds_per_image": cost.seconds / images,
                        "peak_memory_mb": cost.peak_memory_mb, "memory_kind": cost.memory_kind,
                    })
    return torch.cat(batches), table


def _stack(starts: list[dict], per_prompt: int) -> dict:
    """Per-prompt start arguments -> one batch's: each prompt's latent and mask row repeated for its
    images (prompt-major, as the noise)."""
    merged = dict(starts[0])
    for key in ("latent", "mask"):
        if key in merged:
            merged[key] = torch.cat([start[key].expand(per_prompt, *start[key].shape[1:]) for start in starts])
    return merged


def generate(lp: LabPipeline, sampler: SamplerSpec, prompts: list[Prompt],
             s: GenerateSettings, refiner: Refiner | None = None) -> tuple[torch.Tensor, ScoreTable]:
    """Text to image, as ComfyUI's KSampler from an empty latent. Returns ComfyUI images
    (prompt-major order) and a table with one row per image: its keys, the seconds per image and
    the peak memory of its batch. With a :class:`Refiner` (SDXL base + refiner), the refiner
    finishes the schedule from ``refiner.fraction``; the rows then name it and the fraction."""
    return _render(lp, sampler, prompts, s, lambda i: {}, {}, refiner)


def img2img(lp: LabPipeline, sampler: SamplerSpec, prompts: list[Prompt], s: GenerateSettings,
            init: torch.Tensor, strength: float, mask: torch.Tensor | None = None, refiner: Refiner | None = None):
    """Image to image (SDEdit), as KSampler with denoise = ``strength`` on the VAE-encoded ``init``
    (ComfyUI ``IMAGE``; one image for all prompts or one per prompt). Strength 0 returns the input
    unchanged; strength 1 ignores it and equals text to image from the same seed. With a ``MASK``
    (1 = repaint) only the masked area changes, as with ComfyUI's Set Latent Noise Mask. A
    ``refiner`` takes the steps below its cutoff (diffusers' img2img ``strength`` + ``denoising_end``,
    then the refiner's ``denoising_start``); where ``strength`` starts below the cutoff it runs them all."""
    if init.shape[0] not in (1, len(prompts)):
        raise ValueError(f"got {init.shape[0]} init images for {len(prompts)} prompts; give one image "
                         "for all prompts or one per prompt")
    height, width = init.shape[1:3]
    s = GenerateSettings(**{**s.__dict__, "width": width, "height": height})
    if strength <= 0:
        index = [min(i, init.shape[0] - 1) for i in range(len(prompts)) for _ in range(s.images_per_prompt)]
        return init[index].float().cpu(), ScoreTable(SCORE_KEYS)
    if strength >= 1 and mask is None:
        return generate(lp, sampler, prompts, s, refiner)
    with torch.no_grad():
        latents = encode(lp, init)

    def start_for(index):
        start = {"latent": latents[min(index, len(latents) - 1)][None], "strength": strength}
        if mask is not None:
            start["mask"] = mask[min(index, mask.shape[0] - 1)][None, None].to(lp.device)
        return start

    return _render(lp, sampler, prompts, s, start_for, {"strength": strength}, refiner)
