"""Text-to-image generation: prompts x images-per-prompt, one reproducible seed per image."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .measure import measure
from .pipeline import LabPipeline
from .prompts import Prompt
from .runtime import check_interrupted, progress
from .samplers import SamplerSpec, build_scheduler
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


def image_seeds(seed: int, images_per_prompt: int) -> list[int]:
    """Image k of every prompt uses ``seed + k``: a grid cell (prompt, seed) is reproducible on
    its own, and every prompt is sampled from the same noise for a fair comparison. Seeds wrap
    at 2**64 like ComfyUI's seed widget."""
    return [(seed + k) % 2**64 for k in range(images_per_prompt)]


def to_comfy_images(images: torch.Tensor) -> torch.Tensor:
    """diffusers ``[B,3,H,W]`` in 0..1 -> ComfyUI ``IMAGE`` float32 ``[B,H,W,3]`` on the CPU."""
    return images.permute(0, 2, 3, 1).float().cpu().contiguous()


def _render(lp: LabPipeline, sampler: SamplerSpec, prompts: list[Prompt], s: GenerateSettings,
            pipe_for, inputs_for, extra_columns: dict) -> tuple[torch.Tensor, ScoreTable]:
    """The loop shared by text-to-image and image-to-image: one batch per prompt, per-image
    seeds, progress, cost rows. ``pipe_for(scheduler)`` gives the diffusers pipeline to call and
    ``inputs_for(index)`` the extra call arguments for prompt ``index``."""
    seeds = image_seeds(s.seed, s.images_per_prompt)
    table = ScoreTable(SCORE_KEYS)
    batches = []
    with progress(len(prompts) * s.steps, "generate") as bar:
        for index, prompt in enumerate(prompts):
            check_interrupted()
            pipe = pipe_for(build_scheduler(sampler, lp.pipe.scheduler.config, seeds))
            # CPU generators give the same noise on every device (as ComfyUI does).
            generators = [torch.Generator("cpu").manual_seed(x) for x in seeds]
            lp.prepare_vae(s.width, s.height, len(seeds))
            with measure(lp.device) as cost:
                out = pipe(prompt.text, negative_prompt=s.negative_prompt or None,
                           num_inference_steps=s.steps, guidance_scale=s.cfg, eta=sampler.eta,
                           num_images_per_prompt=len(seeds), generator=generators, output_type="pt",
                           callback_on_step_end=lambda *a: (bar.update(1), {})[1], **inputs_for(index)).images
            batches.append(to_comfy_images(out))
            for x in seeds:
                table.rows.append({
                    "model": lp.name, "sampler": sampler.label, "steps": s.steps, "cfg": s.cfg,
                    "category": prompt.category, "prompt": prompt.text, "seed": x,
                    "width": s.width, "height": s.height, **extra_columns,
                    "seconds_per_image": cost.seconds / len(seeds),
                    "peak_memory_mb": cost.peak_memory_mb, "memory_kind": cost.memory_kind,
                })
    return torch.cat(batches), table


def generate(lp: LabPipeline, sampler: SamplerSpec, prompts: list[Prompt],
             s: GenerateSettings) -> tuple[torch.Tensor, ScoreTable]:
    """Text to image. Returns ComfyUI images (prompt-major order) and a table with one row per
    image: its keys, the seconds per image and the peak memory of its batch."""
    return _render(lp, sampler, prompts, s, lp.with_scheduler, lambda i: {"width": s.width, "height": s.height}, {})


def img2img(lp: LabPipeline, sampler: SamplerSpec, prompts: list[Prompt], s: GenerateSettings,
            init: torch.Tensor, strength: float, mask: torch.Tensor | None = None):
    """Image to image (SDEdit): noise ``init`` (ComfyUI ``IMAGE``; one image for all prompts or
    one per prompt) to ``strength`` of the schedule and denoise with the prompt. Strength 0
    returns the input unchanged; strength 1 ignores it and equals text to image from the same
    seed. With a ``MASK`` (1 = repaint) only the masked area changes."""
    if init.shape[0] not in (1, len(prompts)):
        raise ValueError(f"got {init.shape[0]} init images for {len(prompts)} prompts; give one image "
                         "for all prompts or one per prompt")
    height, width = init.shape[1:3]
    s = GenerateSettings(**{**s.__dict__, "width": width, "height": height})
    if strength <= 0:
        index = [min(i, init.shape[0] - 1) for i in range(len(prompts)) for _ in range(s.images_per_prompt)]
        return init[index].float().cpu(), ScoreTable(SCORE_KEYS)
    if strength >= 1 and mask is None:
        return generate(lp, sampler, prompts, s)
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    auto = AutoPipelineForInpainting if mask is not None else AutoPipelineForImage2Image

    def pipe_for(scheduler):
        pipe = auto.from_pipe(lp.pipe, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def inputs_for(index):
        i = min(index, init.shape[0] - 1)
        inputs = {"image": init[i:i + 1].permute(0, 3, 1, 2).to(lp.device), "strength": strength}
        if mask is not None:
            inputs["mask_image"] = mask[min(index, mask.shape[0] - 1)][None, None].to(lp.device)
            inputs.update(width=width, height=height)
        return inputs

    return _render(lp, sampler, prompts, s, pipe_for, inputs_for, {"strength": strength})
