"""The samplers behind ComfyUI's KSampler names, in k-diffusion's form (Karras et al. 2022).

A sampler is a loop over consecutive sigmas calling ``denoise(x, σ)`` (the model's x0 estimate
with CFG applied) and, for the stochastic ones, ``noise(σ, σ_next)``: unit Gaussian noise drawn
the way ComfyUI draws it, so the same seed gives the same image. Latents are VE latents
x = x0 + σ·ε throughout (KSampler's convention); only UniPC works in the VP form of its paper.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial

import torch

from .samplers import SAMPLERS, NoiseLevels, SamplerSpec, sigmas_for
from .unipc import sample_unipc

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Noise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- noise

def noise_streams(spec: SamplerSpec, seeds: list[int], shape: tuple) -> list[tuple[int, tuple]]:
    """(seed, shape) of each random stream: one per image (image k reproducible alone with its
    seed), or ComfyUI's single stream for the whole batch seeded with the first seed."""
    if spec.batch_noise == "comfyui":
        return [(seeds[0], (len(seeds), *shape))]
    return [(seed, (1, *shape)) for seed in seeds]


def initial_noise(streams) -> torch.Tensor:
    """Unit Gaussian noise from CPU generators (ComfyUI's ``prepare_noise``: the same on every device)."""
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed, shape in streams])


def gaussian_step_noise(streams, device: torch.device) -> Noise:
    """Fresh Gaussian noise per step from a generator of its own, as k-diffusion's
    ``default_noise_sampler``: on the CPU seeded with seed + 1 (so it differs from the initial
    noise), elsewhere a generator of that device seeded with the seed."""
    offset = 1 if device.type == "cpu" else 0
    generators = [(torch.Generator(device=device).manual_seed((seed + offset) % 2**64), shape)
                  for seed, shape in streams]

    def draw(sigma, sigma_next):
        return torch.cat([torch.randn(shape, generator=g, device=device) for g, shape in generators])
    return draw


def brownian_step_noise(streams, sigmas: torch.Tensor, device: torch.device) -> Noise:
    """Increments of a Brownian motion over σ, normalised to unit variance: noise that depends on
    the interval, not on the step count (Kidger et al. 2021, torchsde's BrownianTree, built on the
    CPU as k-diffusion's ``BrownianTreeNoiseSampler``)."""
    import torchsde

    low, high = sigmas[sigmas > 0].min().cpu().float(), sigmas.max().cpu().float()
    trees = [torchsde.BrownianTree(low, torch.zeros(shape), high, entropy=seed) for seed, shape in streams]

    def draw(sigma, sigma_next):
        a, b = sorted((sigma.cpu().float(), sigma_next.cpu().float()))
        sign = -1 if sigma > sigma_next else 1
        with warnings.catch_warnings():
            # σ_max rounds to float32 one ulp outside the tree's interval: harmless, but warned per step.
            warnings.filterwarnings("ignore", message="Should have t[ab]", category=UserWarning)
            w = torch.cat([tree(a, b) for tree in trees]).to(device)
        return sign * w / (b - a).abs().sqrt().to(device)
    return draw


# ---------------------------------------------------------------- shared steps

def to_d(x, sigma, denoised):
    """dx/dσ of the probability-flow ODE (Karras et al. 2022, eq. 3 with σ(t) = t)."""
    return (x - denoised) / sigma


def ancestral_step(sigma, sigma_next, eta):
    """Split a step σ → σ_next into a deterministic step to σ_down and fresh noise of size σ_up,
    σ_down² + σ_up² = σ_next² (DDPM's posterior variance scaled by eta)."""
    if not eta:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - sigma_up**2) ** 0.5, sigma_up


# ---------------------------------------------------------------- samplers

def sample_euler(denoise: Denoise, x, sigmas, noise, eta, on_step):
    """Karras et al. 2022, Algorithm 2 without churn: x ← x + (σ_next − σ)·d."""
    for i in range(len(sigmas) - 1):
        x = x + to_d(x, sigmas[i], denoise(x, sigmas[i])) * (sigmas[i + 1] - sigmas[i])
        on_step()
    return x


def sample_euler_ancestral(denoise: Denoise, x, sigmas, noise, eta, on_step):
    """Euler to σ_down, then noise of size σ_up (Ho et al. 2020's ancestral sampling in σ form)."""
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = denoised
        else:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i]) + noise(sigmas[i], sigmas[i + 1]) * sigma_up
        on_step()
    return x


