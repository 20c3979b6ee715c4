"""One noise schedule from training to sampling: β and the prediction type come from the
pipeline's scheduler config unless the Noise Strategy overrides them, the LoRA carries the
schedule it trained with (in ``LL_LORA`` and in its file), and sampling follows it."""

import copy
import json

import pytest
import torch

from loralab.core.generate import GenerateSettings, generate
from loralab.core.lab_lora import apply_lora
from loralab.core.lora import LoRAConfigSpec
from loralab.core.lora_files import merged_copy, read_lora_file, save_lora_file, schedule_from_metadata
from loralab.core.noise import NoiseStrategy, betas_from_config
from loralab.core.pipeline import LabPipeline
from loralab.core.prompts import Prompt
from loralab.core.samplers import SamplerSpec
from loralab.core.train import TrainSpec, encode_dataset, train_from_images, train_lora

IMAGES = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
CAPTIONS = ["a red square", "a blue circle"]
LORA = LoRAConfigSpec(rank=2, alpha=2.0, targets="attention")
SHORT = TrainSpec(steps=3, batch_size=2, lr=1e-3, seed=1)
V_ZSNR = NoiseStrategy(prediction="v_prediction", zero_terminal_snr=True)


def with_scheduler_config(lp: LabPipeline, **changes) -> LabPipeline:
    pipe = copy.copy(lp.pipe)
    pipe.scheduler = type(lp.pipe.scheduler).from_config({**lp.pipe.scheduler.config, **changes})
    return LabPipeline(pipe, lp.name, lp.family)


@pytest.mark.parametrize("config", [
    {"beta_schedule": "scaled_linear"}, {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    {"beta_schedule": "squaredcos_cap_v2"}, {"beta_schedule": "scaled_linear", "rescale_betas_zero_snr": True},
    {"trained_betas": torch.linspace(1e-4, 0.03, 1000).tolist()},
])
def test_betas_from_a_scheduler_config_are_diffusers(config):
    from diffusers import DDPMScheduler
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    config = {"beta_start": 0.00085, "beta_end": 0.012, **config}
    ours = betas_from_config(config)
    if config.get("rescale_betas_zero_snr"):  # diffusers rescales in float32: its function on float64 betas
        plain = betas_from_config({**config, "rescale_betas_zero_snr": False})
        torch.testing.assert_close(ours, rescale_zero_terminal_snr(plain))
    else:
        torch.testing.assert_close(ours.float(), DDPMScheduler.from_config(config).betas, rtol=1e-5, atol=1e-7)


def test_the_strategy_keeps_the_model_schedule_unless_it_overrides_it():
    v_model = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "beta_start": 0.001}
    kept = NoiseStrategy().schedule(v_model)
    assert kept["prediction_type"] == "v_prediction" and kept["rescale_betas_zero_snr"] and kept["beta_start"] == 0.001
    changed = NoiseStrategy(beta_schedule="cosine", prediction="epsilon").schedule(v_model)
    assert changed["beta_schedule"] == "squaredcos_cap_v2" and changed["prediction_type"] == "epsilon"
    assert changed["rescale_betas_zero_snr"], "zero terminal SNR off keeps the model's own"
    assert NoiseStrategy().schedule(None)["prediction_type"] == "epsilon"  # no config: SD's
    with pytest.raises(ValueError, match="debiased"):  # only the model says zero terminal SNR + epsilon
        NoiseStrategy(loss_weighting="debiased").schedule({"rescale_betas_zero_snr": True})


def test_training_reads_beta_and_prediction_from_the_pipeline(tiny):
    data = encode_dataset(tiny.pipe, IMAGES, CAPTIONS)
    v_model = with_scheduler_config(tiny, prediction_type="v_prediction", beta_schedule="linear")
    from_model = train_lora(v_model.pipe, data, NoiseStrategy(), LORA, SHORT)
    stated = train_lora(tiny.pipe, data, NoiseStrategy(prediction="v_prediction", beta_schedule="linear"), LORA, SHORT)
    plain = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, SHORT)
    assert from_model.losses == stated.losses
    assert from_model.losses != plain.losses
    assert from_model.metadata["schedule"]["prediction_type"] == "v_prediction"


@pytest.fixture(scope="module")
def v_lora(tiny):
    return train_from_images(tiny, IMAGES, CAPTIONS, V_ZSNR, LORA, SHORT, name="v")


def test_the_lora_carries_its_schedule_through_its_file(v_lora, tmp_path):
    assert v_lora.schedule["prediction_type"] == "v_prediction" and v_lora.schedule["rescale_betas_zero_snr"]
    path = save_lora_file(v_lora.tensors, v_lora.metadata, tmp_path / "v.safetensors")
    _, metadata = read_lora_file(path)
    assert schedule_from_metadata(metadata) == v_lora.schedule
    assert metadata["ss_v_parameterization"] == "True" and metadata["ss_zero_terminal_snr"] == "True"


