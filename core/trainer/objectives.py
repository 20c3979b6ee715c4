"""What a training step minimises, per example. An objective first draws its random numbers for
the whole global batch (:meth:`draw`), so that each process of a multi-process run takes its
share of the same draws one process would make (``Draws.take``), then computes the loss on its
own examples (:meth:`loss`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distill import LCMSpec, lcm_draws, lcm_per_example_loss
from ..noise import (
    NoiseStrategy,
    huber_threshold,
    offset_noise,
    perturb_input_noise,
    pointwise_loss,
    pyramid_noise,
    snr,
    target_for,
)


@dataclass
class Draws:
    """Per-example random draws (tensors whose first axis is the example)."""

    values: dict[str, torch.Tensor]

    def take(self, rows) -> Draws:
        return Draws({k: v[rows] for k, v in self.values.items()})


class DenoisingObjective:
    """The diffusion loss (Ho et al. 2020; diffusers' ``train_text_to_image_lora.py``): noise x₀ to
    a timestep the noise strategy samples, predict ε or v (Salimans & Ho 2022), MSE (or the
    strategy's L1 / scheduled pseudo-Huber) weighted per example by the strategy (min-SNR, Hang et
    al. 2023; …)."""

    def __init__(self, noise: NoiseStrategy, prediction: str, alpha_bar: torch.Tensor, normalize_masked: bool = False):
        self.noise, self.prediction, self.alpha_bar = noise, prediction, alpha_bar
        self.normalize_masked = normalize_masked  # divide a masked example's loss by its mean pixel weight
        self.snr = snr(alpha_bar)

    def draw(self, shape, generator: torch.Generator) -> Draws:
        t = self.noise.sample(shape[0], self.snr, generator)
        eps = offset_noise(shape, generator, self.noise.noise_offset)
        eps = pyramid_noise(eps, generator, self.noise.multires_noise_iterations, self.noise.multires_noise_discount)
        eps_in = perturb_input_noise(eps, generator, self.noise.input_perturbation)
        return Draws({"t": t, "eps": eps, "eps_in": eps_in})

    def loss(self, unet, x0, cond, added, draws: Draws, autocast, pixel_weights: torch.Tensor | None = None,
             weighted: bool = True) -> torch.Tensor:
        """Per-example loss. ``pixel_weights`` ``[B,1,h,w]`` (masked loss) weight the pointwise error
        before its mean, as kohya's masked loss does; ``weighted=False`` leaves out the strategy's
        per-timestep weighting and loss type (the validation loss, a plain MSE: comparable across
        strategies)."""
        device, d = x0.device, draws.values
        t, eps = d["t"], d["eps"].to(device)
        a = self.alpha_bar[t].to(device, torch.float32).view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * d["eps_in"].to(device)
        dtype = next(unet.parameters()).dtype  # a half-precision base model takes half-precision inputs
        if added:
            added = {k: v.to(dtype) for k, v in added.items()}
        with autocast:
            pred = unet(noisy.to(dtype), t.to(device), encoder_hidden_states=cond.to(dtype),
                        added_cond_kwargs=added).sample
        target = target_for(self.prediction, x0, eps, self.alpha_bar[t].to(device, torch.float32))
        # the strategy's loss_type; the unweighted (validation) loss is the plain MSE
        n = self.noise
        huber = n.loss_type in ("huber", "smooth_l1")
        delta = huber_threshold(n.huber_schedule, n.huber_c, t, self.alpha_bar) if huber else None
        error = pointwise_loss(pred.float(), target.float(), n.loss_type if weighted else "l2", delta)
        if pixel_weights is not None:
            error = error * pixel_weights.to(device, torch.float32)
        per_sample = error.mean(dim=(1, 2, 3))
        if pixel_weights is not None and self.normalize_masked:
            per_sample = per_sample / pixel_weights.to(device, torch.float32).mean(dim=(1, 2, 3)).clamp_min(1e-8)
        if not weighted:
            return per_sample
        return per_sample * self.noise.weights(self.snr[t], self.prediction).to(device, torch.float32)


class LCMObjective:
    """LCM-LoRA distillation (Luo et al. 2023; diffusers' ``train_lcm_distill_lora_sd_wds.py``): the
    student with the LoRA matches, at the previous DDIM solver step, the teacher (the same UNet with
    its adapters off) under guidance w (core/distill.py)."""

    def __init__(self, spec: LCMSpec, prediction: str, alpha_bar: torch.Tensor, uncond: torch.Tensor | None):
        self.spec, self.prediction, self.alpha_bar, self.uncond = spec, prediction, alpha_bar, uncond

    def draw(self, shape, generator: torch.Generator) -> Draws:
        return Draws(lcm_draws(shape, self.spec, generator))

    def loss(self, unet, x0, cond, added, draws: Draws, autocast, pixel_weights=None, weighted=True) -> torch.Tensor:
        if pixel_weights is not None:
            raise ValueError("LCM distillation trains on whole images: masked loss does not apply")
        return lcm_per_example_loss(unet, x0, cond, self.uncond, self.alpha_bar, self.spec, self.prediction,
                                    draws.values, autocast, added)
