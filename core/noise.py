"""Training-time noise strategies: β schedules, timestep samplers, loss weights, noise tweaks.

Small pure functions over tensors, each with its formula; tests compare them with diffusers and
with the papers' formulas. T is the number of training timesteps (1000 for SD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .choices import BETA_SCHEDULES, HUBER_SCHEDULES, LOSS_TYPES, LOSS_WEIGHTS, PREDICTIONS, TIMESTEP_SAMPLERS


def betas_for(schedule: str, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """β_1..β_T in float64.

    linear:        β = linspace(β0, β1)
    scaled_linear: β = linspace(√β0, √β1)²  (SD's schedule; the seeds' "quadratic")
    cosine:        β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999), ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2), s = 0.008
                   (Nichol & Dhariwal 2021; diffusers' "squaredcos_cap_v2")
    """
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    if schedule == "cosine":
        return torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                            dtype=torch.float64)
    raise ValueError(f"beta schedule {schedule!r} is not one of {', '.join(BETA_SCHEDULES)}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 (arXiv 2305.08891), Algorithm 1: shift and scale √ᾱ so that √ᾱ_T = 0
    (pure noise at the last step) while √ᾱ_1 keeps its value."""
    sqrt_ab = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


# SD's schedule: what a scheduler config that names no schedule means (ComfyUI and diffusers'
# SD pipelines assume it too).
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
               "beta_schedule": "scaled_linear", "trained_betas": None, "rescale_betas_zero_snr": False,
               "prediction_type": "epsilon"}
# our names <-> diffusers' ``beta_schedule`` names
DIFFUSERS_BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
MODEL = "model"  # a Noise Strategy choice: keep what the pipeline's scheduler config says


def schedule_of(scheduler_config) -> dict:
    """The keys of a diffusers scheduler config that fix training's noise and sampling's: β
    (schedule, range, count or the trained list), zero terminal SNR, prediction type."""
    config = dict(scheduler_config or {})
    return {key: config.get(key, default) if config.get(key) is not None else default
            for key, default in SD_SCHEDULE.items()}