def test_a_v_prediction_lora_samples_with_v_prediction(tiny, v_lora):
    applied, unmatched = apply_lora(tiny, v_lora, 1.0, 1.0)
    config = applied.pipe.scheduler.config
    assert not unmatched and applied.schedule_from == "v"
    assert config.prediction_type == "v_prediction" and config.rescale_betas_zero_snr
    assert config.timestep_spacing == "trailing"
    assert tiny.pipe.scheduler.config.prediction_type == "epsilon", "the shared pipeline keeps its scheduler"
    # the same weights sampled by hand with a v-prediction zero-terminal-SNR scheduler and rescaled CFG
    merged, _ = merged_copy(tiny.pipe, v_lora.tensors, 1.0, 1.0)
    by_hand = with_scheduler_config(LabPipeline(merged, "by hand", "sd1"), prediction_type="v_prediction",
                                    rescale_betas_zero_snr=True)
    settings = GenerateSettings(steps=4, seed=2, width=32, height=32)
    images, _ = generate(applied, SamplerSpec("euler"), [Prompt("a red square")], settings)
    expected, _ = generate(by_hand, SamplerSpec("euler"), [Prompt("a red square")],
                           GenerateSettings(**{**settings.__dict__, "cfg_rescale": 0.7}))
    as_epsilon, _ = generate(LabPipeline(merged, "as epsilon", "sd1"), SamplerSpec("euler"), [Prompt("a red square")],
                             settings)
    torch.testing.assert_close(images, expected)
    assert (images - as_epsilon).abs().max() > 1e-2


def test_an_epsilon_lora_leaves_the_scheduler_alone(tiny):
    lora = train_from_images(tiny, IMAGES, CAPTIONS, NoiseStrategy(), LORA, SHORT, name="eps")
    assert lora.schedule["prediction_type"] == "epsilon"
    applied, _ = apply_lora(tiny, lora, 1.0, 1.0)
    assert applied.pipe.scheduler is tiny.pipe.scheduler and applied.schedule_from == ""


def test_loras_for_different_schedules_do_not_stack(tiny, v_lora):
    applied, _ = apply_lora(tiny, v_lora, 1.0, 1.0)
    epsilon = type(v_lora)(v_lora.tensors, 2, 2.0, "sd1", "eps", {"ss_v_parameterization": "False",
                                                                  "loralab_schedule": json.dumps(
                                                                      {"prediction_type": "epsilon"})})
    with pytest.raises(ValueError, match="'eps' trained with epsilon.*already samples with v_prediction.*for LoRA 'v'"):
        apply_lora(applied, epsilon, 1.0, 1.0)
    again, _ = apply_lora(applied, v_lora, 0.5, 0.5, name="v again")  # the same schedule stacks
    assert again.pipe.scheduler.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("metadata,schedule", [
    ({}, None),
    ({"ss_v_parameterization": "False", "ss_zero_terminal_snr": "False"}, None),  # kohya's ordinary LoRA
    ({"ss_v_parameterization": "True"}, {"prediction_type": "v_prediction", "rescale_betas_zero_snr": False}),
    ({"ss_v_parameterization": "True", "ss_zero_terminal_snr": "True"},
     {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}),
])
def test_kohya_schedule_flags_are_read(metadata, schedule):
    assert schedule_from_metadata(metadata) == schedule


@pytest.mark.parametrize("value,message", [
    ("{", "not JSON"), ("[1]", "not an object"), ('{"prediction_type": "x0"}', "'prediction_type' = 'x0'"),
    ('{"beta_start": "0.1"}', "'beta_start'"), ('{"__class__": 1}', "'__class__'"),
    ('{"num_train_timesteps": 1e9}', "'num_train_timesteps'"),
])
def test_a_hostile_schedule_in_a_file_is_refused_by_name(value, message):
    with pytest.raises(ValueError, match=message):
        schedule_from_metadata({"loralab_schedule": value})


def test_rescaled_cfg_is_diffusers_guidance_rescale_for_a_v_model():
    """Our rescale works on x0 estimates for any prediction type; on a v model it must equal
    diffusers' ``rescale_noise_cfg`` on the v outputs."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    from loralab.core.ksampling import cfg_denoiser
    from loralab.core.samplers import noise_levels

    levels = noise_levels({"prediction_type": "v_prediction", "rescale_betas_zero_snr": True})
    g = torch.Generator().manual_seed(0)
    x, v_cond, v_uncond = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    sigma = torch.tensor(3.0)
    cfg, phi = 6.0, 0.7
    ours = cfg_denoiser(levels, lambda x_in, t: (v_cond, v_uncond), cfg, phi)(x, sigma)
    v = rescale_noise_cfg(v_uncond + cfg * (v_cond - v_uncond), v_cond, guidance_rescale=phi)
    expected = levels.denoised(sigma, v, x)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    plain = cfg_denoiser(levels, lambda x_in, t: (v_cond, v_uncond), cfg)(x, sigma)
    assert (plain - ours).abs().max() > 1e-2


def test_the_noise_strategy_node_defaults_to_the_model(registry):
    node = registry["LoRALabNoiseStrategy"]
    required = node.INPUT_TYPES()["required"]
    assert required["beta_schedule"][1]["default"] == "model" and required["prediction"][1]["default"] == "model"
    assert node.VALIDATE_INPUTS(loss_weighting="debiased", prediction="model", zero_terminal_snr=True) is True
    (strategy,) = node().build("model", "uniform", "mse", "model")
    assert strategy == NoiseStrategy()
