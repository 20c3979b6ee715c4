"""The validation loss: the denoising loss on held-out examples at fixed timesteps and fixed noise,
so that it is a deterministic function of the weights — comparable between steps, between runs
with other settings, and identical after a resume. Each held-out example is noised at
``validation_timesteps`` evenly spaced timesteps (the midpoints of equal bins of [0, T)) with
noise drawn once from the run's seed; the loss is the plain MSE on the model's target (ε or v),
without the noise strategy's per-timestep weighting, caption dropout or LoRA dropout, and with
the masks where the examples have them."""

from __future__ import annotations

import torch

from .objectives import Draws
from .state import derived_seed


def fixed_timesteps(k: int, num_train_timesteps: int) -> torch.Tensor:
    """``k`` timesteps at the midpoints of ``k`` equal bins of [0, T)."""
    if not 1 <= k <= num_train_timesteps:
        raise ValueError(f"validation_timesteps {k} must be 1 to {num_train_timesteps}")
    return ((torch.arange(k, dtype=torch.float64) + 0.5) * num_train_timesteps / k).long()


class ValidationLoss:
    """``__call__()`` → the mean loss of ``unet`` over held-out examples × fixed timesteps."""

    def __init__(self, objective, unet, autocast, latents, conditioner, pixel_weights, k: int, seed: int):
        self.objective, self.unet, self.autocast = objective, unet, autocast
        self.latents, self.conditioner, self.pixel_weights = latents, conditioner, pixel_weights
        self.t = fixed_timesteps(k, len(objective.alpha_bar))
        generator = torch.Generator().manual_seed(derived_seed(seed, 3))  # its own stream: training draws are untouched
        self.noise = [torch.randn((k, *x.shape), generator=generator) for x in latents]

    @torch.no_grad()
    def __call__(self) -> float:
        from .conditioner import Drop

        total = 0.0
        for i, x0 in enumerate(self.latents):
            k = len(self.t)
            cond, added = self.conditioner([i] * k, Drop())
            weights = self.pixel_weights[i].expand(k, *self.pixel_weights[i].shape) \
                if self.pixel_weights is not None else None
            draws = Draws({"t": self.t, "eps": self.noise[i], "eps_in": self.noise[i]})
            total += self.objective.loss(self.unet, x0.expand(k, *x0.shape), cond, added, draws, self.autocast, weights,
                                         weighted=False).sum().item()
        return total / (len(self.latents) * len(self.t))