def betas_from_config(scheduler_config) -> torch.Tensor:
    """β_1..β_T (float64) of a diffusers scheduler config, as its schedulers compute them: the
    trained list, or the named schedule over [beta_start, beta_end], then the zero-terminal-SNR
    rescale when ``rescale_betas_zero_snr`` is set. Training and sampling both read β from here."""
    config = schedule_of(scheduler_config)
    if config["trained_betas"] is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float64)
    else:
        names = {v: k for k, v in DIFFUSERS_BETAS.items()}
        if config["beta_schedule"] not in names:
            raise ValueError(f"beta schedule {config['beta_schedule']!r} is not one of {', '.join(names)}")
        betas = betas_for(names[config["beta_schedule"]], config["num_train_timesteps"], config["beta_start"],
                          config["beta_end"])
    return rescale_zero_terminal_snr(betas) if config["rescale_betas_zero_snr"] else betas


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1 - betas, dim=0)


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t)."""
    return alpha_bar / (1 - alpha_bar)


def timestep_probabilities(kind: str, snr_t: torch.Tensor, *, snr_power: float = 0.25, split: int | None = None,
                           t_min: int = 0, t_max: int | None = None) -> torch.Tensor | None:
    """p(t) over 0..T−1 for the discrete samplers (None for logit_normal, which is continuous).

    uniform:    p(t) = 1/T
    snr:        p(t) ∝ SNR(t)^k, k = ``snr_power`` (k > 0 favours low noise / fine detail; k = 0.25
                puts the median near t = 270 on SD's schedule; k = 1 would sample almost only t < 20)
    high_noise: uniform on [split, T) (default split = T/2);  low_noise: uniform on [0, split)
    range:      uniform on [t_min, t_max] (inclusive)
    """
    T = snr_t.shape[0]
    split = T // 2 if split is None else split
    mask = torch.zeros(T, dtype=torch.float64)
    if kind == "uniform":
        mask[:] = 1
    elif kind == "snr":
        return (snr_t.double() ** snr_power) / (snr_t.double() ** snr_power).sum()
    elif kind == "high_noise":
        mask[split:] = 1
    elif kind == "low_noise":
        mask[:split] = 1
    elif kind == "range":
        mask[t_min:(T - 1 if t_max is None else t_max) + 1] = 1
    elif kind == "logit_normal":
        return None
    else:
        raise ValueError(f"timestep sampling {kind!r} is not one of {', '.join(TIMESTEP_SAMPLERS)}")
    if mask.sum() == 0:
        raise ValueError(f"timestep sampling {kind!r} selects no timestep "
                         f"(split={split}, t_min={t_min}, t_max={t_max})")
    return mask / mask.sum()


def sample_timesteps(kind: str, n: int, snr_t: torch.Tensor, generator: torch.Generator, *,
                     logit_mean: float = 0.0, logit_std: float = 1.0, **options) -> torch.Tensor:
    """n integer timesteps. logit_normal: t = ⌊T·sigmoid(m + s·z)⌋, z ~ N(0, 1) (SD3, OneTrainer)."""
    T = snr_t.shape[0]
    probabilities = timestep_probabilities(kind, snr_t, **options)
    if probabilities is None:
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return (torch.sigmoid(logit_mean + logit_std * z) * T).long().clamp(0, T - 1)
    return torch.multinomial(probabilities, n, replacement=True, generator=generator)


def loss_weight(kind: str, snr_t: torch.Tensor, prediction: str = "epsilon", gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weight of the MSE in the prediction's space.

    mse:      1
    snr:      SNR/(1 + SNR) = ᾱ_t  (bounded SNR weighting: high-noise steps count less)
    min_snr:  ε: min(SNR, γ)/SNR = min(1, γ/SNR);  v: min(SNR, γ)/(SNR + 1)  (Hang et al. 2023; γ = 5
              usual). The second ε form is 1 at SNR = 0 (zero terminal SNR's last step), the limit of the
              first, which computed as written is 0/0.
    debiased: ε: 1/√min(SNR, 1000);  v: 1/√(min(SNR, 1000) + 1)  (kohya's debiased estimation); the ε
              form has no finite value at SNR = 0 (:func:`unsupported_combination`)
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction type {prediction!r} is not one of {', '.join(PREDICTIONS)}")
    v = prediction == "v_prediction"
    if kind == "mse":
        return torch.ones_like(snr_t)
    if kind == "snr":
        return snr_t / (1 + snr_t)
    if kind == "min_snr":
        return snr_t.clamp(max=gamma) / (snr_t + 1) if v else (gamma / snr_t).clamp(max=1)
    if kind == "debiased":
        clipped = snr_t.clamp(max=1000)
        return 1 / (clipped + 1 if v else clipped).sqrt()
    raise ValueError(f"loss weighting {kind!r} is not one of {', '.join(LOSS_WEIGHTS)}")


def offset_noise(shape, generator: torch.Generator, offset: float = 0.0, dtype=torch.float32) -> torch.Tensor:
    """ε ~ N(0, I) plus ``offset``·N(0, 1) shared over each image's channel (Guttenberg 2023's
    noise offset, which lets a model learn very dark and very bright images)."""
    noise = torch.randn(shape, generator=generator, dtype=dtype)
    if offset:
        noise = noise + offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator, dtype=dtype)
    return noise


def perturb_input_noise(noise: torch.Tensor, generator: torch.Generator, gamma: float = 0.0) -> torch.Tensor:
    """Input perturbation (Ning et al. 2023): x_t is built from ε + γ·ξ while the target stays ε."""
    if not gamma:
        return noise
    return noise + gamma * torch.randn(noise.shape, generator=generator, dtype=noise.dtype)


def pyramid_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution (pyramid) noise (Whitaker 2023; kohya's ``multires_noise_iterations`` /
    ``_discount``): ε plus, for i = 0 … iterations − 1, N(0, 1) noise at 1/rⁱ of the latent size
    (r uniform in [2, 4) per level, bilinearly upsampled) weighted by discountⁱ, stopping after a
    level of 1 pixel; then divided by its standard deviation over the batch."""
    if not iterations:
        return noise
    _, _, h, w = noise.shape
    out = noise.clone()
    for i in range(iterations):
        r = float(torch.rand((), generator=generator, dtype=torch.float64)) * 2 + 2
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        level = torch.randn((*noise.shape[:2], hn, wn), generator=generator, dtype=noise.dtype)
        out += torch.nn.functional.interpolate(level, size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def huber_threshold(schedule: str, c: float, t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The pseudo-Huber threshold δ per example (Khrapov & Nagel 2024, kohya's ``huber_schedule``):
    constant: c; exponential: exp(ln(c)·t/T), 1 at t = 0 falling to c at t = T; snr:
    (1 − c)/(1 + σ_t)² + c with σ_t = √((1 − ᾱ_t)/ᾱ_t), near 1 for clean inputs and c for pure noise."""
    t = t.to(alpha_bar.device)
    if schedule == "constant":
        return torch.full(t.shape, float(c), dtype=torch.float32)
    if schedule == "exponential":
        return torch.exp(math.log(c) * t.double() / alpha_bar.shape[0]).float()
    if schedule == "snr":
        a = alpha_bar[t].double()
        return ((1 - c) / (1 + ((1 - a) / a).sqrt()) ** 2 + c).float()
    raise ValueError(f"huber_schedule {schedule!r} is not one of {', '.join(HUBER_SCHEDULES)}")


def pointwise_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str, delta: torch.Tensor | None = None):
    """The loss per element: l2 (x²), l1 (|x|), huber (pseudo-Huber 2δ(√(x² + δ²) − δ): x² for |x| ≪ δ,
    2δ|x| beyond) or smooth_l1 (the same divided by δ), x = pred − target; ``delta`` one per example."""
    x = pred - target
    if loss_type == "l2":
        return x**2
    if loss_type == "l1":
        return x.abs()
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    d = delta.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))
    # 2(√(x² + δ²) − δ) rationalised: the same value without the cancellation that loses float32
    # precision when δ is large against x
    huber = 2 * x**2 / ((x**2 + d**2).sqrt() + d)
    return d * huber if loss_type == "huber" else huber


def target_for(prediction: str, latents: torch.Tensor, noise: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """The training target: ε, or v = √ᾱ·ε − √(1 − ᾱ)·x0 (Salimans & Ho 2022)."""
    if prediction == "epsilon":
        return noise
    a = alpha_bar_t.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
    return a.sqrt() * noise - (1 - a).sqrt() * latents


def unsupported_combination(loss_weighting: str, prediction: str, zero_terminal_snr: bool) -> str | None:
    """Why these settings cannot train, or None. Zero terminal SNR makes SNR = 0 at the last timestep,
    where debiased ε weighting 1/√SNR is infinite (the loss becomes NaN); Lin et al. 2023 pair zero
    terminal SNR with v prediction, whose weight 1/√(SNR + 1) is 1 there."""
    if zero_terminal_snr and loss_weighting == "debiased" and prediction == "epsilon":
        return ("loss_weighting 'debiased' with prediction 'epsilon' and zero_terminal_snr on weighs the last "
                "timestep (SNR = 0) by 1/sqrt(0): use prediction 'v_prediction', another loss_weighting, or "
                "zero_terminal_snr off")
    return None


@dataclass(frozen=True)
class NoiseStrategy:
    """``LL_NOISE``: how training noises latents and weighs the loss."""

    beta_schedule: str = MODEL  # or a BETA_SCHEDULES name over the model's β range
    zero_terminal_snr: bool = False  # True rescales; False keeps the model's setting
    timestep_sampling: str = "uniform"
    snr_power: float = 0.25
    split: int = 500
    t_min: int = 0
    t_max: int = 999
    logit_mean: float = 0.0
    logit_std: float = 1.0
    loss_weighting: str = "mse"
    min_snr_gamma: float = 5.0
    prediction: str = MODEL  # or a PREDICTIONS name
    noise_offset: float = 0.0
    input_perturbation: float = 0.0
    # added later (left out of run signatures at their defaults, so older checkpoints still resume)
    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.huber_schedule not in HUBER_SCHEDULES:
            raise ValueError(f"huber_schedule {self.huber_schedule!r} is not one of {', '.join(HUBER_SCHEDULES)}")
        if not 0 < self.huber_c <= 1:
            raise ValueError(f"huber_c {self.huber_c} must be in (0, 1]")
        if self.multires_noise_iterations < 0:
            raise ValueError(f"multires_noise_iterations {self.multires_noise_iterations} must be at least 0")
        if not 0 <= self.multires_noise_discount <= 1:
            raise ValueError(f"multires_noise_discount {self.multires_noise_discount} must be in [0, 1]")
        if self.beta_schedule not in (MODEL, *BETA_SCHEDULES):
            raise ValueError(f"beta schedule {self.beta_schedule!r} is not one of {MODEL}, {', '.join(BETA_SCHEDULES)}")
        if self.prediction not in (MODEL, *PREDICTIONS):
            raise ValueError(f"prediction type {self.prediction!r} is not one of {MODEL}, {', '.join(PREDICTIONS)}")
        if self.prediction != MODEL:
            problem = unsupported_combination(self.loss_weighting, self.prediction, self.zero_terminal_snr)
            if problem:
                raise ValueError(problem)

    def schedule(self, scheduler_config=None) -> dict:
        """The schedule this strategy trains with on a model whose scheduler config is
        ``scheduler_config`` (SD's when None), in that config's keys: the model's own, except where
        the strategy deliberately overrides it (a named β schedule over the model's β range, zero
        terminal SNR, a named prediction type). A LoRA carries it so that sampling matches."""
        config = schedule_of(scheduler_config)
        if self.beta_schedule != MODEL:
            config.update(beta_schedule=DIFFUSERS_BETAS[self.beta_schedule], trained_betas=None)
        if self.zero_terminal_snr:
            config["rescale_betas_zero_snr"] = True
        if self.prediction != MODEL:
            config["prediction_type"] = self.prediction
        prediction = config["prediction_type"]
        if prediction not in PREDICTIONS:
            raise ValueError(f"the model's prediction type {prediction!r} cannot be trained; "
                             f"valid: {', '.join(PREDICTIONS)}")
        problem = unsupported_combination(self.loss_weighting, prediction, config["rescale_betas_zero_snr"])
        if problem:
            raise ValueError(problem)
        return config

    def betas(self, scheduler_config=None) -> torch.Tensor:
        return betas_from_config(self.schedule(scheduler_config))

    def sample(self, n: int, snr_t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.timestep_sampling == "logit_normal":
            return sample_timesteps("logit_normal", n, snr_t, generator, logit_mean=self.logit_mean,
                                    logit_std=self.logit_std)
        options = {"snr": {"snr_power": self.snr_power}, "high_noise": {"split": self.split},
                   "low_noise": {"split": self.split}, "range": {"t_min": self.t_min, "t_max": self.t_max}}
        return sample_timesteps(self.timestep_sampling, n, snr_t, generator,
                                **options.get(self.timestep_sampling, {}))

    def weights(self, snr_t: torch.Tensor, prediction: str | None = None) -> torch.Tensor:
        """Loss weights for a model predicting ``prediction`` (the strategy's own when it names one)."""
        prediction = prediction or (self.prediction if self.prediction != MODEL else "epsilon")
        return loss_weight(self.loss_weighting, snr_t, prediction, self.min_snr_gamma)
