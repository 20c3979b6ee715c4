"""The shipped world models: they load offline with their architectures, follow held-out prompts
(adherence >= 0.8 with the default sampler), and their images are world images (domain FID far
below the random model's), and the larger SDXL-architecture teacher follows them better than the
SD1.5-architecture student (on 300 held-out prompts 0.910 vs 0.868, models/world/evaluation.json;
on the challenging ones 0.780 vs 0.699; on these 60, 0.892 vs 0.870)."""

from __future__ import annotations

import pytest
import torch

from loralab.core.generate import GenerateSettings, generate
from loralab.core.pipeline import WORLD_DIR, load_pipeline
from loralab.core.samplers import SamplerSpec
from loralab.core.world import sample_scenes, world_prompts
from loralab.core.world.evaluator import DomainFeatures, adherence, load_evaluator, render_scenes

PROMPTS, SEED = 60, 777  # held-out captions, 20 per category


@pytest.fixture(scope="module")
def evaluator():
    return load_evaluator()


@pytest.fixture(scope="module")
def prompts():
    return world_prompts(PROMPTS, SEED)


def images_of(name: str, prompts) -> torch.Tensor:
    """One image per prompt with the Sampler/Generate nodes' defaults (euler, 20 steps, CFG 7.5), 20
    prompts per batch (the same images up to float rounding, ~2.5x faster)."""
    lp = load_pipeline(name, "fp32", "cpu")
    settings = GenerateSettings(steps=20, cfg=7.5, seed=0, prompts_per_batch=20)
    images, _ = generate(lp, SamplerSpec("euler"), prompts, settings)
    return images


@pytest.fixture(scope="module")
def scores(evaluator, prompts):
    from loralab.core.metrics.fid import fid_kid

    real = render_scenes(sample_scenes(PROMPTS, SEED, split="heldout", distinct=True))  # the prompts' scenes
    out = {}
    for name in ("embedded: world-student", "embedded: world-teacher", "embedded: tiny-sd"):
        images = images_of(name, prompts)
        hits = adherence(evaluator, images, [p.text for p in prompts])
        domain = fid_kid(images, real, DomainFeatures(evaluator), kid_subset_size=PROMPTS)
        out[name] = {"adherence": float(hits["adherence"].mean()), "fid": domain["fid"]}
    print(out)
    return out


def test_the_world_models_have_sd15_and_sdxl_architectures():
    student = load_pipeline("embedded: world-student", "fp32", "cpu")
    teacher = load_pipeline("embedded: world-teacher", "fp32", "cpu")
    assert (student.family, type(student.pipe).__name__) == ("sd1", "StableDiffusionPipeline")
    assert (teacher.family, type(teacher.pipe).__name__) == ("sdxl", "StableDiffusionXLPipeline")
    assert teacher.pipe.unet.config.addition_embed_type == "text_time"
    assert teacher.pipe.unet.config.cross_attention_dim == (teacher.pipe.text_encoder.config.hidden_size
                                                           + teacher.pipe.text_encoder_2.config.hidden_size)
    # the real CLIP vocabulary: <start> a red circle <end>
    assert student.pipe.tokenizer("a red circle").input_ids == [49406, 320, 736, 7117, 49407]
    count = {lp.name: sum(p.numel() for p in lp.pipe.unet.parameters()) for lp in (student, teacher)}
    assert count["embedded: world-teacher"] > 1.3 * count["embedded: world-student"]
    assert student.pipe.vae.config.scaling_factor == teacher.pipe.vae.config.scaling_factor != 0.18215
    shipped = sum(f.stat().st_size for f in WORLD_DIR.rglob("*.safetensors") if ".pretrain" not in str(f))
    assert shipped <= 30 * 2**20, f"{shipped / 2**20:.1f} MB of world models"


def test_both_world_models_follow_held_out_prompts(scores):
    assert scores["embedded: world-student"]["adherence"] >= 0.8
    assert scores["embedded: world-teacher"]["adherence"] >= 0.8
    assert scores["embedded: tiny-sd"]["adherence"] < 0.4  # the evaluator is not fooled by noise


def test_the_teacher_follows_prompts_better_than_the_student(scores):
    assert scores["embedded: world-teacher"]["adherence"] > scores["embedded: world-student"]["adherence"]


def test_the_world_models_images_are_world_images(scores):
    for name in ("embedded: world-student", "embedded: world-teacher"):
        # 60 images give a biased FID (high for every set): a third of the random model's is far below it
        assert scores[name]["fid"] < 0.33 * scores["embedded: tiny-sd"]["fid"], name
