"""``LL_SAMPLER``: ComfyUI's KSampler sampler and scheduler names, meaning what they mean there.

Sampling is written in k-diffusion's formulation (Karras et al. 2022, "Elucidating the Design
Space of Diffusion-Based Generative Models"), which is what ComfyUI runs: a sigma schedule, a
denoiser D(x, σ) that wraps the UNet, and a loop over consecutive sigmas. The model's noise levels
and the UNet's timestep for a σ follow ComfyUI's discrete model sampling (σ_t = √((1 − ᾱ_t)/ᾱ_t)
in float32, the nearest integer t in log σ). Each function below is written from its paper; tests
compare every sampler x schedule with ComfyUI v0.8.0's results recorded in tests/data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# name: (step noise, what it is). The functions are in ksampling.py; this module stays free of
# torch at import because node declarations read these names at ComfyUI start-up.
SAMPLERS: dict[str, tuple[str, str]] = {
    "euler": ("", "Euler (Karras et al. 2022)"),
    "euler_ancestral": ("gaussian", "Euler ancestral; step noise from its own generator (seed + 1), times eta"),
    "heun": ("", "Heun, second order, 2 UNet passes per step"),
    "dpmpp_2m": ("", "DPM-Solver++(2M)"),
    "dpmpp_2m_sde": ("brownian", "DPM-Solver++(2M) SDE, midpoint; Brownian-tree noise seeded with the seed, times eta"),
    "dpmpp_sde": ("brownian", "DPM-Solver++ SDE, 2 UNet passes per step; Brownian-tree noise seeded with the seed, "
                              "times eta"),
    "ddim": ("", "ComfyUI's ddim, which is Euler (deterministic DDIM's update, ending at σ = 0)"),
    "uni_pc": ("", "UniPC bh1 up to order 3, on steps + 1 sigmas with the penultimate one dropped"),
    "uni_pc_bh2": ("", "UniPC bh2 up to order 3, on steps + 1 sigmas with the penultimate one dropped"),
    "lcm": ("gaussian", "LCM: the x0 estimate re-noised to the next σ with step noise from seed + 1"),
}
SAMPLER_TOOLTIP = ("Sampling algorithm: ComfyUI KSampler's sampler of the same name, as k-diffusion writes it: " +
                   "; ".join(f"{name} = {text}" for name, (_, text) in SAMPLERS.items()) + ".")
BATCH_NOISE = ("per_image", "comfyui")
# KSampler runs these on steps + 1 sigmas with the penultimate one dropped.
DROP_PENULTIMATE = ("uni_pc", "uni_pc_bh2")


class SamplerError(ValueError):
    pass


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    schedule: str = "normal"
    eta: float = 1.0
    batch_noise: str = "per_image"

    @property
    def label(self) -> str:
        return self.name if self.schedule in ("normal", "default") else f"{self.name}_{self.schedule}"


# ---------------------------------------------------------------- the model's noise levels

@dataclass(frozen=True)
class NoiseLevels:
    """σ for each of the model's training timesteps (float32, ascending), their logs (taken in
    float64 before rounding, as ComfyUI does: ties between neighbouring timesteps break the same
    way), and what the UNet predicts."""

    sigmas: torch.Tensor
    log_sigmas: torch.Tensor
    prediction: str = "epsilon"

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep whose σ is nearest in log σ (an integer, as ComfyUI tells the UNet)."""
        distance = sigma.log().reshape(-1).to(self.sigmas.device) - self.log_sigmas[:, None]
        return distance.abs().argmin(dim=0).reshape(sigma.shape)

    def sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """σ at a fractional timestep: linear interpolation of log σ between neighbours."""
        t = t.float().clamp(0, len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def denoised(self, sigma, model_output, x):
        """x0 from the UNet's output at noise level σ (x = x0 + σ·ε, input scaled by 1/√(σ²+1))."""
        if self.prediction == "epsilon":
            return x - model_output * sigma
        if self.prediction == "v_prediction":
            return x / (sigma**2 + 1) - model_output * sigma / (sigma**2 + 1) ** 0.5
        return model_output


# ComfyUI's ᾱ at the last step after the zero-terminal-SNR rescale (σ would be infinite at 0).
ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def noise_levels(scheduler_config) -> NoiseLevels:
    """The noise levels of a diffusers scheduler config (β computed in float64, σ kept in float32)."""
    import torch

    from .noise import betas_from_config

    config = dict(scheduler_config)
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise SamplerError(f"the model's prediction type {prediction!r} cannot be sampled; "
                           "valid: epsilon, v_prediction, sample")
    try:
        betas = betas_from_config(config)
    except ValueError as e:
        raise SamplerError(f"the model's {e}") from None
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    if config.get("rescale_betas_zero_snr"):
        alpha_bar[-1] = ZSNR_LAST_ALPHA_BAR
    sigmas = ((1 - alpha_bar) / alpha_bar) ** 0.5
    return NoiseLevels(sigmas.float(), sigmas.log().float(), prediction)


# ---------------------------------------------------------------- sigma schedules
# Each gives steps + 1 float32 sigmas from the top noise level down to 0.

def _with_zero(sigmas):
    import torch

    return torch.cat([sigmas.float(), sigmas.new_zeros(1).float()])


def schedule_normal(levels: NoiseLevels, steps: int, sgm: bool = False):
    """Timesteps evenly spaced from the top (999) to the bottom (0), mapped to σ, then 0. With
    ``sgm`` the spacing has steps + 1 points and the last (t = 0) is dropped (SGM's uniform)."""
    import torch

    start, end = levels.timestep(torch.tensor(levels.sigma_max)), levels.timestep(torch.tensor(levels.sigma_min))
    timesteps = torch.linspace(start, end, steps + 1)[:-1] if sgm else torch.linspace(start, end, steps)
    return _with_zero(levels.sigma_at(timesteps))


def schedule_simple(levels: NoiseLevels, steps: int):
    """Every (T/steps)-th training σ from the top, then 0."""
    stride = len(levels.sigmas) / steps
    return _with_zero(levels.sigmas[[-(1 + int(i * stride)) for i in range(steps)]])


def schedule_ddim_uniform(levels: NoiseLevels, steps: int):
    """DDIM's uniform timesteps 1, 1 + T//steps, ... (Song et al. 2021), top first, then 0. Like
    ComfyUI, when T//steps does not divide T this can give a step more than asked."""
    return _with_zero(levels.sigmas[1::max(len(levels.sigmas) // steps, 1)].flip(0))


def schedule_karras(levels: NoiseLevels, steps: int, rho: float = 7.0):
    """Karras et al. 2022, eq. 5: σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ."""
    import torch

    ramp = torch.linspace(0, 1, steps)
    lo, hi = levels.sigma_min ** (1 / rho), levels.sigma_max ** (1 / rho)
    return _with_zero((hi + ramp * (lo - hi)) ** rho)


def schedule_exponential(levels: NoiseLevels, steps: int):
    """σ evenly spaced in log σ from σ_max to σ_min."""
    import torch

    return _with_zero(torch.linspace(math.log(levels.sigma_max), math.log(levels.sigma_min), steps).exp())


def schedule_beta(levels: NoiseLevels, steps: int, alpha: float = 0.6, beta: float = 0.6):
    """Lee et al. 2024 (arXiv 2407.12173): timesteps at the Beta(0.6, 0.6) quantiles of 1 − i/steps,
    rounded, repeats dropped."""
    import numpy as np
    import scipy.stats
    import torch

    ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta)
                 * (len(levels.sigmas) - 1))
    kept = [int(t) for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]
    return _with_zero(torch.stack([levels.sigmas[t] for t in kept]))


def schedule_linear_quadratic(levels: NoiseLevels, steps: int, threshold: float = 0.025):
    """Mochi's schedule (Genmo 2024), as a fraction of σ_max: the first half of the steps linear
    down to 1 − ``threshold``, the rest quadratic down to 0."""
    import torch

    if steps == 1:
        return torch.tensor([1.0, 0.0]) * levels.sigma_max
    linear = steps // 2
    quadratic = steps - linear
    diff = linear - threshold * steps
    a = diff / (linear * quadratic**2)
    b = threshold / linear - 2 * diff / quadratic**2
    c = a * linear**2
    fractions = [i * threshold / linear for i in range(linear)]
    fractions += [a * i**2 + b * i + c for i in range(linear, steps)] + [1.0]
    return torch.tensor([1.0 - f for f in fractions]) * levels.sigmas[-1]


def schedule_kl_optimal(levels: NoiseLevels, steps: int):
    """The KL-optimal schedule (Sabour et al. 2024, "Align Your Steps"): σ = tan of evenly spaced
    angles between atan(σ_max) and atan(σ_min)."""
    import torch

    w = torch.arange(steps, dtype=torch.float).div_(steps - 1)
    return _with_zero((w * math.atan(levels.sigma_min) + (1 - w) * math.atan(levels.sigma_max)).tan())


SCHEDULES: dict[str, tuple[Callable, str]] = {
    "normal": (schedule_normal, "timesteps evenly spaced from 999 to 0, then σ = 0"),
    "karras": (schedule_karras, "Karras et al. ρ = 7 between the model's σ_min and σ_max"),
    "exponential": (schedule_exponential, "evenly spaced in log σ"),
    "sgm_uniform": (lambda levels, steps: schedule_normal(levels, steps, sgm=True),
                    "steps + 1 evenly spaced timesteps, the last (t = 0) dropped"),
    "simple": (schedule_simple, "every (1000/steps)-th training σ from the top"),
    "ddim_uniform": (schedule_ddim_uniform, "DDIM's timesteps 1 + k·(1000 // steps)"),
    "beta": (schedule_beta, "Beta(0.6, 0.6) quantiles"),
    "linear_quadratic": (schedule_linear_quadratic, "Mochi's linear-then-quadratic fraction of σ_max"),
    "kl_optimal": (schedule_kl_optimal, "Align Your Steps' KL-optimal tan spacing"),
    "default": (schedule_normal, "the same as normal (older LoRA Lab workflows)"),
}
SCHEDULE_TOOLTIP = ("Sigma schedule, ComfyUI's scheduler of the same name: " +
                    "; ".join(f"{name} = {text}" for name, (_, text) in SCHEDULES.items()) + ".")


def sigmas_for(spec: SamplerSpec, levels: NoiseLevels, steps: int, strength: float = 1.0):
    """KSampler's sigmas. uni_pc runs on steps + 1 sigmas with the penultimate one dropped. Below
    strength 1 (img2img's denoise) the schedule is made for int(steps / strength) steps and only
    its last steps + 1 sigmas are run."""
    import torch

    check_spec(spec)
    full = strength > 0.9999
    total = steps if full else int(steps / strength)
    if spec.name in DROP_PENULTIMATE:
        sigmas = SCHEDULES[spec.schedule][0](levels, total + 1)
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    else:
        sigmas = SCHEDULES[spec.schedule][0](levels, total)
    return sigmas if full else sigmas[-(steps + 1):]


def check_spec(spec: SamplerSpec) -> None:
    for what, value, valid in (("sampler", spec.name, SAMPLERS), ("schedule", spec.schedule, SCHEDULES),
                               ("batch noise", spec.batch_noise, BATCH_NOISE)):
        if value not in valid:
            raise SamplerError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    if not 0 <= spec.eta <= 1 or not math.isfinite(spec.eta):
        raise SamplerError(f"eta {spec.eta} is outside 0..1")

