"""``LL_SAMPLER``: a sampling algorithm and sigma schedule, built as a diffusers scheduler from
the loaded pipeline's own scheduler config (so β schedule and prediction type always match).

Names follow ComfyUI's KSampler so users recognise them; each entry says which diffusers
scheduler implements it. This module is plain data until :func:`build_scheduler` runs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplerEntry:
    scheduler: str  # diffusers class name
    options: dict = field(default_factory=dict)
    note: str = ""


SAMPLERS: dict[str, SamplerEntry] = {
    "euler": SamplerEntry("EulerDiscreteScheduler", note="ComfyUI 'euler'"),
    "euler_ancestral": SamplerEntry("EulerAncestralDiscreteScheduler", note="ComfyUI 'euler_ancestral'"),
    "heun": SamplerEntry("HeunDiscreteScheduler", note="ComfyUI 'heun'"),
    "dpmpp_2m": SamplerEntry("DPMSolverMultistepScheduler",
                             {"algorithm_type": "dpmsolver++", "solver_order": 2}, "ComfyUI 'dpmpp_2m'"),
    "dpmpp_2m_sde": SamplerEntry("DPMSolverMultistepScheduler",
                                 {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                                 "ComfyUI 'dpmpp_2m_sde' (midpoint)"),
    "dpmpp_sde": SamplerEntry("DPMSolverSDEScheduler", note="ComfyUI 'dpmpp_sde' (needs torchsde)"),
    "ddim": SamplerEntry("DDIMScheduler", note="true DDIM; ComfyUI's 'ddim' is Euler"),
    "lcm": SamplerEntry("LCMScheduler", note="ComfyUI 'lcm'; for LCM/LCM-LoRA models, CFG about 1-2"),
    "uni_pc": SamplerEntry("UniPCMultistepScheduler", {"solver_type": "bh2"}, "ComfyUI 'uni_pc_bh2'"),
}

# Sigma schedules, each starting at the top noise level (diffusers' SD1.5 config says "leading",
# which starts at sigma 8.4 instead of 14.6 and is never used here).
SCHEDULES: dict[str, dict] = {
    "default": {"timestep_spacing": "linspace"},  # ComfyUI 'normal': timesteps evenly from 999 to 0
    "simple": {"timestep_spacing": "trailing"},  # ComfyUI 'simple': every (1000/steps)-th step from 999
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
}
SCHEDULE_TOOLTIP = ("Sigma schedule: default = ComfyUI 'normal' (timesteps evenly spaced from 999 to 0); "
                    "simple = ComfyUI 'simple' (trailing: 999, 999-1000/n, ...); karras / exponential = "
                    "ComfyUI's schedulers of those names (not every sampler supports them).")

LATENT_DEFAULTS = {"clip_sample": False, "set_alpha_to_one": False}

SAMPLER_TOOLTIP = "Sampling algorithm (ComfyUI names): " + "; ".join(
    f"{name} = diffusers {e.scheduler}" + (f" ({e.note})" if e.note else "") for name, e in SAMPLERS.items())


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    schedule: str = "default"
    eta: float = 0.0

    @property
    def label(self) -> str:
        return self.name if self.schedule == "default" else f"{self.name}_{self.schedule}"


class SamplerError(ValueError):
    pass


def build_scheduler(spec: SamplerSpec, base_config, seeds: list[int] | None = None):
    """A fresh diffusers scheduler for ``spec`` configured from ``base_config``.

    ``seeds`` (one per image of the batch) seed the Brownian tree of DPM++ SDE, which otherwise
    draws its seed from the global RNG and would not be reproducible.
    """
    import diffusers

    if spec.name not in SAMPLERS:
        raise SamplerError(f"unknown sampler {spec.name!r}; valid: {', '.join(SAMPLERS)}")
    if spec.schedule not in SCHEDULES:
        raise SamplerError(f"unknown schedule {spec.schedule!r}; valid: {', '.join(SCHEDULES)}")
    entry = SAMPLERS[spec.name]
    cls = getattr(diffusers, entry.scheduler)
    accepted = inspect.signature(cls.__init__).parameters
    overrides = {**SCHEDULES["default"], **entry.options, **SCHEDULES[spec.schedule]}
    unsupported = [k for k in SCHEDULES[spec.schedule] if k not in accepted]
    if unsupported:
        able = [n for n, e in SAMPLERS.items()
                if all(k in inspect.signature(getattr(diffusers, e.scheduler).__init__).parameters
                       for k in SCHEDULES[spec.schedule])]
        raise SamplerError(f"sampler {spec.name!r} does not support the {spec.schedule!r} schedule; "
                           f"samplers that do: {', '.join(able)}")
    if spec.name == "dpmpp_sde" and seeds is not None:
        overrides["noise_sampler_seed"] = list(seeds)
    # Keep only what this scheduler takes: the β schedule, prediction type and training steps
    # carry over; another family's settings (karras, algorithm_type...) do not.
    config = {k: v for k, v in dict(base_config).items() if k in accepted and k not in
              ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "algorithm_type",
               "solver_order", "solver_type", "noise_sampler_seed")}
    # SD's own scheduler configs say so; DDIM/LCM default to clipping x0 to [-1, 1] (wrong for
    # latents) and to a final alpha of one, so set them when the pipeline's config is silent.
    config = {**{k: v for k, v in LATENT_DEFAULTS.items() if k in accepted}, **config}
    config.update({k: v for k, v in overrides.items() if k in accepted})
    return cls.from_config(config)
