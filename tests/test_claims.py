"""The seed studies' claims, end to end on the world (reduced sizes).

Each test trains on the embedded world student and reads the result with the world evaluator, so
a wrong sign, a wrong target or a LoRA that never reaches the UNet fails here though every unit
test passes. Every claim runs for training seeds 0, 1 and 2; CI runs seed 0 (about 2.7 minutes
for the four claims on 2 cores) and ``LORALAB_SLOW=1`` runs the other two. The thresholds are
stated in each test and hold on all three seeds; README's "Research claims on the world" lists
the figures per seed."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from loralab.core.distill import LCMSpec
from loralab.core.generate import GenerateSettings, generate
from loralab.core.lab_lora import apply_lora
from loralab.core.lora import LoRAConfigSpec
from loralab.core.metrics.pixel import mse, ssim
from loralab.core.noise import NoiseStrategy
from loralab.core.pipeline import LabPipeline, load_pipeline
from loralab.core.prompts import Prompt
from loralab.core.samplers import SamplerSpec
from loralab.core.train import TrainSpec, train_from_images
from loralab.core.world import concept_class_prompt, sample_scenes, world_dataset, world_prompts
from loralab.core.world.evaluator import adherence, load_evaluator, style_probability

SEEDS = [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]
EULER = SamplerSpec("euler")


@pytest.fixture(scope="module")
def student():
    return load_pipeline("embedded: world-student", "fp32", "cpu")


@pytest.fixture(scope="module")
def evaluator():
    return load_evaluator()


def render(lp, prompts, steps=20, cfg=7.5, seed=0, sampler=EULER, per_prompt=1) -> torch.Tensor:
    images, _ = generate(lp, sampler, prompts,
                         GenerateSettings(steps=steps, cfg=cfg, seed=seed, images_per_prompt=per_prompt,
                                                          prompts_per_batch=24))
    return images


def with_lora(lp: LabPipeline, lora, name: str) -> LabPipeline:
    """As Apply LoRA gives it: a view of the shared student with the LoRA merged in while used."""
    return apply_lora(lp, lora, 1.0, 1.0, name=name)[0]


def mean_adherence(evaluator, images, prompts) -> float:
    return float(adherence(evaluator, images, [p.text for p in prompts])["adherence"].mean())


@pytest.mark.parametrize("seed", SEEDS)
def test_a_style_lora_learns_its_style_and_keeps_the_content(student, evaluator, seed):
    """Seed 004: a LoRA on 32 hand-drawn scenes (200 steps) makes 48 held-out prompts hand-drawn
    (World Style up by more than 0.2, from about 0.23) while adherence drops by less than 0.1.
    Hand-drawn, not pastel: pastel changes the very attribute adherence reads (colour), and the
    world VAE's reconstructions of pastel scenes keep only 0.60 of their colours (README)."""
    data = world_dataset("wobbly", 32, seed)
    lora = train_from_images(student, data.images, data.captions, NoiseStrategy(),
                             LoRAConfigSpec(rank=8, alpha=8.0, targets="attention+ff"),
                             TrainSpec(steps=200, batch_size=8, lr=2e-3, seed=seed))
    prompts = world_prompts(48, 100 + seed, variant="wobbly")
    base = render(student, prompts, seed=seed)
    styled = render(with_lora(student, lora, "hand-drawn"), prompts, seed=seed)
    gain = float(style_probability(evaluator, styled, "wobbly").mean() -
                 style_probability(evaluator, base, "wobbly").mean())
    drop = mean_adherence(evaluator, base, prompts) - mean_adherence(evaluator, styled, prompts)
    print(f"seed {seed}: style gain {gain:.3f}, adherence drop {drop:.3f}")
    assert gain > 0.2 and drop < 0.1, (gain, drop)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_lora_on_teacher_images_moves_the_student_toward_the_teacher(student, evaluator, seed):
    """Seed 000: the SDXL-architecture teacher renders 12 challenging prompts (several or small
    off-centre shapes, where it beats the student: 0.78 vs 0.70 adherence); a student LoRA trained
    on those images brings the student's images for the same prompts and seeds closer to the
    teacher's: MSE down by more than 10 %. (Seed 000 found SSIM +29 % on its challenging images.)"""
    teacher = load_pipeline("embedded: world-teacher", "fp32", "cpu")
    prompts = world_prompts(12, 300 + seed, categories=("challenging",))
    target = render(teacher, prompts, seed=seed)
    lora = train_from_images(student, target, [p.text for p in prompts], NoiseStrategy(),
                             LoRAConfigSpec(rank=16, alpha=16.0, targets="attention+ff"),
                             TrainSpec(steps=600, batch_size=4, lr=2e-3, seed=seed))
    before = render(student, prompts, seed=seed)
    after = render(with_lora(student, lora, "teacher images"), prompts, seed=seed)
    mse_before, mse_after = float(mse(before, target).mean()), float(mse(after, target).mean())
    ssim_before, ssim_after = float(ssim(before, target).mean()), float(ssim(after, target).mean())
    print(f"seed {seed}: MSE vs teacher {mse_before:.4f} -> {mse_after:.4f}, "
          f"SSIM {ssim_before:.3f} -> {ssim_after:.3f}")
    assert mse_after < 0.9 * mse_before, (mse_before, mse_after)


