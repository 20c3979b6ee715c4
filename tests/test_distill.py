"""LCM-LoRA distillation: the pieces equal diffusers' LCMScheduler/DDIMScheduler, one loss step equals
the algorithm assembled from diffusers' schedulers with a separate teacher UNet (as diffusers'
training script keeps one), and training learns, repeats and resumes exactly."""

import copy
import dataclasses
import shutil

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler
from peft import LoraConfig, inject_adapter_in_model

from loralab.core.distill import (
    LCMSpec,
    boundary_scalings,
    consistency_loss,
    ddim_step,
    ddim_timesteps,
    lcm_per_example_loss,
    predicted_x0_and_eps,
)
from loralab.core.lora import LoRAConfigSpec
from loralab.core.noise import NoiseStrategy
from loralab.core.train import TrainSpec, empty_prompt_embedding, encode_dataset, train_lora

SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def test_boundary_scalings_equal_diffusers_lcm_scheduler():
    scheduler = LCMScheduler(**SD_BETAS, timestep_scaling=10.0)
    t = torch.tensor([0, 1, 19, 259, 500, 999])
    c_skip, c_out = boundary_scalings(t, 10.0)
    for i, step in enumerate(t.tolist()):
        ref_skip, ref_out = scheduler.get_scalings_for_boundary_condition_discrete(step)
        assert float(c_skip[i]) == pytest.approx(ref_skip, rel=1e-12)
        assert float(c_out[i]) == pytest.approx(ref_out, rel=1e-12, abs=1e-15)
    assert float(c_skip[0]) == 1 and float(c_out[0]) == 0  # f(x, 0) = x


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_grid_and_step_equal_diffusers_ddim(prediction):
    scheduler = DDIMScheduler(**SD_BETAS, timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False,
                              prediction_type=prediction)
    scheduler.set_timesteps(50)
    grid = ddim_timesteps(1000, 50)
    assert grid.tolist() == sorted(scheduler.timesteps.tolist())
    alpha_bar = scheduler.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    for i in (0, 1, 25, 49):
        sample, output = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        ref = scheduler.step(output, int(grid[i]), sample, eta=0.0)
        x0, eps = predicted_x0_and_eps(output, sample, alpha_bar[grid[i]], prediction)
        prev = ddim_step(x0, eps, alpha_bar[grid[i] - grid[0] - 1] if i else alpha_bar[0])
        torch.testing.assert_close(x0, ref.pred_original_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(prev, ref.prev_sample, rtol=1e-5, atol=1e-5)


def test_huber_and_l2_losses_follow_their_formulas():
    a, b = torch.zeros(2, 1, 2, 2), torch.tensor([3.0, 4.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    c = 0.5
    huber = consistency_loss(a, b, LCMSpec(loss="huber", huber_c=c))
    torch.testing.assert_close(huber, torch.tensor([(9 + c * c) ** 0.5 - c, (16 + c * c) ** 0.5 - c]))
    torch.testing.assert_close(consistency_loss(a, b, LCMSpec(loss="l2")), torch.tensor([9.0, 16.0]))
    with pytest.raises(ValueError, match="w_min <= w_max"):
        LCMSpec(w_min=5, w_max=3)


@pytest.fixture(scope="module")
def data(tiny):
    images = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(False):
        data = encode_dataset(tiny.pipe, images, ["a red square", "a blue circle", "a green stripe", "a yellow dot"])
        data.uncond = empty_prompt_embedding(tiny.pipe)
    return data


def test_one_step_equals_the_algorithm_built_from_diffusers_with_a_separate_teacher(tiny, data):
    teacher = tiny.pipe.unet
    student = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v", "to_k"]),
                                      copy.deepcopy(teacher))
    g = torch.Generator().manual_seed(5)
    for name, p in student.named_parameters():  # a LoRA that changes the output, so student != teacher
        p.requires_grad_(False)
        if "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    spec = LCMSpec(ddim_steps=20, w_min=2.0, w_max=9.0, loss="huber", huber_c=0.01)
    ddim = DDIMScheduler(**SD_BETAS, timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False)
    ddim.set_timesteps(spec.ddim_steps)
    lcm = LCMScheduler(**SD_BETAS, timestep_scaling=spec.timestep_scaling)
    x0, cond = data.latents, data.embeddings
    with torch.no_grad():
        ours = lcm_per_example_loss(student, x0, cond, data.uncond, ddim.alphas_cumprod, spec, "epsilon",
                                    torch.Generator().manual_seed(11), torch.autocast("cpu", enabled=False))
        draws = torch.Generator().manual_seed(11)  # the same draws, in the same order
        index = torch.randint(0, spec.ddim_steps, (4,), generator=draws)
        w = spec.w_min + (spec.w_max - spec.w_min) * torch.rand(4, generator=draws)
        eps = torch.randn(x0.shape, generator=draws)
        expected = []
        for n in range(4):
            s = int(sorted(ddim.timesteps.tolist())[index[n]])
            t = max(s - 1000 // spec.ddim_steps, 0)
            z_s = ddim.add_noise(x0[n:n + 1], eps[n:n + 1], torch.tensor([s]))
            c_skip, c_out = lcm.get_scalings_for_boundary_condition_discrete(s)
            out = student(z_s, s, encoder_hidden_states=cond[n:n + 1]).sample
            f = c_skip * z_s + c_out * ddim.step(out, s, z_s).pred_original_sample
            e_c = teacher(z_s, s, encoder_hidden_states=cond[n:n + 1]).sample
            e_u = teacher(z_s, s, encoder_hidden_states=data.uncond).sample
            guided = e_c + w[n] * (e_c - e_u)  # x0 and eps guided alike: the guided eps gives both
            z_t = ddim.step(guided, s, z_s).prev_sample
            c_skip_t, c_out_t = lcm.get_scalings_for_boundary_condition_discrete(t)
            target = c_skip_t * z_t + c_out_t * ddim.step(student(z_t, t, encoder_hidden_states=cond[n:n + 1]).sample,
                                                          t, z_t).pred_original_sample if t else z_t
            expected.append((((f - target) ** 2 + spec.huber_c ** 2).sqrt() - spec.huber_c).mean())
    torch.testing.assert_close(ours, torch.stack(expected), rtol=1e-4, atol=1e-6)


LORA = LoRAConfigSpec(rank=8, alpha=8.0, targets="all_linear+conv")


def test_distillation_learns_repeats_and_resumes_exactly(tiny, data, tmp_path):
    before = {k: v.clone() for k, v in tiny.pipe.unet.state_dict().items()}
    spec = TrainSpec(steps=60, batch_size=4, lr=1e-3, seed=0, distill=LCMSpec())
    result = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, spec)
    assert all(torch.equal(v, tiny.pipe.unet.state_dict()[k]) for k, v in before.items())

    def held_out_loss(state):  # the distillation loss on fixed draws, with the given LoRA
        from peft import set_peft_model_state_dict

        student = inject_adapter_in_model(LoraConfig(r=8, lora_alpha=8, target_modules=result.targets),
                                          copy.deepcopy(tiny.pipe.unet))
        if state:
            set_peft_model_state_dict(student, state)
        off = torch.autocast("cpu", enabled=False)
        with torch.no_grad():
            return float(torch.cat([lcm_per_example_loss(
                student, data.latents, data.embeddings, data.uncond, alpha_bar, LCMSpec(), "epsilon",
                torch.Generator().manual_seed(100 + k), off) for k in range(4)]).mean())

    from loralab.core.noise import alphas_cumprod

    alpha_bar = alphas_cumprod(NoiseStrategy().betas())
    untrained, trained = held_out_loss(None), held_out_loss(result.unet_state)
    print(f"held-out LCM loss {untrained:.4f} -> {trained:.4f}")
    assert trained < 0.8 * untrained

    short = TrainSpec(steps=4, batch_size=2, lr=1e-3, seed=1, distill=LCMSpec(ddim_steps=10))
    straight = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, short)
    again = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, short)
    train_lora(tiny.pipe, data, NoiseStrategy(), LORA, dataclasses.replace(short, checkpoint_every=2),
               checkpoint_dir=tmp_path)
    shutil.rmtree(tmp_path / "checkpoint-0000004")  # as if stopped after step 2
    resumed = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, short, checkpoint_dir=tmp_path)
    for k, v in straight.unet_state.items():
        assert torch.equal(v, again.unet_state[k]) and torch.equal(v, resumed.unet_state[k])
    assert straight.losses == resumed.losses


