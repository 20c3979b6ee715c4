"""Trainer parity (issue 15): validation loss, EMA, grad norm, TensorBoard, caption/tag dropout,
masked loss, optimizers and LR schedules — each against its definition."""

import csv
import math

import pytest
import torch

from loralab.core.lora import LoRAConfigSpec
from loralab.core.noise import NoiseStrategy
from loralab.core.train import TrainSpec, encode_dataset, hold_out, train_lora

CAPTIONS = ["a red square", "a blue circle", "a green stripe", "a yellow dot"]
LORA = LoRAConfigSpec(rank=4, alpha=4.0, targets="all_linear+conv")


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def data(tiny, images):
    return encode_dataset(tiny.pipe, images, CAPTIONS)


def _states_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _no_nan(rows):
    return [tuple(None if isinstance(x, float) and math.isnan(x) else x for x in row) for row in rows]


# --- EMA --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("every,warmup", [(1, False), (2, True)])
def test_ema_follows_its_recursion_over_the_raw_weights(tiny, data, every, warmup):
    """shadow_1 = θ at the first update; then shadow ← shadow − (1 − d_n)(shadow − θ) with
    d_n = min(decay, n / (9 + n)) (or 1 − n^(−2/3) with warm-up) at the n-th update, every
    ``every`` steps. The raw weights of step k are those of a k-step run (constant LR)."""
    base = dict(batch_size=2, lr=3e-3, seed=5)
    raw = {k: train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=k, **base)).unet_state
           for k in range(every, 4 + 1, every)}
    decay = 0.7
    result = train_lora(tiny.pipe, data, NoiseStrategy(), LORA,
                        TrainSpec(steps=4, ema_decay=decay, ema_every=every, ema_warmup=warmup, **base))
    assert _states_equal(result.unet_state, raw[4]), "EMA leaves training alone"
    shadow = None
    for n, k in enumerate(sorted(raw), 1):
        if shadow is None:
            shadow = {name: w.clone() for name, w in raw[k].items()}
            continue
        d = min(decay, 1 - n ** (-2 / 3) if warmup else n / (9 + n))
        shadow = {name: s - (1 - d) * (s - raw[k][name]) for name, s in shadow.items()}
    ema = result.ema_states["unet"]
    assert ema.keys() == shadow.keys()
    assert all(torch.allclose(ema[k], shadow[k], atol=1e-7, rtol=1e-6) for k in ema)
    assert any(not torch.equal(ema[k], raw[4][k]) for k in ema)


def test_validation_loss_and_ema_survive_a_kill_exactly(tiny, data, tmp_path):
    """A run killed after step 4 and resumed from its checkpoint ends with the same weights, EMA,
    validation losses (at the same steps) and grad norms as one run straight through."""
    val = encode_dataset(tiny.pipe, torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(9)),
                         ["a held-out square", "a held-out dot"])
    spec = TrainSpec(steps=8, batch_size=2, lr=2e-3, seed=3, ema_decay=0.8, validation_loss_every=3,
                     validation_timesteps=3)
    lora = LoRAConfigSpec(rank=4, alpha=4.0, targets="all_linear+conv", dropout=0.1)
    straight = train_lora(tiny.pipe, data, NoiseStrategy(), lora, spec, validation_data=val)
    assert [s for s, _, _ in straight.val_losses] == [0, 3, 6, 8]
    assert math.isnan(straight.val_losses[0][2]) and not math.isnan(straight.val_losses[-1][2])
    half = TrainSpec(**{**spec.__dict__, "checkpoint_every": 4})

    def stop_after_4(step, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny.pipe, data, NoiseStrategy(), lora, half, tmp_path, progress=stop_after_4, validation_data=val)
    resumed = train_lora(tiny.pipe, data, NoiseStrategy(), lora, half, tmp_path, validation_data=val)
    assert resumed.losses == straight.losses and resumed.grad_norms == straight.grad_norms
    assert _no_nan(resumed.val_losses) == _no_nan(straight.val_losses)
    assert _states_equal(resumed.unet_state, straight.unet_state)
    assert _states_equal(resumed.ema_states["unet"], straight.ema_states["unet"])
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [r["step"] for r in rows] == [str(k) for k in range(9)]
    assert [float(r["val_loss"]) for r in rows if r["val_loss"]] == [v for _, v, _ in straight.val_losses]
    assert [float(r["grad_norm"]) for r in rows[1:]] == straight.grad_norms