def unet_rows(lp, run) -> tuple[object, int]:
    """``run()``'s result and how many latent rows the UNet denoised (CFG doubles them)."""
    rows = []
    handle = lp.pipe.unet.register_forward_pre_hook(lambda _module, args: rows.append(args[0].shape[0]))
    try:
        return run(), sum(rows)
    finally:
        handle.remove()


@pytest.mark.parametrize("seed", SEEDS)
def test_an_lcm_lora_at_4_steps_keeps_the_base_adherence_at_a_fifth_of_the_cost(student, evaluator, seed):
    """Seed 001: an LCM-LoRA distilled from the student (400 steps on 256 world images, guidance
    w ~ U[3, 9]) sampled with the LCM sampler in 4 steps at CFG 1 keeps more than 88 % of the base's
    adherence at 25 euler steps, CFG 7.5, on 48 held-out prompts, for at most a fifth of the UNet
    work (4 rows per image against 50). Wall time is printed, not asserted (README gives it)."""
    data = world_dataset("base", 256, seed)
    lora = train_from_images(student, data.images, data.captions, NoiseStrategy(),
                             LoRAConfigSpec(rank=16, alpha=16.0, targets="all_linear+conv"),
                             TrainSpec(steps=400, batch_size=8, lr=7e-4, lr_schedule="cosine", warmup_steps=50,
                                       seed=seed, distill=LCMSpec(w_min=3.0, w_max=9.0)))
    lcm = with_lora(student, lora, "LCM")
    prompts = world_prompts(48, 200 + seed)
    start = time.perf_counter()
    base, base_rows = unet_rows(student, lambda: render(student, prompts, steps=25, seed=seed))
    middle = time.perf_counter()
    fast, fast_rows = unet_rows(lcm, lambda: render(lcm, prompts, steps=4, cfg=1.0, seed=seed,
                                                    sampler=SamplerSpec("lcm")))
    seconds = (time.perf_counter() - middle) / (middle - start)
    kept = mean_adherence(evaluator, fast, prompts) / mean_adherence(evaluator, base, prompts)
    print(f"seed {seed}: LCM-LoRA keeps {kept:.3f} of the base adherence; UNet rows {fast_rows} vs {base_rows}, "
          f"wall time {seconds:.2f}x")
    assert kept > 0.88 and fast_rows <= 0.2 * base_rows, (kept, fast_rows, base_rows)


@pytest.mark.parametrize("seed", SEEDS)
def test_dreambooth_binds_the_concept_to_its_token_and_not_to_the_class(student, evaluator, seed):
    """Seed 003: a LoRA (UNet and text encoder) on 8 images of the concept, captioned
    ``a sks badge with ukj pattern on a <colour> background``, with prior preservation (6 images the
    student draws for ``a badge on a <colour> background``, weight 1). Subject fidelity, DreamBooth's
    DINO score with the evaluator's features (mean cosine similarity to the instance images), rises
    for the token prompt by more than 0.06 over the base model and ends more than 0.12 above the
    class prompt's, and the class prompt never shows the concept (World Style concept < 0.05)."""
    instances = world_dataset("concept", 8, seed)
    backgrounds = list(dict.fromkeys(s.background for s in sample_scenes(8, seed, variant="concept")))[:3]
    classes = [Prompt(concept_class_prompt(b)) for b in backgrounds]
    tokens = [Prompt(f"a sks badge with ukj pattern on a {b} background") for b in backgrounds]
    priors = render(student, classes, seed=seed + 1000, per_prompt=2)
    lora = train_from_images(student, torch.cat([instances.images, priors]),
                             instances.captions + [p.text for p in classes for _ in range(2)], NoiseStrategy(),
                             LoRAConfigSpec(rank=16, alpha=16.0, targets="attention", text_encoder_rank=8),
                             TrainSpec(steps=700, batch_size=4, lr=3e-3, seed=seed))
    tuned = with_lora(student, lora, "sks")
    reference = F.normalize(evaluator.features(instances.images), dim=1)

    @torch.no_grad()
    def fidelity(images):
        return float((F.normalize(evaluator.features(images), dim=1) @ reference.T).mean())

    base_token = fidelity(render(student, tokens, seed=seed, per_prompt=3))
    token_images = render(tuned, tokens, seed=seed, per_prompt=3)
    class_images = render(tuned, classes, seed=seed, per_prompt=3)
    token, cls = fidelity(token_images), fidelity(class_images)
    concept_in_token = float(style_probability(evaluator, token_images, "concept").mean())
    concept_in_class = float(style_probability(evaluator, class_images, "concept").mean())
    print(f"seed {seed}: fidelity base {base_token:.3f}, token {token:.3f}, class {cls:.3f}; "
          f"World Style concept token {concept_in_token:.3f}, class {concept_in_class:.3f}")
    assert token > base_token + 0.06 and token > cls + 0.12 and concept_in_class < 0.05, (base_token, token, cls)
