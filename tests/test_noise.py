"""Noise-strategy formulas against diffusers and the papers."""

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale
from diffusers.training_utils import compute_snr

from loralab.core import noise

DIFFUSERS_NAMES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("schedule", noise.BETA_SCHEDULES)
def test_beta_schedules_equal_diffusers_ddpm_betas(schedule):
    ref = DDPMScheduler(beta_schedule=DIFFUSERS_NAMES[schedule], beta_start=0.00085, beta_end=0.012).betas
    torch.testing.assert_close(noise.betas_for(schedule).float(), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("schedule", noise.BETA_SCHEDULES)
def test_zero_terminal_snr_equals_diffusers_and_reaches_zero(schedule):
    betas = noise.betas_for(schedule)
    ours = noise.rescale_zero_terminal_snr(betas)
    torch.testing.assert_close(ours, diffusers_rescale(betas.clone()), rtol=1e-10, atol=1e-12)
    alpha_bar = noise.alphas_cumprod(ours)
    assert alpha_bar[-1] < 1e-12 and torch.isclose(alpha_bar[0], noise.alphas_cumprod(betas)[0])


def test_snr_equals_diffusers_compute_snr():
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([0, 10, 500, 999])
    ours = noise.snr(noise.alphas_cumprod(noise.betas_for("scaled_linear")))[t]
    torch.testing.assert_close(ours.float(), compute_snr(scheduler, t), rtol=1e-4, atol=0)  # diffusers: fp32


SNR = noise.snr(noise.alphas_cumprod(noise.betas_for("scaled_linear")))


@pytest.mark.parametrize("prediction", noise.PREDICTIONS)
def test_min_snr_weights_equal_the_diffusers_training_script_formula(prediction):
    gamma = 5.0
    # train_text_to_image.py: stack([snr, γ]).min() / snr (ε) or / (snr + 1) (v)
    ref = torch.stack([SNR, gamma * torch.ones_like(SNR)], dim=1).min(dim=1)[0]
    ref = ref / (SNR + 1 if prediction == "v_prediction" else SNR)
    torch.testing.assert_close(noise.loss_weight("min_snr", SNR, prediction, gamma), ref)


def test_min_snr_on_epsilon_is_the_x0_loss_weighted_by_min_snr():
    """Hang et al.: the x0-MSE weighted by min(SNR, γ). The ε error maps to the x0 error by
    x0 − x̂0 = −√((1 − ᾱ)/ᾱ)(ε − ε̂), i.e. |x0 err|² = |ε err|² / SNR."""
    eps_err2 = torch.rand(1000, dtype=torch.float64)
    x0_err2 = eps_err2 / SNR
    torch.testing.assert_close(noise.loss_weight("min_snr", SNR) * eps_err2, SNR.clamp(max=5) * x0_err2)


def test_debiased_and_snr_weights_follow_their_definitions():
    torch.testing.assert_close(noise.loss_weight("debiased", SNR), 1 / SNR.clamp(max=1000).sqrt())
    torch.testing.assert_close(noise.loss_weight("debiased", SNR, "v_prediction"),
                               1 / (SNR.clamp(max=1000) + 1).sqrt())
    alpha_bar = noise.alphas_cumprod(noise.betas_for("scaled_linear"))
    torch.testing.assert_close(noise.loss_weight("snr", SNR), alpha_bar)
    assert torch.equal(noise.loss_weight("mse", SNR), torch.ones_like(SNR))


def chi_square_ok(samples: torch.Tensor, probabilities: torch.Tensor, bins: int = 20) -> bool:
    """Pearson χ² on 20 equal-width bins of t at the 0.1 % level (fixed seed, so deterministic)."""
    from scipy.stats import chisquare

    T = probabilities.shape[0]
    edges = torch.linspace(0, T, bins + 1).long()
    bounds = list(zip(edges[:-1], edges[1:], strict=True))
    observed = torch.stack([((samples >= a) & (samples < b)).sum() for a, b in bounds]).double()
    expected = torch.stack([probabilities[a:b].sum() for a, b in bounds]) * len(samples)
    keep = expected > 5
    observed, expected = observed[keep], expected[keep]
    return chisquare(observed.numpy(), expected.numpy() * observed.sum().item() / expected.sum().item()).pvalue > 1e-3


@pytest.mark.parametrize("kind,options", [("uniform", {}), ("snr", {}), ("snr", {"snr_power": 0.5}),
                                          ("high_noise", {}), ("low_noise", {"split": 300}),
                                          ("range", {"t_min": 200, "t_max": 399})])
def test_timestep_samplers_match_their_distributions(kind, options):
    g = torch.Generator().manual_seed(0)
    samples = noise.sample_timesteps(kind, 20000, SNR, g, **options)
    assert samples.dtype == torch.long and 0 <= samples.min() and samples.max() <= 999
    assert chi_square_ok(samples, noise.timestep_probabilities(kind, SNR, **options))


def test_high_noise_only_never_yields_low_t_and_low_noise_never_high_t():
    g = torch.Generator().manual_seed(1)
    assert noise.sample_timesteps("high_noise", 50000, SNR, g).min() >= 500
    assert noise.sample_timesteps("low_noise", 50000, SNR, g).max() < 500
    r = noise.sample_timesteps("range", 50000, SNR, g, t_min=100, t_max=120)
    assert r.min() == 100 and r.max() == 120


def test_snr_sampling_favours_low_noise_as_defined():
    p = noise.timestep_probabilities("snr", SNR)
    torch.testing.assert_close(p, SNR**0.25 / (SNR**0.25).sum())
    assert p[:500].sum() > 0.7


def test_logit_normal_timesteps_follow_the_logit_normal_law():
    from scipy.stats import kstest, norm

    g = torch.Generator().manual_seed(2)
    t = noise.sample_timesteps("logit_normal", 20000, SNR, g, logit_mean=0.5, logit_std=0.8)
    u = (t.double() + 0.5) / 1000  # bin centres
    logits = torch.log(u / (1 - u))
    assert kstest(logits.numpy(), norm(0.5, 0.8).cdf).statistic < 0.02


def test_v_target_and_noise_tweaks():
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    ab = torch.tensor([0.9, 0.1])
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([10, 900])
    torch.testing.assert_close(noise.target_for("v_prediction", x0, eps, scheduler.alphas_cumprod[t]),
                               scheduler.get_velocity(x0, eps, t))
    assert torch.equal(noise.target_for("epsilon", x0, eps, ab), eps)
    shifted = noise.offset_noise((256, 4, 8, 8), torch.Generator().manual_seed(4), offset=0.5)
    plain = noise.offset_noise((256, 4, 8, 8), torch.Generator().manual_seed(4))
    # the offset is constant over each channel: it shows in the per-channel means only
    assert shifted.mean(dim=(2, 3)).std() > 0.45 and plain.mean(dim=(2, 3)).std() < 0.2
    assert torch.equal(noise.perturb_input_noise(eps, g, 0.0), eps)
    assert (noise.perturb_input_noise(eps, g, 0.1) - eps).std() == pytest.approx(0.1, rel=0.1)


@pytest.mark.parametrize("call,message", [
    (lambda: noise.betas_for("quadratic"), "not one of linear, scaled_linear, cosine"),
    (lambda: noise.loss_weight("p2", SNR), "loss weighting 'p2'"),
    (lambda: noise.loss_weight("mse", SNR, "x0"), "prediction type 'x0'"),
    (lambda: noise.timestep_probabilities("range", SNR, t_min=900, t_max=100), "selects no timestep"),
])
def test_bad_choices_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_noise_strategy_node_builds_the_strategy_and_samples_as_configured():
    from loralab.nodes.train import LoRALabNoiseStrategy

    (strategy,) = LoRALabNoiseStrategy().build("linear", "high_noise", "min_snr", "epsilon", split=800,
                                               zero_terminal_snr=True)
    betas = strategy.betas()
    assert noise.alphas_cumprod(betas)[-1] < 1e-12
    torch.testing.assert_close(betas, noise.rescale_zero_terminal_snr(noise.betas_for("linear")))
    snr_t = noise.snr(noise.alphas_cumprod(noise.betas_for("linear")))
    assert strategy.sample(5000, snr_t, torch.Generator().manual_seed(0)).min() >= 800
    torch.testing.assert_close(strategy.weights(snr_t), noise.loss_weight("min_snr", snr_t))
    with pytest.raises(ValueError, match=r"t_min \(900\) is above t_max \(100\)"):
        LoRALabNoiseStrategy().build("linear", "range", "mse", "epsilon", t_min=900, t_max=100)


def test_lora_config_node_checks_what_would_train_nothing():
    from loralab.nodes.train import LoRALabLoRAConfig

    (config,) = LoRALabLoRAConfig().build(16, 32.0, "custom", custom_modules="to_q, to_v", text_encoder_rank=4)
    assert config.custom_modules == ("to_q", "to_v") and config.scale == 2.0 and config.text_encoder_rank == 4
    with pytest.raises(ValueError, match="needs module names"):
        LoRALabLoRAConfig().build(8, 8.0, "custom")
    with pytest.raises(ValueError, match="nothing to train"):
        LoRALabLoRAConfig().build(8, 8.0, "attention", train_unet=False)


ZERO_TERMINAL = noise.snr(noise.alphas_cumprod(noise.rescale_zero_terminal_snr(noise.betas_for("scaled_linear"))))


def test_min_snr_on_epsilon_is_one_where_zero_terminal_snr_makes_the_snr_zero():
    """min(SNR, γ)/SNR = min(1, γ/SNR) → 1 as SNR → 0 (0/0 computed literally gave NaN losses)."""
    assert ZERO_TERMINAL[-1] == 0
    weights = noise.loss_weight("min_snr", ZERO_TERMINAL, "epsilon", 5.0)
    assert weights[-1] == 1 and torch.isfinite(weights).all()
    positive = ZERO_TERMINAL[:-1]
    torch.testing.assert_close(weights[:-1], torch.minimum(positive, torch.full_like(positive, 5.0)) / positive)
    assert noise.loss_weight("min_snr", ZERO_TERMINAL, "v_prediction")[-1] == 0  # min(0, γ)/(0 + 1)


def test_debiased_epsilon_weighting_with_zero_terminal_snr_is_refused_at_validation(tmp_path, capsys):
    """1/√SNR has no finite value at SNR = 0: refused with the node, the inputs and what works instead."""
    import json
    from pathlib import Path

    import loralab
    from loralab.headless.cli import main
    from loralab.nodes.train import LoRALabNoiseStrategy

    with pytest.raises(ValueError, match="debiased.*epsilon.*zero_terminal_snr"):
        noise.NoiseStrategy(loss_weighting="debiased", zero_terminal_snr=True, prediction="epsilon")
    with pytest.raises(ValueError, match="debiased.*epsilon.*zero_terminal_snr"):  # the model's own: epsilon
        noise.NoiseStrategy(loss_weighting="debiased", zero_terminal_snr=True).schedule(None)
    assert noise.NoiseStrategy(loss_weighting="debiased", zero_terminal_snr=True, prediction="v_prediction")
    assert torch.isfinite(noise.loss_weight("debiased", ZERO_TERMINAL, "v_prediction")).all()
    with pytest.raises(ValueError, match="LoRA Lab: Noise Strategy: .*debiased"):
        LoRALabNoiseStrategy().build("scaled_linear", "uniform", "debiased", "epsilon", zero_terminal_snr=True)
    check = LoRALabNoiseStrategy.VALIDATE_INPUTS
    assert check(loss_weighting="debiased", prediction="epsilon") is True
    assert check(loss_weighting=None, prediction="epsilon", zero_terminal_snr=True) is True  # linked: checked later
    assert "v_prediction" in check(loss_weighting="debiased", prediction="epsilon", zero_terminal_snr=True)
    assert "not one of" in check(loss_weighting="p2", prediction="epsilon")  # naming an input skips the list check
    workflow = json.loads((Path(loralab.__file__).parent / "workflows" / "train_lora.json").read_text())
    (node,) = [k for k, v in workflow.items() if v["class_type"] == "LoRALabNoiseStrategy"]
    workflow[node]["inputs"].update(loss_weighting="debiased", prediction="epsilon", zero_terminal_snr=True)
    (tmp_path / "wf.json").write_text(json.dumps(workflow))
    assert main(["run", str(tmp_path / "wf.json"), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"node {node} (" in err and "v_prediction" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists(), "nothing ran"


# --- Loss types and multi-resolution noise (kohya's loss_type / huber_schedule / multires_noise_*) ---

def test_pointwise_losses_follow_their_definitions():
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(5)
    pred, target = torch.randn(3, 4, 8, 8, generator=g) * 3, torch.randn(3, 4, 8, 8, generator=g)
    delta = torch.tensor([0.05, 0.3, 1.0])
    torch.testing.assert_close(noise.pointwise_loss(pred, target, "l2"), F.mse_loss(pred, target, reduction="none"))
    torch.testing.assert_close(noise.pointwise_loss(pred, target, "l1"), F.l1_loss(pred, target, reduction="none"))
    x, d = (pred - target).double(), delta.double().view(-1, 1, 1, 1)
    definition = 2 * d * ((x**2 + d**2).sqrt() - d)  # kohya's formula, in float64
    torch.testing.assert_close(noise.pointwise_loss(pred, target, "huber", delta).double(), definition,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(noise.pointwise_loss(pred, target, "smooth_l1", delta).double(), definition / d,
                               rtol=1e-5, atol=1e-6)
    x = x.float()
    # its two regimes: the squared error for errors far below d, 2d|x| - 2d² far above it
    wide = noise.pointwise_loss(pred, target, "huber", torch.full((3,), 1e3))
    torch.testing.assert_close(wide, x**2, rtol=1e-3, atol=1e-6)
    narrow = noise.pointwise_loss(pred, target, "huber", torch.full((3,), 1e-3))
    far = x.abs() > 0.5
    torch.testing.assert_close(narrow[far], (2e-3 * x.abs() - 2e-6)[far], rtol=1e-4, atol=1e-7)


def test_huber_thresholds_follow_kohyas_schedules_over_diffusers_sigmas():
    from diffusers import EulerDiscreteScheduler

    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    alpha_bar = DDPMScheduler(**config).alphas_cumprod
    sigmas = EulerDiscreteScheduler(**config).sigmas[:-1].flip(0)  # σ_t = √((1 - ᾱ_t)/ᾱ_t), t = 0 … 999
    t = torch.tensor([0, 10, 250, 500, 999])
    torch.testing.assert_close(noise.huber_threshold("snr", 0.1, t, alpha_bar),
                               (0.9 / (1 + sigmas[t]) ** 2 + 0.1).float(), rtol=1e-5, atol=1e-7)
    exponential = noise.huber_threshold("exponential", 0.1, t, alpha_bar)
    assert exponential[0] == 1.0 and exponential[-1] == pytest.approx(0.1 ** (999 / 1000))
    assert torch.all(exponential[1:] < exponential[:-1])
    assert torch.equal(noise.huber_threshold("constant", 0.2, t, alpha_bar), torch.full((5,), 0.2))
    zero_snr = noise.alphas_cumprod(noise.rescale_zero_terminal_snr(noise.betas_for("scaled_linear")))
    assert noise.huber_threshold("snr", 0.1, torch.tensor([999]), zero_snr).item() == pytest.approx(0.1)  # σ = ∞


def test_pyramid_noise_adds_upsampled_levels_and_has_unit_variance():
    import torch.nn.functional as F

    eps = torch.randn(4, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    assert noise.pyramid_noise(eps, torch.Generator(), 0, 0.3) is eps
    # one level: r**0 = 1, so a second full-size N(0, 1) after the draw of r
    g = torch.Generator().manual_seed(1)
    torch.rand((), generator=g, dtype=torch.float64)
    level = torch.randn(4, 4, 32, 32, generator=g)
    expected = (eps + F.interpolate(level, size=(32, 32), mode="bilinear")) / (eps + level).std()
    torch.testing.assert_close(noise.pyramid_noise(eps, torch.Generator().manual_seed(1), 1, 0.3), expected)
    many = noise.pyramid_noise(eps, torch.Generator().manual_seed(2), 10, 0.8)
    assert many.std().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(many, noise.pyramid_noise(eps, torch.Generator().manual_seed(2), 10, 0.8))

    def neighbour_correlation(x):
        return float(torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1])

    # the coarse levels correlate neighbouring pixels, as white noise does not
    assert abs(neighbour_correlation(eps)) < 0.05 and neighbour_correlation(many) > 0.2


def test_the_objective_uses_the_loss_type_and_validation_stays_mse():
    from loralab.core.trainer.objectives import DenoisingObjective, Draws

    class Fixed(torch.nn.Module):  # a "UNet" whose prediction is known
        def __init__(self, out):
            super().__init__()
            self.out, self.p = out, torch.nn.Parameter(torch.zeros(1))

        def forward(self, *args, **kwargs):
            return type("Out", (), {"sample": self.out})()

    g = torch.Generator().manual_seed(7)
    x0, eps, pred = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    alpha_bar = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    t = torch.tensor([50, 800])
    draws, off = Draws({"t": t, "eps": eps, "eps_in": eps}), torch.autocast("cpu", enabled=False)
    strategy = noise.NoiseStrategy(loss_type="huber", huber_schedule="snr", huber_c=0.1, loss_weighting="min_snr")
    objective = DenoisingObjective(strategy, "epsilon", alpha_bar)
    delta = (0.9 / (1 + ((1 - alpha_bar[t]) / alpha_bar[t]).sqrt()) ** 2 + 0.1).view(-1, 1, 1, 1)
    huber = (2 * delta * ((pred - eps) ** 2 + delta**2).sqrt() - 2 * delta**2).mean(dim=(1, 2, 3))
    weights = noise.loss_weight("min_snr", noise.snr(alpha_bar)[t])
    got = objective.loss(Fixed(pred), x0, torch.zeros(2, 77, 8), None, draws, off)
    torch.testing.assert_close(got, (huber * weights).float(), rtol=1e-5, atol=1e-7)
    plain = objective.loss(Fixed(pred), x0, torch.zeros(2, 77, 8), None, draws, off, weighted=False)
    torch.testing.assert_close(plain, ((pred - eps) ** 2).mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("options,message", [
    ({"loss_type": "l3"}, "loss_type 'l3' is not one of l2, l1, huber, smooth_l1"),
    ({"huber_schedule": "cosine"}, "huber_schedule 'cosine'"),
    ({"huber_c": 0.0}, r"huber_c 0.0 must be in \(0, 1\]"),
    ({"multires_noise_discount": 1.5}, "multires_noise_discount 1.5"),
])
def test_bad_loss_and_multires_settings_are_refused_by_the_node(options, message):
    from loralab.nodes.train import LoRALabNoiseStrategy

    with pytest.raises(ValueError, match=f"LoRA Lab: Noise Strategy: {message}"):
        LoRALabNoiseStrategy().build("model", "uniform", "mse", "model", **options)