# --- Validation loss --------------------------------------------------------------------------------

def test_validation_loss_is_the_plain_mse_at_fixed_timesteps_and_noise(tiny, data):
    """At step 0 the LoRA is zero (B = 0): the loss is the base model's ε-MSE at the midpoints of
    k equal timestep bins, with noise drawn from the run's seed + 3, computed here by hand."""
    from loralab.core.noise import alphas_cumprod, betas_from_config

    k, seed = 4, 21
    noise = NoiseStrategy(loss_weighting="min_snr")  # the validation loss ignores the weighting
    result = train_lora(tiny.pipe, data, noise, LORA, TrainSpec(steps=2, seed=seed, validation_loss_every=2,
                                                                validation_timesteps=k), validation_data=data)
    alpha_bar = alphas_cumprod(betas_from_config(tiny.pipe.scheduler.config))
    t = ((torch.arange(k) + 0.5) * len(alpha_bar) / k).long()
    generator = torch.Generator().manual_seed(seed + 3)
    total = 0.0
    with torch.no_grad():
        for i, x0 in enumerate(data.latents):
            eps = torch.randn((k, *x0.shape), generator=generator)
            a = alpha_bar[t].float().view(-1, 1, 1, 1)
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * eps
            pred = tiny.pipe.unet(noisy, t, encoder_hidden_states=data.embeddings[i:i + 1].expand(k, -1, -1)).sample
            total += ((pred - eps) ** 2).mean(dim=(1, 2, 3)).sum().item()
    assert result.val_losses[0][0] == 0
    assert result.val_losses[0][1] == pytest.approx(total / (len(data.latents) * k), rel=1e-5)


def test_validation_loss_falls_when_the_held_out_set_is_the_training_set(tiny, data):
    spec = TrainSpec(steps=40, batch_size=4, lr=3e-3, seed=7, validation_loss_every=20)
    result = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, spec, validation_data=data)
    (s0, first, _), *_, (s1, last, _) = result.val_losses
    assert (s0, s1) == (0, 40) and last < first, result.val_losses


def test_hold_out_is_seeded_disjoint_and_refuses_an_empty_side():
    keep, out = hold_out(10, 0.25, seed=3)
    assert len(out) == 2 and sorted(keep + out) == list(range(10)) and (keep, out) == hold_out(10, 0.25, 3)
    assert hold_out(10, 0.25, 4) != (keep, out) or hold_out(10, 0.25, 5) != (keep, out)
    with pytest.raises(ValueError, match="leaves none to train on"):
        hold_out(2, 0.9, 0)
    with pytest.raises(ValueError, match="validation_fraction"):
        hold_out(5, 0.0, 0)


def test_validation_loss_without_held_out_examples_is_refused(tiny, data):
    with pytest.raises(ValueError, match="held-out examples"):
        train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=1, validation_loss_every=1))


# --- Grad norm and TensorBoard ----------------------------------------------------------------------

def test_grad_norm_is_the_global_norm_before_clipping(tiny, data, monkeypatch):
    seen = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        seen.append(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])).item())
        return real(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    clipped = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=3, lr=1e-3, max_grad_norm=1e-4))
    assert clipped.grad_norms == pytest.approx(seen, rel=1e-5) and min(seen) > 1e-4
    seen.clear()
    free = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=3, lr=1e-3, max_grad_norm=0))
    assert free.grad_norms == pytest.approx(seen, rel=1e-5)


