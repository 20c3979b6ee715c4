"""Samplers against ComfyUI: every sampler x schedule reproduces what ComfyUI v0.8.0's KSampler
computed on the same UNet, seed and CFG (recorded by tests/manual/record_comfy_sampling.py into
tests/data/comfy_sampling; ComfyUI itself is never imported): the sigmas, the integer timesteps
the UNet is told in call order, and the final latent within 1e-4 relative."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loralab.core.generate import GenerateSettings, decode, generate, img2img, unet_model
from loralab.core.ksampling import cfg_denoiser, initial_noise, noise_streams, sample
from loralab.core.prompts import Prompt
from loralab.core.samplers import SAMPLERS, SCHEDULES, SamplerSpec, noise_levels, sigmas_for

DATA = Path(__file__).parent / "data" / "comfy_sampling" / "ksampler.safetensors"
with safe_open(DATA, "pt") as _f:
    META = json.loads(_f.metadata()["recording"])
    RECORDED = {key: _f.get_tensor(key) for key in _f.keys()}
SHAPE = (4, META["size"] // 4, META["size"] // 4)
COMFY_SCHEDULES = [s for s in SCHEDULES if s != "default"]
CASES = [(n, s, k) for n in META["samplers"] for s in META["schedules"] for k in META["steps"]]


def relative_error(ours, reference):
    return float((ours - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def levels(tiny):
    return noise_levels(tiny.pipe.scheduler.config)


def traced_model(tiny, batch):
    """The UNet with the recording's conditioning; also lists the timesteps it is given."""
    model = unet_model(tiny, [META["prompt"]], META["negative"], META["cfg"], batch, META["size"], META["size"])

    def traced(x, t):
        traced.timesteps.append(int(t))
        return model(x, t)
    traced.timesteps = []
    return traced


@pytest.fixture(scope="module")
def recording_model(tiny):
    return traced_model(tiny, 1)


def run(spec, levels, model, steps, seeds, **start):
    model.timesteps = []
    with torch.no_grad():
        return sample(spec, cfg_denoiser(levels, model, META["cfg"]), levels, steps, seeds, SHAPE,
                      torch.device("cpu"), **start)


def test_the_catalogue_is_comfyuis_and_fully_recorded():
    assert list(SAMPLERS) == META["samplers"]
    assert sorted(COMFY_SCHEDULES) == sorted(META["schedules"])


def test_the_conditioning_is_the_recorded_one(tiny):
    cond, uncond = tiny.pipe.encode_prompt(META["prompt"], "cpu", 1, True, META["negative"])
    torch.testing.assert_close(cond, RECORDED["cond"], rtol=0, atol=1e-6)
    torch.testing.assert_close(uncond, RECORDED["uncond"], rtol=0, atol=1e-6)


def test_initial_noise_is_prepare_noises():
    """ComfyUI's prepare_noise: a CPU generator seeded with the seed, one stream for the batch."""
    seed = META["seed"]
    single = initial_noise(noise_streams(SamplerSpec("euler"), [seed], SHAPE))
    batch = initial_noise(noise_streams(SamplerSpec("euler", batch_noise="comfyui"), [seed, seed + 1], SHAPE))
    assert torch.equal(single, RECORDED["noise/1"]) and torch.equal(batch, RECORDED["noise/2"])
    per_image = initial_noise(noise_streams(SamplerSpec("euler"), [seed, seed + 1], SHAPE))
    assert torch.equal(per_image[1:], initial_noise(noise_streams(SamplerSpec("euler"), [seed + 1], SHAPE)))


@pytest.mark.parametrize("name,schedule,steps", CASES)
def test_sigmas_equal_ksamplers(levels, name, schedule, steps):
    reference = RECORDED[f"{name}/{schedule}/{steps}/1/sigmas"]
    ours = sigmas_for(SamplerSpec(name, schedule), levels, steps)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name,schedule,steps", CASES)
def test_final_latent_equals_ksamplers(levels, recording_model, name, schedule, steps):
    key = f"{name}/{schedule}/{steps}/1"
    ours = run(SamplerSpec(name, schedule), levels, recording_model, steps, [META["seed"]])
    assert recording_model.timesteps == RECORDED[f"{key}/timesteps"].tolist()
    assert relative_error(ours, RECORDED[f"{key}/latent"]) < 1e-4


