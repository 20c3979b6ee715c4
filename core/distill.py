"""LCM-LoRA distillation (Luo et al. 2023, "LCM-LoRA"): a UNet LoRA trained so that the model with
it maps any point of the teacher's guided probability-flow ODE straight to its end, which lets the
LCM sampler make images in 2-8 steps at CFG 1.

One training step for latents x₀ with caption embedding c (the teacher is the same UNet with the
LoRA switched off, as in diffusers' ``train_lcm_distill_lora_sd_wds.py``):

- DDIM solver timesteps τ_i = (i+1)·k − 1, k = T / N_ddim (``ddim_timesteps``); draw i uniformly,
  s = τ_i and t = max(s − k, 0); draw the guidance w ~ U[w_min, w_max].
- z_s = √ᾱ_s·x₀ + √(1−ᾱ_s)·ε.
- Student: f(z_s, s) = c_skip(s)·z_s + c_out(s)·x̂₀(z_s, s) with the LoRA on, where
  c_skip(t) = σ_d² / ((λt)² + σ_d²), c_out(t) = λt / √((λt)² + σ_d²), σ_d = 0.5, λ = 10
  (``boundary_scalings``; diffusers' ``LCMScheduler.get_scalings_for_boundary_condition_discrete``).
- Teacher, LoRA off: x̂₀ and ε̂ guided the LCM paper's way, x̂ = x̂_c + w·(x̂_c − x̂_u); one DDIM
  step z_t = √ᾱ_t·x̂₀ + √(1−ᾱ_t)·ε̂ (ᾱ of τ_{i−1}, ᾱ_0 for i = 0: ``ddim_step``).
- Target (no gradient, LoRA on): c_skip(t)·z_t + c_out(t)·x̂₀(z_t, t).
- Loss: Huber √((f − target)² + c²) − c (c = 0.001), or L2, averaged per example.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .choices import LCM_LOSSES as LOSSES


@dataclass(frozen=True)
class LCMSpec:
    ddim_steps: int = 50
    w_min: float = 3.0
    w_max: float = 15.0
    loss: str = "huber"
    huber_c: float = 0.001
    timestep_scaling: float = 10.0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"LCM loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(f"guidance range [{self.w_min}, {self.w_max}] must satisfy 0 <= w_min <= w_max")
        if self.ddim_steps < 1:
            raise ValueError(f"ddim_steps must be at least 1, got {self.ddim_steps}")


def ddim_timesteps(num_train_timesteps: int, ddim_steps: int) -> torch.Tensor:
    """τ_i = (i+1)·k − 1 for i < N, k = T // N: the DDIM solver's grid, ending at T − 1."""
    k = num_train_timesteps // ddim_steps
    if k < 1:
        raise ValueError(f"ddim_steps {ddim_steps} exceeds the {num_train_timesteps} training timesteps")
    return torch.arange(1, ddim_steps + 1) * k - 1


def boundary_scalings(t: torch.Tensor, timestep_scaling: float = 10.0, sigma_data: float = 0.5):
    """(c_skip, c_out) at integer timesteps t: c_skip(0) = 1 and c_out(0) = 0, so f(x, 0) = x."""
    scaled = timestep_scaling * t.double()
    return sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2), scaled / (scaled ** 2 + sigma_data ** 2).sqrt()


