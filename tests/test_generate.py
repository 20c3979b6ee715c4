"""Generation on the embedded tiny model: samplers, determinism, per-image seeds."""

import pytest
import torch

from loralab.core.generate import GenerateSettings, generate
from loralab.core.prompts import Prompt
from loralab.core.samplers import SAMPLERS, SCHEDULES, SamplerError, SamplerSpec

CAT = [Prompt("a photo of a cat")]
FAST = GenerateSettings(steps=4, cfg=7.5, seed=3, width=32, height=32)


def run(tiny, name="euler", schedule="normal", prompts=CAT, eta=1.0, batch_noise="per_image", **settings):
    s = GenerateSettings(**{**FAST.__dict__, **settings})
    return generate(tiny, SamplerSpec(name, schedule, eta, batch_noise), prompts, s)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_each_sampler_produces_finite_images(tiny, name):
    images, table = run(tiny, name)
    assert images.shape == (1, 32, 32, 3) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and 0 <= images.min() and images.max() <= 1
    assert images.std() > 0.01
    assert table.rows[0]["sampler"] == name


def test_the_tooltips_say_what_every_name_does():
    from loralab.nodes.sample import LoRALabSampler

    inputs = LoRALabSampler.INPUT_TYPES()
    sampler_tip = inputs["required"]["sampler_name"][1]["tooltip"]
    schedule_tip = inputs["required"]["schedule"][1]["tooltip"]
    for name, (_, text) in SAMPLERS.items():
        assert f"{name} = {text}" in sampler_tip
    for name, (_, text) in SCHEDULES.items():
        assert f"{name} = {text}" in schedule_tip
    assert "ComfyUI" in sampler_tip and "ComfyUI" in schedule_tip
    assert inputs["required"]["schedule"][1]["default"] == "normal"
    assert inputs["optional"]["batch_noise"][0] == ["per_image", "comfyui"]


def test_euler_ancestral_without_noise_is_euler_and_2m_sde_without_noise_is_2m(tiny):
    """Two identities of the samplers' equations: eta = 0 removes the ancestral step, and the
    midpoint 2M SDE solver at eta = 0 is DPM-Solver++(2M) (Lu et al. 2022)."""
    torch.testing.assert_close(run(tiny, "euler_ancestral", eta=0.0)[0], run(tiny, "euler")[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(run(tiny, "dpmpp_2m_sde", "karras", eta=0.0, steps=6)[0],
                               run(tiny, "dpmpp_2m", "karras", steps=6)[0], rtol=0, atol=1e-5)
    assert (run(tiny, "euler_ancestral")[0] - run(tiny, "euler")[0]).abs().max() > 1e-3


def test_default_is_normal_for_older_workflows(tiny):
    assert torch.equal(run(tiny, "dpmpp_2m", "default")[0], run(tiny, "dpmpp_2m", "normal")[0])


def test_same_seed_gives_the_identical_image_and_another_seed_does_not(tiny):
    a, _ = run(tiny, "euler_ancestral", seed=7)
    b, _ = run(tiny, "euler_ancestral", seed=7)
    c, _ = run(tiny, "euler_ancestral", seed=8)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "lcm"])
def test_image_k_of_a_batch_equals_that_image_generated_alone_with_seed_plus_k(tiny, name):
    batch, table = run(tiny, name, seed=10, images_per_prompt=3)
    alone, _ = run(tiny, name, seed=12, images_per_prompt=1)
    assert [r["seed"] for r in table.rows] == [10, 11, 12]
    torch.testing.assert_close(batch[2:3], alone, atol=1e-5, rtol=0)
    comfy, _ = run(tiny, name, seed=10, images_per_prompt=3, batch_noise="comfyui")
    assert (comfy[2:3] - alone).abs().max() > 1e-3, "ComfyUI's batch noise is one stream from the seed"


def test_cfg_one_skips_the_unconditional_pass(tiny):
    calls = []
    hook = tiny.pipe.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        run(tiny, cfg=1.0, steps=2)
        run(tiny, cfg=5.0, steps=2)
        run(tiny, cfg=0.5, steps=1)  # below 1 guidance still changes the result (ComfyUI's rule)
    finally:
        hook.remove()
    assert calls == [1, 1, 2, 2, 2]


def test_rows_cover_every_prompt_and_image_with_cost_columns(tiny):
    prompts = [Prompt("a cat", "standard"), Prompt("a face", "closeup")]
    images, table = run(tiny, prompts=prompts, images_per_prompt=2)
    assert images.shape[0] == 4 and len(table) == 4
    assert [(r["category"], r["seed"]) for r in table.rows] == [
        ("standard", 3), ("standard", 4), ("closeup", 3), ("closeup", 4)]
    for row in table.rows:
        assert row["seconds_per_image"] > 0 and row["peak_memory_mb"] > 0
        assert row["model"] == "embedded: tiny-sd" and row["steps"] == 4


def test_bad_names_are_refused_with_the_valid_ones(tiny):
    with pytest.raises(SamplerError, match="unknown schedule 'karas'; valid: normal, karras"):
        run(tiny, "euler", "karas")
    with pytest.raises(SamplerError, match="unknown sampler 'dpmpp2m'; valid: euler, euler_ancestral"):
        run(tiny, "dpmpp2m")
    with pytest.raises(SamplerError, match="unknown batch noise 'shared'; valid: per_image, comfyui"):
        run(tiny, batch_noise="shared")
    with pytest.raises(SamplerError, match="uni_pc needs at least 2 steps"):
        run(tiny, "uni_pc", steps=1)


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


@pytest.mark.parametrize("name,batch_noise", [("euler", "per_image"), ("euler_ancestral", "comfyui"),
                                              ("dpmpp_sde", "per_image"), ("lcm", "comfyui")])
def test_prompts_sampled_together_give_the_images_each_prompt_gets_alone(tiny, name, batch_noise):
    prompts = [Prompt("a cat", "standard"), Prompt("a red car", "closeup"), Prompt("a face")]
    alone, rows = run(tiny, name, prompts=prompts, images_per_prompt=2, batch_noise=batch_noise)
    together, rows_together = run(tiny, name, prompts=prompts, images_per_prompt=2, batch_noise=batch_noise,
                                  prompts_per_batch=2, negative_prompt="blurry")
    alone_negative, _ = run(tiny, name, prompts=prompts, images_per_prompt=2, batch_noise=batch_noise,
                            negative_prompt="blurry")
    torch.testing.assert_close(together, alone_negative, atol=1e-5, rtol=0)
    assert (together - alone).abs().max() > 1e-3, "the negative prompt reaches every prompt of a batch"
    keys = [(r["prompt"], r["category"], r["seed"]) for r in rows_together.rows]
    assert keys == [(r["prompt"], r["category"], r["seed"]) for r in rows.rows]
    assert len({r["seconds_per_image"] for r in rows_together.rows[:4]}) == 1  # one batch, its time split


def test_prompts_per_batch_below_one_is_refused(tiny):
    with pytest.raises(ValueError, match="prompts_per_batch must be at least 1, got 0"):
        run(tiny, prompts_per_batch=0)
