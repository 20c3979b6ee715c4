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


def generate(lp: LabPipeline, sampler: SamplerSpec, prompts: list[Prompt],
             s: GenerateSettings) -> tuple[torch.Tensor, ScoreTable]:
    """Return ComfyUI images (prompt-major order) and a table with one row per image:
    its keys, the seconds per image and the peak memory of its batch."""
    seeds = image_seeds(s.seed, s.images_per_prompt)
    table = ScoreTable(SCORE_KEYS)
    batches = []
    with progress(len(prompts) * s.steps, "generate") as bar:
        for prompt in prompts:
            check_interrupted()
            pipe = lp.with_scheduler(build_scheduler(sampler, lp.pipe.scheduler.config, seeds))
            # CPU generators give the same noise on every device (as ComfyUI does).
            generators = [torch.Generator("cpu").manual_seed(x) for x in seeds]
            lp.prepare_vae(s.width, s.height, len(seeds))
            with measure(lp.device) as cost:
                out = pipe(prompt.text, negative_prompt=s.negative_prompt or None,
                           num_inference_steps=s.steps, guidance_scale=s.cfg, eta=sampler.eta,
                           width=s.width, height=s.height, num_images_per_prompt=len(seeds),
                           generator=generators, output_type="pt",
                           callback_on_step_end=lambda *a: (bar.update(1), {})[1]).images
            batches.append(to_comfy_images(out))
            for x in seeds:
                table.rows.append({
                    "model": lp.name, "sampler": sampler.label, "steps": s.steps, "cfg": s.cfg,
                    "category": prompt.category, "prompt": prompt.text, "seed": x,
                    "width": s.width, "height": s.height,
                    "seconds_per_image": cost.seconds / len(seeds),
                    "peak_memory_mb": cost.peak_memory_mb, "memory_kind": cost.memory_kind,
                })
    return torch.cat(batches), table