def predicted_x0_and_eps(output: torch.Tensor, sample: torch.Tensor, alpha_bar_t: torch.Tensor, prediction: str):
    """x̂₀ and ε̂ from the model output at z_t = √ᾱ·x₀ + √(1−ᾱ)·ε (ᾱ shaped to broadcast)."""
    a, s = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
    if prediction == "epsilon":
        return (sample - s * output) / a, output
    if prediction == "v_prediction":
        return a * sample - s * output, a * output + s * sample
    raise ValueError(f"prediction type {prediction!r} is not epsilon or v_prediction")


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (η = 0) to the previous solver timestep: √ᾱ_prev·x̂₀ + √(1−ᾱ_prev)·ε̂."""
    return alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps


def consistency_loss(pred: torch.Tensor, target: torch.Tensor, spec: LCMSpec) -> torch.Tensor:
    """Per-example loss: Huber √(d² + c²) − c or squared error, averaged over all but the batch axis."""
    diff = pred.float() - target.float()
    per_element = (diff ** 2 + spec.huber_c ** 2).sqrt() - spec.huber_c if spec.loss == "huber" else diff ** 2
    return per_element.flatten(1).mean(1)


@contextmanager
def adapters_off(model):
    """The teacher: the same UNet with every peft LoRA layer switched off."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def lcm_draws(shape, spec: LCMSpec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A step's random draws for ``shape[0]`` examples, in this order: the solver-step index, the
    guidance w, the noise ε (a CPU generator, so runs repeat and resume exactly)."""
    n = shape[0]
    index = torch.randint(0, spec.ddim_steps, (n,), generator=generator)
    w = spec.w_min + (spec.w_max - spec.w_min) * torch.rand(n, generator=generator)
    return {"index": index, "w": w, "eps": torch.randn(shape, generator=generator)}


def lcm_per_example_loss(unet, x0, cond, uncond, alpha_bar, spec: LCMSpec, prediction: str, draws,
                         autocast, added: dict | None = None) -> torch.Tensor:
    """One LCM-LoRA distillation step's per-example loss (see the module docstring). ``alpha_bar``
    is ᾱ on the CPU; ``uncond`` the empty prompt's embedding (one row; SD1); ``draws`` are :func:`lcm_draws`'s (or a
    CPU generator to draw them from). SDXL passes ``added``
    (pooled ``text_embeds``, ``time_ids``); its unconditional input is zeros for the prompt and
    pooled embeddings with the same size conditioning (SDXL's ``force_zeros_for_empty_prompt``, as
    diffusers' SDXL LCM scripts do)."""
    device, dtype = x0.device, next(unet.parameters()).dtype
    if isinstance(draws, torch.Generator):
        draws = lcm_draws(x0.shape, spec, draws)
    uncond_added = None
    if added:
        added = {k: v.to(device, dtype) for k, v in added.items()}
        uncond = torch.zeros_like(cond[:1])
        uncond_added = {**added, "text_embeds": torch.zeros_like(added["text_embeds"])}
    grid = ddim_timesteps(len(alpha_bar), spec.ddim_steps)
    s = grid[draws["index"]]
    t = (s - (grid[0] + 1)).clamp(min=0)  # τ_{i-1} = τ_i − k; 0 below the grid
    w = draws["w"].view(-1, 1, 1, 1).to(device)
    eps = draws["eps"].to(device)

    def shaped(values):
        return values.to(device, torch.float32).view(-1, 1, 1, 1)

    a_s, a_t = shaped(alpha_bar[s]), shaped(alpha_bar[t])  # ᾱ_t is also the DDIM step's ᾱ_prev
    z_s = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps

    def run(z, timesteps, embedding, conditioning=added):
        with autocast:
            return unet(z.to(dtype), timesteps.to(device), encoder_hidden_states=embedding.to(dtype),
                        added_cond_kwargs=conditioning).sample.float()

    c_skip_s, c_out_s = (shaped(c.float()) for c in boundary_scalings(s, spec.timestep_scaling))
    c_skip_t, c_out_t = (shaped(c.float()) for c in boundary_scalings(t, spec.timestep_scaling))
    student = c_skip_s * z_s + c_out_s * predicted_x0_and_eps(run(z_s, s, cond), z_s, a_s, prediction)[0]
    with torch.no_grad():
        with adapters_off(unet):
            x_c, e_c = predicted_x0_and_eps(run(z_s, s, cond), z_s, a_s, prediction)
            x_u, e_u = predicted_x0_and_eps(run(z_s, s, uncond.expand_as(cond), uncond_added), z_s, a_s, prediction)
        z_t = ddim_step(x_c + w * (x_c - x_u), e_c + w * (e_c - e_u), a_t)
        target = c_skip_t * z_t + c_out_t * predicted_x0_and_eps(run(z_t, t, cond), z_t, a_t, prediction)[0]
    return consistency_loss(student, target, spec)
