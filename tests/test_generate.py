"""Generation on the embedded tiny model: samplers, determinism, per-image seeds."""

import diffusers
import pytest
import torch

from loralab.core.generate import GenerateSettings, generate
from loralab.core.prompts import Prompt
from loralab.core.samplers import SAMPLERS, SamplerError, SamplerSpec, build_scheduler

CAT = [Prompt("a photo of a cat")]
FAST = GenerateSettings(steps=4, cfg=7.5, seed=3, width=32, height=32)


def run(tiny, name="euler", schedule="default", prompts=CAT, **settings):
    s = GenerateSettings(**{**FAST.__dict__, **settings})
    return generate(tiny, SamplerSpec(name, schedule), prompts, s)


EXPECTED = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
}


def test_catalogue_is_the_tested_one():
    assert set(SAMPLERS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_sampler_builds_the_intended_scheduler_from_the_pipeline_config(tiny, name):
    cls_name, options = EXPECTED[name]
    scheduler = build_scheduler(SamplerSpec(name), tiny.pipe.scheduler.config)
    assert type(scheduler) is getattr(diffusers, cls_name)
    for key, value in options.items():
        assert scheduler.config[key] == value
    base = tiny.pipe.scheduler.config
    assert scheduler.config.beta_schedule == base.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_end == base.beta_end
    if name != "lcm":  # LCM picks its own timesteps from the 50-step distillation grid
        scheduler.set_timesteps(10)
        assert int(scheduler.timesteps[0]) == 999, "sampling must start at the top noise level"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_sampler_produces_finite_images(tiny, name):
    images, table = run(tiny, name)
    assert images.shape == (1, 32, 32, 3) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and 0 <= images.min() and images.max() <= 1
    assert images.std() > 0.01
    assert table.rows[0]["sampler"] == name


def test_same_seed_gives_the_identical_image_and_another_seed_does_not(tiny):
    a, _ = run(tiny, "euler_ancestral", seed=7)
    b, _ = run(tiny, "euler_ancestral", seed=7)
    c, _ = run(tiny, "euler_ancestral", seed=8)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde"])
def test_image_k_of_a_batch_equals_that_image_generated_alone_with_seed_plus_k(tiny, name):
    batch, table = run(tiny, name, seed=10, images_per_prompt=3)
    alone, _ = run(tiny, name, seed=12, images_per_prompt=1)
    assert [r["seed"] for r in table.rows] == [10, 11, 12]
    torch.testing.assert_close(batch[2:3], alone, atol=1e-5, rtol=0)


def test_generate_equals_the_same_diffusers_pipeline_called_directly(tiny):
    images, _ = run(tiny, "dpmpp_2m", "karras", steps=6, seed=5, negative_prompt="blurry")
    pipe = tiny.with_scheduler(diffusers.DPMSolverMultistepScheduler.from_config(
        tiny.pipe.scheduler.config, algorithm_type="dpmsolver++", use_karras_sigmas=True))
    ref = pipe("a photo of a cat", negative_prompt="blurry", num_inference_steps=6, guidance_scale=7.5,
               width=32, height=32, generator=[torch.Generator().manual_seed(5)], output_type="pt").images
    torch.testing.assert_close(images, ref.permute(0, 2, 3, 1), atol=1e-6, rtol=0)
    assert type(tiny.pipe.scheduler) is diffusers.EulerDiscreteScheduler, "the shared pipeline is untouched"


def test_cfg_one_skips_the_unconditional_pass(tiny):
    calls = []
    hook = tiny.pipe.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        run(tiny, cfg=1.0, steps=2)
        run(tiny, cfg=5.0, steps=2)
    finally:
        hook.remove()
    assert calls == [1, 1, 2, 2]


def test_rows_cover_every_prompt_and_image_with_cost_columns(tiny):
    prompts = [Prompt("a cat", "standard"), Prompt("a face", "closeup")]
    images, table = run(tiny, prompts=prompts, images_per_prompt=2)
    assert images.shape[0] == 4 and len(table) == 4
    assert [(r["category"], r["seed"]) for r in table.rows] == [
        ("standard", 3), ("standard", 4), ("closeup", 3), ("closeup", 4)]
    for row in table.rows:
        assert row["seconds_per_image"] > 0 and row["peak_memory_mb"] > 0
        assert row["model"] == "embedded: tiny-sd" and row["steps"] == 4


def test_unsupported_schedule_names_the_samplers_that_support_it(tiny):
    with pytest.raises(SamplerError, match="'ddim' does not support the 'karras' schedule.*euler"):
        build_scheduler(SamplerSpec("ddim", "karras"), tiny.pipe.scheduler.config)


def test_generate_node_checks_the_size_multiple(tiny):
    from loralab.nodes.sample import LoRALabGenerate

    with pytest.raises(ValueError, match="'width'/'height': width 36 is not a multiple of 8"):
        LoRALabGenerate().generate(tiny, SamplerSpec("euler"), CAT, "", 2, 7.5, 0, 36, 32, 1)
    images, _ = LoRALabGenerate().generate(tiny, SamplerSpec("euler"), CAT, "", 2, 7.5, 0, 0, 0, 1)
    assert images.shape[1:3] == (64, 64), "0 means the model's native size"


def test_a_pipeline_loaded_inside_inference_mode_has_trainable_weights():
    from loralab.core.pipeline import load_pipeline

    with torch.inference_mode():
        lp = load_pipeline("embedded: tiny-sd", dtype="fp32", device="cpu")
    assert not any(p.is_inference() for p in lp.pipe.unet.parameters())
    assert not any(p.is_inference() for p in lp.pipe.text_encoder.parameters())


def test_ddim_and_lcm_never_clip_latents_and_keep_sds_final_alpha(tiny):
    for name in ("ddim", "lcm"):
        scheduler = build_scheduler(SamplerSpec(name), tiny.pipe.scheduler.config)
        assert scheduler.config.clip_sample is False and scheduler.config.set_alpha_to_one is False


def test_memory_options_keep_the_result_and_bad_choices_are_named():
    from loralab.core.checkpoints import ModelError
    from loralab.core.pipeline import load_pipeline

    settings = GenerateSettings(steps=3, seed=1, width=64, height=64, images_per_prompt=2)
    base = load_pipeline("embedded: tiny-sd", "fp32", "cpu")
    lean = load_pipeline("embedded: tiny-sd", "fp32", "cpu", attention="sliced", vae="tiled")
    a, _ = generate(base, SamplerSpec("euler"), CAT, settings)
    b, _ = generate(lean, SamplerSpec("euler"), CAT, settings)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert lean.pipe.vae.use_tiling and lean.pipe.vae.use_slicing
    base.prepare_vae(64, 64, batch=2)
    assert base.pipe.vae.use_slicing and not base.pipe.vae.use_tiling
    base.prepare_vae(4096, 4096, batch=1)
    assert base.pipe.vae.use_tiling
    with pytest.raises(ModelError, match="offload 'model' .* needs device cuda"):
        load_pipeline("embedded: tiny-sd", "fp32", "cpu", offload="model")
    with pytest.raises(ModelError, match="attention 'flash' is not one of auto, sdpa, sliced"):
        load_pipeline("embedded: tiny-sd", "fp32", "cpu", attention="flash")
