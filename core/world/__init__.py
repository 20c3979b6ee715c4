"""The procedural world: 64 px scenes of simple shapes with template captions, deterministic from a
seed, with style variants and a DreamBooth concept (see ``scene``). Nothing is shipped as image
files: datasets and prompts are drawn on demand."""

from __future__ import annotations

from ..datasets import Dataset
from ..prompts import Prompt
from .scene import CATEGORIES, CONCEPT_CLASS, STYLES, VARIANTS, Scene, caption, parse_caption, sample_scenes, split_of

__all__ = ["CATEGORIES", "STYLES", "VARIANTS", "Scene", "caption", "parse_caption", "sample_scenes", "split_of",
           "world_dataset", "world_prompts", "concept_class_prompt"]


def world_dataset(variant: str, count: int, seed: int, categories=CATEGORIES, size: int = 64) -> Dataset:
    """A training set of ``count`` rendered scenes (the train half of the caption space)."""
    from .render import render_batch  # numpy and PIL only when images are drawn

    scenes = sample_scenes(count, seed, tuple(categories), variant, split="train")
    return Dataset(render_batch(scenes, size), [caption(s) for s in scenes],
                   [f"world {variant} seed {seed} #{i} ({s.category})" for i, s in enumerate(scenes)])


def world_prompts(count: int, seed: int, categories=CATEGORIES, variant: str = "base",
                  split: str | None = "heldout") -> list[Prompt]:
    """Distinct prompts with their seed-000 category; by default from the held-out half, never
    trained on."""
    return [Prompt(caption(s), s.category)
            for s in sample_scenes(count, seed, tuple(categories), variant, split, distinct=True)]


def concept_class_prompt(background: str = "grey") -> str:
    """The concept's class alone (prior preservation, and the 'not for the class' check)."""
    return f"a {CONCEPT_CLASS} on a {background} background"