def test_distillation_refuses_what_it_cannot_do(tiny, data):
    spec = TrainSpec(steps=1, distill=LCMSpec())
    with pytest.raises(ValueError, match="UNet LoRA only"):
        train_lora(tiny.pipe, data, NoiseStrategy(), LoRAConfigSpec(rank=4, alpha=4, text_encoder_rank=4), spec)
    with pytest.raises(ValueError, match="empty prompt"):
        train_lora(tiny.pipe, dataclasses.replace(data, uncond=None), NoiseStrategy(), LORA, spec)


def test_sdxl_distillation_guides_with_zero_unconditional_embeddings(tmp_path):
    from test_checkpoints import make_tiny_checkpoint

    from loralab.core.checkpoints import load_single_file
    from loralab.core.pipeline import LabPipeline
    from loralab.core.train import train_from_images

    path, config_dir, _ = make_tiny_checkpoint("sdxl", tmp_path)
    pipe, family = load_single_file(path, torch.float32, config_dir=config_dir)
    calls = []
    forward = pipe.unet.forward

    def spy(sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None, **kwargs):
        calls.append((encoder_hidden_states.detach().clone(), {k: v.detach().clone()
                                                               for k, v in added_cond_kwargs.items()}))
        return forward(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                       added_cond_kwargs=added_cond_kwargs, **kwargs)

    pipe.unet.forward = spy
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    lora = train_from_images(LabPipeline(pipe, "tiny-sdxl", family), images, ["a sks photo"], NoiseStrategy(),
                             LoRAConfigSpec(rank=4, alpha=4.0), TrainSpec(steps=2, batch_size=2, lr=1e-3,
                                                                          distill=LCMSpec(ddim_steps=10)))
    assert lora.family == "sdxl" and all(torch.isfinite(v).all() for v in lora.tensors.values())
    assert len(calls) == 8  # per step: student, teacher cond, teacher uncond, target
    for step in (0, 4):
        student, uncond = calls[step], calls[step + 2]
        assert student[0].abs().sum() > 0 and student[1]["text_embeds"].abs().sum() > 0
        assert not uncond[0].any() and not uncond[1]["text_embeds"].any()
        assert torch.equal(uncond[1]["time_ids"], student[1]["time_ids"])