def test_tensorboard_event_files_read_back(tiny, data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = TrainSpec(steps=4, batch_size=2, lr=1e-3, seed=1, tensorboard=True, validation_loss_every=2,
                     validation_every=2, ema_decay=0.5)
    result = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, spec, tmp_path,
                        validation=lambda step: torch.rand(1, 8, 8, 3), validation_data=data)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(result.losses, rel=1e-6)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["train/lr"]] == pytest.approx(result.lrs, rel=1e-6)
    assert [v for _, v in scalars["train/grad_norm"]] == pytest.approx(result.grad_norms, rel=1e-6)
    assert scalars["val/loss"] == [(s, pytest.approx(v, rel=1e-6)) for s, v, _ in result.val_losses]
    assert [s for s, _ in scalars["val/loss_ema"]] == [2, 4]
    assert [e.step for e in events.Images("validation")] == [2, 4]


def test_tensorboard_without_the_package_says_how_to_get_it(tiny, data, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith(("torch.utils.tensorboard", "tensorboard")):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ValueError, match="pip install tensorboard"):
        train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=1, tensorboard=True), tmp_path)


# --- Caption and tag dropout ------------------------------------------------------------------------

def _chi2_p(dropped: int, n: int, rate: float) -> float:
    from scipy.stats import chisquare

    return chisquare([dropped, n - dropped], [n * rate, n * (1 - rate)]).pvalue


def test_tag_dropout_drops_each_tag_at_its_rate_and_keeps_the_first_tags():
    from loralab.core.trainer.conditioner import drop_tags

    tags = ["sks style", "a cat", "red", "outdoors", "sunset"]
    generator, n, rate = torch.Generator().manual_seed(0), 4000, 0.3
    counts = dict.fromkeys(tags, 0)
    for _ in range(n):
        kept = drop_tags(", ".join(tags), rate, 1, generator).split(", ")
        assert kept[0] == "sks style"
        for tag in tags:
            counts[tag] += tag not in kept
    assert counts["sks style"] == 0
    for tag in tags[1:]:
        assert _chi2_p(counts[tag], n, rate) > 1e-3, (tag, counts[tag])
        assert _chi2_p(counts[tag], n, 0.25) < 1e-4, "the test tells 0.3 from 0.25"


def test_whole_caption_dropout_rate_by_chi_square(tiny, data):
    from loralab.core.trainer.conditioner import Conditioner

    conditioner = Conditioner(tiny.pipe, data, {}, 0.2, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    drops = torch.cat([conditioner.draw(list(range(4)), generator).whole for _ in range(2000)])
    assert _chi2_p(int(drops.sum()), len(drops), 0.2) > 1e-3
    assert _chi2_p(int(drops.sum()), len(drops), 0.17) < 1e-4


def test_tag_dropout_conditions_on_the_shortened_caption(tiny, data):
    from loralab.core.trainer.conditioner import Conditioner

    tagged = encode_dataset(tiny.pipe, torch.rand(1, 32, 32, 3), ["sks, red, round, small"])
    conditioner = Conditioner(tiny.pipe, tagged, {}, 0.0, torch.device("cpu"), tag_dropout=0.5, keep_tags=1)
    drop = conditioner.draw([0], torch.Generator().manual_seed(2))
    cond, _ = conditioner([0], drop)
    assert drop.captions[0].startswith("sks") and drop.captions[0] != "sks, red, round, small"
    with torch.no_grad():
        tokens = tiny.pipe.tokenizer(drop.captions, padding="max_length", return_tensors="pt",
                                     max_length=tiny.pipe.tokenizer.model_max_length, truncation=True).input_ids
        assert torch.allclose(cond, tiny.pipe.text_encoder(tokens)[0])
    result = train_lora(tiny.pipe, tagged, NoiseStrategy(), LORA, TrainSpec(steps=2, tag_dropout=0.5))
    assert all(math.isfinite(x) for x in result.losses)


# --- Masked loss ------------------------------------------------------------------------------------

def test_masked_loss_is_the_weighted_mse_by_hand(tiny, data):
    from loralab.core.noise import alphas_cumprod, betas_from_config
    from loralab.core.trainer.objectives import DenoisingObjective, Draws

    alpha_bar = alphas_cumprod(betas_from_config(tiny.pipe.scheduler.config))
    x0, cond = data.latents[:2], data.embeddings[:2]
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 700])
    w = torch.rand(2, 1, *x0.shape[-2:], generator=torch.Generator().manual_seed(1))
    draws = Draws({"t": t, "eps": eps, "eps_in": eps})
    with torch.no_grad():
        a = alpha_bar[t].float().view(-1, 1, 1, 1)
        pred = tiny.pipe.unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t, encoder_hidden_states=cond).sample
        by_hand = (w * (pred - eps) ** 2).mean(dim=(1, 2, 3))
        for normalize, expected in ((False, by_hand), (True, by_hand / w.mean(dim=(1, 2, 3)))):
            objective = DenoisingObjective(NoiseStrategy(), "epsilon", alpha_bar, normalize)
            got = objective.loss(tiny.pipe.unet, x0, cond, None, draws, torch.autocast("cpu", enabled=False), w)
            assert torch.allclose(got, expected, rtol=1e-5)