def sample_heun(denoise: Denoise, x, sigmas, noise, eta, on_step):
    """Karras et al. 2022, Algorithm 1: Heun's second-order step, Euler for the last step to 0."""
    for i in range(len(sigmas) - 1):
        d = to_d(x, sigmas[i], denoise(x, sigmas[i]))
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], denoise(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
        on_step()
    return x


def sample_dpmpp_2m(denoise: Denoise, x, sigmas, noise, eta, on_step):
    """DPM-Solver++(2M), Lu et al. 2022 (arXiv 2211.01095), Algorithm 2, in λ = −log σ."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            if old_denoised is not None:
                r = (sigmas[i - 1].log() - sigmas[i].log()) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            else:
                denoised_d = denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
        on_step()
    return x


def sample_dpmpp_2m_sde(denoise: Denoise, x, sigmas, noise, eta, on_step):
    """DPM-Solver++(2M) SDE, Lu et al. 2022, midpoint second-order correction; eta scales the
    injected noise (0 gives the ODE solver)."""
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            h_eta = h * (eta + 1)
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - (-h_eta).expm1() * denoised
            if old_denoised is not None:
                x = x - 0.5 * (-h_eta).expm1() * (h / h_last) * (denoised - old_denoised)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-(-2 * h * eta).expm1()).sqrt()
            h_last = h
        old_denoised = denoised
        on_step()
    return x


def sample_dpmpp_sde(denoise: Denoise, x, sigmas, noise, eta, on_step, r: float = 0.5):
    """DPM-Solver++ SDE (second-order singlestep, Lu et al. 2022): a stochastic half step to
    λ_s + r·h, then the full step with the averaged x0 estimate."""
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = -sigmas[i].log(), -sigmas[i + 1].log()
            sigma_mid = (-(lam_s + r * (lam_t - lam_s))).exp()
            x_2 = _exponential_step(x, sigmas[i], sigma_mid, denoised, eta, noise)
            denoised_d = (1 - 1 / (2 * r)) * denoised + 1 / (2 * r) * denoise(x_2, sigma_mid)
            x = _exponential_step(x, sigmas[i], sigmas[i + 1], denoised_d, eta, noise)
        on_step()
    return x


def _exponential_step(x, sigma, sigma_next, denoised, eta, noise):
    """First-order exponential-integrator step to σ_down plus ancestral noise σ_up."""
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
    h = sigma.log() - sigma_down.log()
    x = (-h).exp() * x - (-h).expm1() * denoised
    return x + noise(sigma, sigma_next) * sigma_up if eta else x


def sample_lcm(denoise: Denoise, x, sigmas, noise, eta, on_step):
    """Latent Consistency Model sampling (Luo et al. 2023): jump to the x0 estimate, re-noise to σ_next."""
    for i in range(len(sigmas) - 1):
        x = denoise(x, sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
        on_step()
    return x


SAMPLER_FUNCTIONS: dict[str, Callable] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_sde": sample_dpmpp_sde,
    "ddim": sample_euler,  # ComfyUI's ddim is Euler: deterministic DDIM is Euler on x/√ᾱ over σ
    "uni_pc": partial(sample_unipc, variant="bh1"),
    "uni_pc_bh2": partial(sample_unipc, variant="bh2"),
    "lcm": sample_lcm,
}


def cfg_denoiser(levels: NoiseLevels, model: Callable, cfg: float, rescale: float = 0.0) -> Denoise:
    """D(x, σ) with classifier-free guidance on the x0 estimates (Ho & Salimans 2022), as ComfyUI
    applies it. ``model(x_in, t)`` returns the UNet's outputs for [cond] or [cond, uncond]; the
    input is x/√(σ²+1) and t the nearest integer timestep. ``rescale`` φ > 0 rescales the guided
    result (Lin et al. 2023, eq. 15-16: in v space, to the conditional prediction's standard
    deviation per image, mixed φ : 1 − φ with the plain result), as ComfyUI's RescaleCFG node and
    diffusers' ``guidance_rescale`` do."""
    def denoise(x, sigma):
        x_in = x / (sigma**2 + 1) ** 0.5
        outputs = model(x_in, levels.timestep(sigma))
        cond, *uncond = [levels.denoised(sigma, out.float(), x) for out in outputs]
        if not uncond:
            return cond
        guided = uncond[0] + (cond - uncond[0]) * cfg
        if not rescale:
            return guided
        # v = (x/(σ²+1) − x0)·√(σ²+1)/σ: the v-prediction of a given x0 estimate
        scale = (sigma**2 + 1) ** 0.5 / sigma
        v_cond, v_guided = (x / (sigma**2 + 1) - cond) * scale, (x / (sigma**2 + 1) - guided) * scale
        dims = tuple(range(1, x.ndim))
        v_rescaled = v_guided * (v_cond.std(dim=dims, keepdim=True) / v_guided.std(dim=dims, keepdim=True))
        v_final = rescale * v_rescaled + (1 - rescale) * v_guided
        return x / (sigma**2 + 1) - v_final / scale
    return denoise


def inpaint_denoiser(denoise: Denoise, latent, noise, mask) -> Denoise:
    """Keep the unmasked area on the input: before each model call it is set to the input noised to
    σ, and the x0 estimate there is the input itself (ComfyUI's Set Latent Noise Mask)."""
    def masked(x, sigma):
        x = x * mask + (latent + noise * sigma) * (1 - mask)
        return denoise(x, sigma) * mask + latent * (1 - mask)
    return masked


def handoff_step(levels: NoiseLevels, sigmas: torch.Tensor, cutoff: int) -> int:
    """How many steps the first model runs before a second one takes over at training timestep
    ``cutoff``: the steps whose UNet timestep is ``>= cutoff`` (diffusers' ``denoising_end``)."""
    return int((levels.timestep(sigmas[:-1]) >= cutoff).sum())


def sample(spec: SamplerSpec, denoise: Denoise, levels: NoiseLevels, steps: int, seeds: list[int],
           shape: tuple, device: torch.device, on_step: Callable = lambda: None, latent=None,
           strength: float = 1.0, mask=None, prompts: int = 1,
           handoff: tuple[int, Denoise] | None = None) -> torch.Tensor:
    """KSampler: ``latent`` (zeros: text to image) plus noise ε scaled to the first sigma, then the
    sampler over the schedule's sigmas. ``prompts`` prompts share the batch, each drawing the
    noise it would draw alone. A schedule that starts at the model's top noise level
    starts from √(1 + σ_max²)·ε, the VE latent there for unit-variance data (``max_denoise``).
    ``mask`` (1 = repaint, any size) keeps the rest of ``latent``.

    ``handoff`` = (timestep cutoff, second denoiser): an ensemble of experts (SDXL base + refiner).
    ``denoise`` runs the steps at timesteps ``>= cutoff``, the second denoiser the rest, on the
    same sigmas from the latent left there. Each part is its own sampler run, as two ComfyUI
    KSamplerAdvanced nodes with the same seed (leftover noise returned, no noise added): a
    multistep sampler's history restarts and the step noise is drawn afresh for the second part."""
    sigmas = sigmas_for(spec, levels, steps, strength).to(device)
    streams = noise_streams(spec, seeds, shape) * prompts
    noise = initial_noise(streams).to(device)
    latent = torch.zeros_like(noise) if latent is None else latent.to(device).float().expand_as(noise)
    at_top = math.isclose(float(sigmas[0]), levels.sigma_max, rel_tol=1e-5) or float(sigmas[0]) > levels.sigma_max
    x = noise * ((1 + sigmas[0] ** 2).sqrt() if at_top else sigmas[0]) + latent
    if mask is not None:
        # ComfyUI's ddim keeps the unmasked area noised with a fresh stream (seed + 1).
        kept = initial_noise([((seed + 1) % 2**64, size) for seed, size in streams]).to(device) \
            if spec.name == "ddim" else noise
        mask = torch.nn.functional.interpolate(mask.float().reshape(-1, 1, *mask.shape[-2:]), size=shape[-2:],
                                               mode="bilinear").to(device)
    parts = [(denoise, sigmas)]
    if handoff is not None:
        k = handoff_step(levels, sigmas, handoff[0])
        parts = [(denoise, sigmas[:k + 1]), (handoff[1], sigmas[k:])]
    for part_denoise, part in parts:
        if len(part) < 2:
            continue
        if mask is not None:
            part_denoise = inpaint_denoiser(part_denoise, latent, kept, mask)
        kind = SAMPLERS[spec.name][0]
        step_noise = (gaussian_step_noise(streams, device) if kind == "gaussian" else
                      brownian_step_noise(streams, part, device) if kind == "brownian" else None)
        x = SAMPLER_FUNCTIONS[spec.name](part_denoise, x, part, step_noise, spec.eta, on_step)
    return x
