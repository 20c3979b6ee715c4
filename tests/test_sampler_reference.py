"""Samplers against references: every sampler x schedule equals the same diffusers scheduler
driven by a hand-written loop; Euler and DDIM equal independent implementations of their
update rules (Karras et al. 2022 sigma-space Euler; Song et al. 2021 DDIM)."""

import diffusers
import numpy as np
import pytest
import torch

from loralab.core.generate import GenerateSettings, generate
from loralab.core.prompts import Prompt
from loralab.core.samplers import SAMPLERS, SCHEDULES, SamplerError, SamplerSpec, build_scheduler

CLASSES = {"euler": ("EulerDiscreteScheduler", {}), "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
           "heun": ("HeunDiscreteScheduler", {}),
           "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
           "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
           "dpmpp_sde": ("DPMSolverSDEScheduler", {}), "ddim": ("DDIMScheduler", {}), "lcm": ("LCMScheduler", {}),
           "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh2"})}
SCHEDULE_KWARGS = {"default": {"timestep_spacing": "linspace"}, "simple": {"timestep_spacing": "trailing"},
                   "karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True}}
STEPS, CFG, SEED, SIZE = 5, 6.0, 11, 32
PROMPT, NEGATIVE = "a photo of a cat", "blurry"


def reference_scheduler(tiny, name, schedule):
    cls_name, options = CLASSES[name]
    cls = getattr(diffusers, cls_name)
    kwargs = {**SCHEDULE_KWARGS["default"], **options, **SCHEDULE_KWARGS[schedule]}
    if name == "dpmpp_sde":
        kwargs["noise_sampler_seed"] = [SEED]
    config = {k: v for k, v in tiny.pipe.scheduler.config.items() if not k.startswith("_")}
    # Stable Diffusion's published scheduler settings (its scheduler_config.json).
    return cls.from_config({"clip_sample": False, "set_alpha_to_one": False, **config, **kwargs})


def drive_by_hand(tiny, scheduler, steps=STEPS):
    """The text-to-image loop written out: CFG on the UNet's ε, then the scheduler's own step."""
    pipe = tiny.pipe
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    generator = torch.Generator().manual_seed(SEED)
    f = pipe.vae_scale_factor
    latents = torch.randn((1, 4, SIZE // f, SIZE // f), generator=generator) * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    accepts_generator = "generator" in scheduler.step.__code__.co_varnames
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        eps_u, eps_c = pipe.unet(x, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        eps = eps_u + CFG * (eps_c - eps_u)
        extra = {"generator": generator} if accepts_generator else {}
        latents = scheduler.step(eps, t, latents, **extra).prev_sample
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def supported(name, schedule):
    import inspect

    accepted = inspect.signature(getattr(diffusers, CLASSES[name][0]).__init__).parameters
    return all(k in accepted for k in SCHEDULE_KWARGS[schedule])


CASES = [(n, s) for n in sorted(SAMPLERS) for s in SCHEDULES]


def test_reference_tables_cover_the_catalogue():
    assert set(CLASSES) == set(SAMPLERS) and set(SCHEDULE_KWARGS) == set(SCHEDULES)


@pytest.mark.parametrize("name,schedule", CASES)
def test_generate_equals_the_diffusers_scheduler_driven_by_hand(tiny, name, schedule):
    spec = SamplerSpec(name, schedule)
    settings = GenerateSettings(steps=STEPS, cfg=CFG, seed=SEED, width=SIZE, height=SIZE, negative_prompt=NEGATIVE)
    if not supported(name, schedule):
        with pytest.raises(SamplerError, match="does not support"):
            generate(tiny, spec, [Prompt(PROMPT)], settings)
        return
    ours, _ = generate(tiny, spec, [Prompt(PROMPT)], settings)
    with torch.inference_mode():
        reference = drive_by_hand(tiny, reference_scheduler(tiny, name, schedule))
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=0)
    if schedule != "default" and name != "lcm":  # the schedule really changes the noise levels
        built = build_scheduler(spec, tiny.pipe.scheduler.config)
        plain = build_scheduler(SamplerSpec(name), tiny.pipe.scheduler.config)
        built.set_timesteps(STEPS)
        plain.set_timesteps(STEPS)
        assert not torch.equal(built.timesteps.float(), plain.timesteps.float()) or not torch.equal(
            getattr(built, "sigmas", built.timesteps), getattr(plain, "sigmas", plain.timesteps))


def sigma_table(tiny):
    alphas_cumprod = build_scheduler(SamplerSpec("ddim"), tiny.pipe.scheduler.config).alphas_cumprod.double()
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def eps_model(tiny):
    cond, _ = tiny.pipe.encode_prompt(PROMPT, "cpu", 1, False)

    def eps(x_scaled, t):
        return tiny.pipe.unet(x_scaled.float(), t, encoder_hidden_states=cond).sample.double()
    return eps


def final_latents(tiny, scheduler, x):
    eps = eps_model(tiny)
    scheduler.set_timesteps(STEPS)
    for t in scheduler.timesteps:
        x = scheduler.step(eps(scheduler.scale_model_input(x, t), t).float(), t, x).prev_sample
    return x.double()


@torch.inference_mode()
def test_euler_equals_a_hand_written_sigma_space_euler(tiny):
    sigmas_table = sigma_table(tiny)
    timesteps = np.linspace(0, 999, STEPS)[::-1].copy()
    sigmas = np.interp(timesteps, np.arange(1000), sigmas_table.numpy()).tolist() + [0.0]
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = noise * sigmas[0]
    eps = eps_model(tiny)
    for i, t in enumerate(timesteps):
        d = eps(x / (sigmas[i] ** 2 + 1) ** 0.5, float(t))  # dx/dσ = ε for the VE form x = x0 + σε
        x = x + d * (sigmas[i + 1] - sigmas[i])
    ours = final_latents(tiny, build_scheduler(SamplerSpec("euler"), tiny.pipe.scheduler.config),
                         (noise * sigmas[0]).float())
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_ddim_equals_a_hand_written_ddim_update(tiny):
    scheduler = build_scheduler(SamplerSpec("ddim", "simple"), tiny.pipe.scheduler.config)
    abar = scheduler.alphas_cumprod.double()
    timesteps = [999 - i * (1000 // STEPS) for i in range(STEPS)]  # trailing spacing
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = noise
    eps = eps_model(tiny)
    for i, t in enumerate(timesteps):
        e = eps(x, t)
        a_t = abar[t]
        a_prev = abar[timesteps[i + 1]] if i + 1 < STEPS else abar[0]  # set_alpha_to_one=False
        x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
    ours = final_latents(tiny, scheduler, noise.float())
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_ddim_with_alpha_one_is_euler_in_sigma_space(tiny):
    """DDIM's deterministic step is exactly Euler on x/sqrt(ᾱ) over σ (Karras et al. 2022, §4)."""
    config = {**tiny.pipe.scheduler.config, "timestep_spacing": "trailing"}
    ddim = diffusers.DDIMScheduler.from_config({**config, "set_alpha_to_one": True, "clip_sample": False})
    euler = diffusers.EulerDiscreteScheduler.from_config(config)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    euler.set_timesteps(STEPS)
    x_euler = final_latents(tiny, euler, noise * euler.init_noise_sigma)
    ddim.set_timesteps(STEPS)
    sigma0 = euler.sigmas[0].double()
    x_ddim = final_latents(tiny, ddim, (noise.double() * sigma0 / (sigma0**2 + 1).sqrt()).float())
    torch.testing.assert_close(x_ddim, x_euler, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde"])
def test_stochastic_samplers_are_reproducible_for_a_seed(tiny, name):
    settings = GenerateSettings(steps=STEPS, cfg=CFG, seed=SEED, width=SIZE, height=SIZE)
    a, _ = generate(tiny, SamplerSpec(name), [Prompt(PROMPT)], settings)
    b, _ = generate(tiny, SamplerSpec(name), [Prompt(PROMPT)], settings)
    c, _ = generate(tiny, SamplerSpec(name), [Prompt(PROMPT)], GenerateSettings(**{**settings.__dict__, "seed": 12}))
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3