def test_masks_are_area_averaged_to_latent_size_and_all_ones_changes_nothing(tiny, images):
    import torch.nn.functional as F

    masks = [torch.rand(32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    masked = encode_dataset(tiny.pipe, images, CAPTIONS, masks=masks)
    factor = 32 // masked.latents.shape[-1]
    assert torch.allclose(masked.masks, F.avg_pool2d(torch.stack(masks)[:, None], factor), atol=1e-6)
    ones = encode_dataset(tiny.pipe, images, CAPTIONS, masks=[torch.ones(32, 32)] * 4)
    plain = encode_dataset(tiny.pipe, images, CAPTIONS)
    spec = TrainSpec(steps=3, batch_size=2, lr=1e-3, seed=2)
    a = train_lora(tiny.pipe, ones, NoiseStrategy(), LORA, spec)
    b = train_lora(tiny.pipe, plain, NoiseStrategy(), LORA, spec)
    assert a.losses == b.losses and _states_equal(a.unet_state, b.unet_state)
    zero = train_lora(tiny.pipe, encode_dataset(tiny.pipe, images, CAPTIONS, masks=[torch.zeros(32, 32)] * 4),
                      NoiseStrategy(), LORA, TrainSpec(steps=3, batch_size=2, lr=1e-3, seed=2, unmasked_weight=0.25))
    assert zero.losses[0] == pytest.approx(0.25 * b.losses[0], rel=1e-5)
    with pytest.raises(ValueError, match="each mask must have its image's height and width"):
        encode_dataset(tiny.pipe, images, CAPTIONS, masks=[torch.ones(16, 16)] * 4)


# --- Optimizers and LR schedules --------------------------------------------------------------------

@pytest.mark.parametrize("name,cls", [("prodigy", "prodigyopt.Prodigy"),
                                      ("adafactor", "transformers.optimization.Adafactor"),
                                      ("adamw_schedulefree", "schedulefree.AdamWScheduleFree")])
def test_optional_optimizers_reach_the_optimizer_and_train(tiny, data, name, cls, monkeypatch):
    import importlib

    module, attr = cls.rsplit(".", 1)
    real = getattr(importlib.import_module(module), attr)
    made = []

    class Spy(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(importlib.import_module(module), attr, Spy)
    lr = 1.0 if name == "prodigy" else 1e-3
    result = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=3, lr=lr, optimizer=name))
    assert len(made) == 1 and all(math.isfinite(x) for x in result.losses)
    assert any(made[0].state.values()), "the optimizer stepped"
    if name == "prodigy":  # the logged LR is Prodigy's step size d·lr, not the multiplier
        assert result.lrs[-1] == pytest.approx(made[0].param_groups[0]["d"] * lr)
    if name == "adamw_schedulefree":  # the result holds the averaged (eval-mode) weights
        assert made[0].param_groups[0]["train_mode"] is False


def test_8bit_adamw_and_schedule_free_with_a_schedule_are_refused_clearly(tiny, data):
    with pytest.raises(ValueError, match="adamw_8bit' needs a CUDA GPU"):
        train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=1, optimizer="adamw_8bit"))
    with pytest.raises(ValueError, match="set lr_schedule constant"):
        train_lora(tiny.pipe, data, NoiseStrategy(), LORA,
                   TrainSpec(steps=1, optimizer="adamw_schedulefree", lr_schedule="cosine"))


