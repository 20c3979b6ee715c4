"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", arXiv 2302.04867): multistep data-prediction solver, the UniC corrector after
every step but the last, the order rising from 1 to 3 and falling again over the final steps.

Written in the paper's VP form. The VP quantities are computed from σ in float32 through log α
exactly as DPM-Solver's NoiseScheduleVP does: that route loses precision near σ = 0.001 (the
stand-in for the final σ = 0) and KSampler's result depends on it, so matching it means
following it. ``B(h)`` is h for bh1 and e^h − 1 for bh2.
"""

from __future__ import annotations

import torch

from .samplers import SamplerError


def _log_alpha(sigma):
    return 0.5 * torch.log(1 / (sigma * sigma + 1))


def _alpha(sigma):
    return _log_alpha(sigma).exp()


def _std(sigma):
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma):
    """λ = log α − log σ_VP, the half log-SNR."""
    log_alpha = _log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _data_prediction(denoise, x_vp, sigma):
    """x0 of a VP latent: through the ε the denoiser implies, as the VP solver sees the model."""
    x = x_vp * (sigma**2 + 1.0) ** 0.5
    eps = (x - denoise(x, sigma)) / sigma
    return (x_vp - _std(sigma) * eps) / _alpha(sigma)


def _update(denoise, x, models, sigmas_prev, sigma, order, variant, use_corrector):
    """One UniP step from ``sigmas_prev[-1]`` to ``sigma`` of the given order, then UniC unless
    ``use_corrector`` is false. Returns the new latent and the model's x0 there (None without UniC)."""
    lam_0, lam_t = _lambda(sigmas_prev[-1]), _lambda(sigma)
    h = lam_t - lam_0
    rks, d1s = [], []
    for i in range(1, order):
        rk = (_lambda(sigmas_prev[-(i + 1)]) - lam_0) / h
        rks.append(rk)
        d1s.append((models[-(i + 1)] - models[-1]) / rk)
    rks = torch.tensor(rks + [1.0], device=x.device)

    hh = -h
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    # The order conditions (paper eq. 8): R ρ = b with R_ik = r_k^(i-1), b_i = i!·φ_(i+1)(h)·h/B(h).
    rows, b, h_phi_k, factorial = [], [], h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    rows, b = torch.stack(rows), torch.tensor(b, device=x.device)

    alpha_t = _alpha(sigma)
    x_base = _std(sigma) / _std(sigmas_prev[-1]) * x - alpha_t * h_phi_1 * models[-1]
    stacked = torch.stack(d1s, dim=1) if d1s else None
    if stacked is not None:
        rhos_p = torch.tensor([0.5], device=x.device) if order == 2 else torch.linalg.solve(rows[:-1, :-1], b[:-1])
        x_t = x_base - alpha_t * b_h * torch.tensordot(stacked, rhos_p, dims=([1], [0]))
    else:
        x_t = x_base
    if not use_corrector:
        return x_t, None
    rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(rows, b)
    model_t = _data_prediction(denoise, x_t, sigma)
    correction = torch.tensordot(stacked, rhos_c[:-1], dims=([1], [0])) if stacked is not None else 0
    return x_base - alpha_t * b_h * (correction + rhos_c[-1] * (model_t - models[-1])), model_t


def sample_unipc(denoise, x, sigmas, noise, eta, on_step, variant: str = "bh1"):
    """UniPC over KSampler's sigmas (VE latent in, VE latent out). The final σ = 0 becomes 0.001,
    where λ is finite; the result is divided by α there. ``noise`` and ``eta`` are unused (ODE)."""
    if len(sigmas) < 3:
        raise SamplerError("uni_pc needs at least 2 steps (ComfyUI's returns the noise unchanged for 1)")
    sigmas = sigmas.clone()
    if sigmas[-1] == 0:
        sigmas[-1] = 0.001
    x = x / torch.sqrt(1.0 + sigmas[0] ** 2)
    steps = len(sigmas) - 1
    order = min(3, steps - 1)
    models, previous = [_data_prediction(denoise, x, sigmas[0])], [sigmas[0]]
    for step in range(1, steps + 1):
        # Warm-up steps use every model value so far; then the order drops over the last steps.
        step_order = step if step < order else min(order, steps + 1 - step)
        x, model_x = _update(denoise, x, models, previous, sigmas[step], step_order, variant,
                             use_corrector=step < steps)
        if step < order:
            models.append(model_x)
            previous.append(sigmas[step])
        else:
            models, previous = models[1:] + [model_x], previous[1:] + [sigmas[step]]
        on_step()
    return x / _alpha(sigmas[-1])