@pytest.mark.parametrize("name,schedule", [tuple(c) for c in META["batch_cases"]])
def test_comfyui_batch_noise_reproduces_a_ksampler_batch(tiny, levels, name, schedule):
    """One noise stream for the whole batch (initial noise, step noise, Brownian tree)."""
    reference = RECORDED[f"{name}/{schedule}/4/2/latent"]
    seeds, model = [META["seed"], META["seed"] + 1], traced_model(tiny, 2)
    ours = run(SamplerSpec(name, schedule, batch_noise="comfyui"), levels, model, 4, seeds)
    assert relative_error(ours, reference) < 1e-4
    per_image = run(SamplerSpec(name, schedule), levels, model, 4, seeds)
    assert relative_error(per_image[1:], reference[1:]) > 0.01, "by default image 1 has seed + 1 of its own"


@pytest.mark.parametrize("name,schedule", [tuple(c) for c in META["img2img_cases"]])
def test_img2img_equals_ksampler_with_denoise(levels, recording_model, name, schedule):
    key = f"img2img/{name}/{schedule}"
    ours = run(SamplerSpec(name, schedule), levels, recording_model, META["img2img_steps"], [META["seed"]],
               latent=RECORDED["img2img/start"], strength=META["img2img_denoise"])
    torch.testing.assert_close(sigmas_for(SamplerSpec(name, schedule), levels, META["img2img_steps"],
                                          META["img2img_denoise"]), RECORDED[f"{key}/sigmas"], rtol=1e-6, atol=0)
    assert recording_model.timesteps == RECORDED[f"{key}/timesteps"].tolist()
    assert relative_error(ours, RECORDED[f"{key}/latent"]) < 1e-4


@pytest.mark.parametrize("name,schedule", [tuple(c) for c in META["mask_cases"]])
def test_masked_img2img_equals_ksampler_with_a_noise_mask(levels, recording_model, name, schedule):
    ours = run(SamplerSpec(name, schedule), levels, recording_model, META["img2img_steps"], [META["seed"]],
               latent=RECORDED["img2img/start"], strength=META["mask_denoise"], mask=RECORDED["img2img/mask"][0, 0])
    assert relative_error(ours, RECORDED[f"masked/{name}/{schedule}/latent"]) < 1e-4


def test_generate_decodes_ksamplers_latent(tiny):
    """The whole Generate path (prompt encoding, sampling, decoding) on one recorded case."""
    settings = GenerateSettings(steps=4, cfg=META["cfg"], seed=META["seed"], width=META["size"],
                                height=META["size"], negative_prompt=META["negative"])
    images, _ = generate(tiny, SamplerSpec("dpmpp_2m_sde", "karras"), [Prompt(META["prompt"])], settings)
    with torch.no_grad():
        reference = decode(tiny, RECORDED["dpmpp_2m_sde/karras/4/1/latent"]).permute(0, 2, 3, 1)
    torch.testing.assert_close(images, reference, rtol=0, atol=1e-4)


def test_img2img_at_partial_strength_samples_the_encoded_input(tiny, levels):
    """Img2Img = KSampler with denoise on the VAE's posterior mode (ComfyUI's VAE Encode)."""
    init = torch.rand(1, META["size"], META["size"], 3, generator=torch.Generator().manual_seed(0))
    settings = GenerateSettings(steps=6, cfg=META["cfg"], seed=META["seed"], negative_prompt=META["negative"])
    images, _ = img2img(tiny, SamplerSpec("euler"), [Prompt(META["prompt"])], settings, init, 0.5)
    pipe = tiny.pipe
    with torch.no_grad():
        latent = pipe.vae.encode(init.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        latents = run(SamplerSpec("euler"), levels, traced_model(tiny, 1), 6, [META["seed"]], latent=latent,
                      strength=0.5)
        reference = decode(tiny, latents).permute(0, 2, 3, 1)
    torch.testing.assert_close(images, reference, rtol=0, atol=1e-5)