def test_cosine_with_restarts_and_polynomial_follow_their_closed_forms(tiny, data):
    steps, warmup, lr = 12, 2, 1e-3
    restarts = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(
        steps=steps, lr=lr, warmup_steps=warmup, lr_schedule="cosine_with_restarts", lr_cycles=2)).lrs
    poly = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(
        steps=steps, lr=lr, warmup_steps=warmup, lr_schedule="polynomial", lr_power=2.0)).lrs
    for s in range(steps):
        if s < warmup:
            assert restarts[s] == pytest.approx(lr * s / warmup) and poly[s] == pytest.approx(lr * s / warmup)
            continue
        progress = (s - warmup) / (steps - warmup)
        assert restarts[s] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * ((2 * progress) % 1.0))))
        assert poly[s] == pytest.approx((lr - 1e-7) * (1 - progress) ** 2 + 1e-7)


# --- Nodes ------------------------------------------------------------------------------------------

def test_train_lora_node_with_held_out_set_ema_tensorboard_mask_and_save_lora_weights(tiny, output_dir):
    from safetensors.torch import load_file

    from loralab.core.datasets import Dataset
    from loralab.nodes.lora import LoRALabSaveLoRA, LoRALabTrainConfig, LoRALabTrainLoRA

    g = torch.Generator().manual_seed(4)
    images, held = torch.rand(3, 32, 32, 3, generator=g), torch.rand(2, 32, 32, 3, generator=g)
    (spec,) = LoRALabTrainConfig().build(6, 1, 2e-3, "constant", 0, validation_loss_every=3, ema_decay=0.9,
                                         tensorboard=True, unmasked_weight=0.1)
    mask = torch.zeros(32, 32)
    mask[8:24, 8:24] = 1
    lora, _, cost, _ = LoRALabTrainLoRA().train(tiny, NoiseStrategy(), LORA, spec, "parity", images=images,
                                                captions="a sks photo", mask=mask,
                                                validation_dataset=Dataset(held, ["a sks photo"] * 2))
    (row,) = cost.rows
    assert [s for s, _, _ in lora.val_losses] == [0, 3, 6] and row["val_loss"] == lora.val_losses[-1][1]
    assert row["best_val_loss"] == min(v for _, v, _ in lora.val_losses) and "val_loss_ema" in row
    run = output_dir / "loralab_checkpoints" / "parity"
    assert list((run / "tensorboard").glob("events.out.tfevents.*")) and (run / "log.csv").is_file()
    files = {}
    for weights in ("ema", "raw"):
        saved = LoRALabSaveLoRA().save(lora, f"parity_{weights}", weights=weights)
        files[weights] = load_file(saved["ui"]["text"][0])
        assert saved["result"][0].rows[0]["weights"] == weights
    assert files["ema"].keys() == files["raw"].keys()
    assert all(torch.equal(files["ema"][k], lora.tensors[k]) and torch.equal(files["raw"][k], lora.raw_tensors[k])
               for k in files["ema"])
    assert any(not torch.equal(files["ema"][k], files["raw"][k]) for k in files["ema"])
    with pytest.raises(ValueError, match="input 'mask': 1 mask"):
        LoRALabTrainLoRA().train(tiny, NoiseStrategy(), LORA, spec, "parity2", images=images,
                                 captions="a sks photo", mask=torch.ones(1, 16, 16))


def test_fine_tuning_holds_out_a_fraction_and_hands_on_the_ema(tiny, images):
    from loralab.core.train import finetune_from_images

    spec = TrainSpec(steps=3, batch_size=1, lr=1e-4, seed=2, validation_loss_every=3, validation_fraction=0.25,
                     ema_decay=0.5)
    tuned, result = finetune_from_images(tiny, images, CAPTIONS, NoiseStrategy(), spec)
    assert [s for s, _, _ in result.val_losses] == [0, 3] and not math.isnan(result.val_losses[-1][2])
    ema, raw = result.ema_states["unet"], result.states["unet"]
    weights = tuned.pipe.unet.state_dict()
    assert all(torch.equal(weights[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    assert any(not torch.equal(a, b) for a, b in zip(tiny.pipe.unet.parameters(),
                                                              tuned.pipe.unet.parameters(), strict=True))


def test_sdxl_tag_dropout_reencodes_as_the_cache_does_and_trains(tmp_path):
    """With every tag kept, the per-step encoding equals the cached SDXL hidden states and pooled
    embedding (the same as diffusers' encode_prompt); with dropout the tiny SDXL trains."""
    from test_checkpoints import make_tiny_checkpoint

    from loralab.core.checkpoints import load_single_file
    from loralab.core.trainer.conditioner import Conditioner

    path, config_dir, _ = make_tiny_checkpoint("sdxl", tmp_path)
    pipe, _ = load_single_file(path, torch.float32, config_dir=config_dir)
    data = encode_dataset(pipe, torch.rand(2, 64, 64, 3), ["sks, red, round", "sks, blue"])
    cpu = torch.device("cpu")
    keep_all = Conditioner(pipe, data, {}, 0.0, cpu, tag_dropout=0.9, keep_tags=3)
    drop = keep_all.draw([0, 1], torch.Generator().manual_seed(0))
    assert drop.captions == data.captions
    with torch.no_grad():
        cond, added = keep_all([0, 1], drop)
    torch.testing.assert_close(cond, data.embeddings, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(added["text_embeds"], data.added_cond["text_embeds"], rtol=1e-5, atol=1e-5)
    result = train_lora(pipe, data, NoiseStrategy(), LoRAConfigSpec(rank=2, alpha=2.0),
                        TrainSpec(steps=2, batch_size=2, tag_dropout=0.5, keep_tags=1))
    assert all(math.isfinite(x) for x in result.losses)


def test_validation_images_show_the_ema_weights_and_training_is_untouched(tiny, data):
    """With EMA the validation callback sees the EMA weights (what the LoRA out is); the raw
    weights come back exactly afterwards, so training equals a run without validation images."""
    name = next(n for n, _ in tiny.pipe.unet.named_modules() if n.endswith("to_q"))
    spec = TrainSpec(steps=4, batch_size=2, lr=3e-3, seed=5, ema_decay=0.7, validation_every=4)

    def snapshot(step):  # the live adapter weight of one module, as the "image"
        module = dict(tiny.pipe.unet.named_modules())[name]
        return module.lora_B["loralab_train"].weight.detach().clone()[None]

    result = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, spec, validation=snapshot)
    ((step, seen),) = result.validation_images
    assert step == 4 and torch.equal(seen[0], result.ema_states["unet"][f"{name}.lora_B.weight"])
    plain = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(**{**spec.__dict__, "validation_every": 0}))
    assert _states_equal(result.unet_state, plain.unet_state)


# --- Loss types and multi-resolution noise ----------------------------------------------------------

def test_huber_loss_and_multires_noise_train_and_resume_signatures_keep_older_checkpoints(tiny, data):
    from loralab.core.distill import LCMSpec
    from loralab.core.train import NOISE_ADDED_LATER, run_signature

    spec = TrainSpec(steps=3, batch_size=2, lr=1e-3, seed=4)
    plain = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, spec)
    robust = train_lora(tiny.pipe, data, NoiseStrategy(loss_type="huber", multires_noise_iterations=6,
                                                        multires_noise_discount=0.3), LORA, spec)
    assert all(math.isfinite(x) for x in robust.losses) and robust.losses != plain.losses
    # the defaults of fields added later leave the signature as it was before they existed
    assert set(NOISE_ADDED_LATER) == {"loss_type", "huber_schedule", "huber_c", "multires_noise_iterations",
                                      "multires_noise_discount"}
    assert run_signature(data, NoiseStrategy(), LORA, spec) != run_signature(data, NoiseStrategy(huber_c=0.2), LORA,
                                                                            spec)
    with pytest.raises(ValueError, match="LCM distillation has its own loss"):
        train_lora(tiny.pipe, data, NoiseStrategy(loss_type="l1"), LORA,
                   TrainSpec(steps=1, distill=LCMSpec(w_min=3.0, w_max=9.0)))
