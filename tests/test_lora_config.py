"""LoRA targets resolve to the intended modules; parameter counts equal peft's."""

import copy

import pytest
import torch.nn as nn
from peft import LoraConfig, inject_adapter_in_model

from loralab.core.lora import LoRAConfigSpec, lora_parameter_count, resolve_targets


def peft_trainable(model, targets, rank):
    wrapped = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), copy.deepcopy(model))
    return sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n)


def test_attention_preset_picks_q_k_v_out_of_every_attention(tiny):
    unet = tiny.pipe.unet
    targets = resolve_targets(unet, "attention")
    n_attn = sum(1 for n, m in unet.named_modules() if type(m).__name__ == "Attention")
    assert len(targets) == 4 * n_attn
    assert {t.rsplit(".", 1)[-1] if not t.endswith("to_out.0") else "to_out.0" for t in targets} == {
        "to_q", "to_k", "to_v", "to_out.0"}


def test_feed_forward_and_broader_presets_grow_as_described(tiny):
    unet = tiny.pipe.unet
    attn, ff = resolve_targets(unet, "attention"), resolve_targets(unet, "attention+ff")
    assert set(attn) < set(ff) and all(t.endswith(("ff.net.0.proj", "ff.net.2")) for t in set(ff) - set(attn))
    linear = resolve_targets(unet, "all_linear")
    assert set(ff) <= set(linear) and all(isinstance(dict(unet.named_modules())[t], nn.Linear) for t in linear)
    with_conv = resolve_targets(unet, "all_linear+conv")
    assert any(isinstance(dict(unet.named_modules())[t], nn.Conv2d) for t in with_conv)


def test_text_encoder_targets_and_custom_lists(tiny):
    te = tiny.pipe.text_encoder
    assert all(t.endswith(("q_proj", "k_proj", "v_proj", "out_proj")) for t in resolve_targets(te, "attention",
                                                                                               text_encoder=True))
    assert resolve_targets(tiny.pipe.unet, "custom", ("proj_in",)) == sorted(
        n for n, _ in tiny.pipe.unet.named_modules() if n.endswith("proj_in"))
    with pytest.raises(ValueError, match="match no Linear or Conv2d module"):
        resolve_targets(tiny.pipe.unet, "custom", ("nothing_here",))


@pytest.mark.parametrize("preset", ["attention", "attention+ff", "all_linear+conv"])
def test_parameter_count_equals_peft(tiny, preset):
    targets = resolve_targets(tiny.pipe.unet, preset)
    assert lora_parameter_count(tiny.pipe.unet, targets, 4) == peft_trainable(tiny.pipe.unet, targets, 4)


def test_scale_is_alpha_over_rank_or_over_sqrt_rank_for_rslora():
    assert LoRAConfigSpec(rank=16, alpha=32).scale == 2.0
    assert LoRAConfigSpec(rank=16, alpha=4, variant="rslora").scale == 1.0


def test_a_parameter_budget_picks_the_closest_rank_and_training_reports_it(tiny):
    import torch

    from loralab.core.lora import fit_budget
    from loralab.core.noise import NoiseStrategy
    from loralab.core.train import TrainSpec, encode_dataset, train_lora

    unet, te = tiny.pipe.unet, tiny.pipe.text_encoder
    per_unet = peft_trainable(unet, resolve_targets(unet, "attention"), 1)
    per_te = peft_trainable(te, resolve_targets(te, "attention", text_encoder=True), 1)
    budget = 6 * per_unet + 1  # UNet only: rank 6; text encoder only / both: the nearest rank for the same budget
    setups = {"unet": LoRAConfigSpec(rank=1, parameter_budget=budget),
              "text_encoder": LoRAConfigSpec(train_unet=False, text_encoder_rank=1, parameter_budget=budget),
              "both": LoRAConfigSpec(rank=1, text_encoder_rank=1, parameter_budget=budget)}
    per_rank = {"unet": per_unet, "text_encoder": per_te, "both": per_unet + per_te}
    data = encode_dataset(tiny.pipe, torch.rand(1, 32, 32, 3), ["x"])
    for name, config in setups.items():
        fitted = fit_budget(tiny.pipe, config)
        best = min(range(1, 200), key=lambda r: abs(r * per_rank[name] - budget))
        assert fitted.rank == best and fitted.text_encoder_rank == (best if name != "unet" else 0)
        result = train_lora(tiny.pipe, data, NoiseStrategy(), config, TrainSpec(steps=1))
        assert result.trainable_parameters == best * per_rank[name] and result.config == fitted
    assert fit_budget(tiny.pipe, LoRAConfigSpec(rank=3)).rank == 3  # no budget: ranks as given


def kohya_rule(unet):
    """kohya sd-scripts networks/lora.py: Linear and Conv2d layers inside Transformer2DModel, ResnetBlock2D,
    Downsample2D and Upsample2D modules (the last three when conv_dim is given, as LoCon needs)."""
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    blocks = [n for n, m in unet.named_modules() if isinstance(m, (Transformer2DModel, ResnetBlock2D, Downsample2D,
                                                                   Upsample2D))]
    return sorted(n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
                  and any(n.startswith(b + ".") for b in blocks))


OUTSIDE_KOHYA = {"conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"}


def reference_unet(family):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from loralab.core.checkpoints import CONFIGS

    with init_empty_weights():
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS[family] / "unet"))


def test_the_kohya_preset_adapts_what_kohya_sd_scripts_adapts_and_loads(tiny):
    unet = tiny.pipe.unet
    kohya = resolve_targets(unet, "all_linear+conv (kohya)")
    assert kohya == kohya_rule(unet)
    assert set(resolve_targets(unet, "all_linear+conv")) - set(kohya) == OUTSIDE_KOHYA
    sd1 = reference_unet("sd1")  # issue 10 at SD1.5 size: kohya loads 326 of 330 modules (48 of the text encoder)
    assert (len(resolve_targets(sd1, "all_linear+conv")), len(resolve_targets(sd1, "all_linear+conv (kohya)"))) \
        == (330 - 48, 326 - 48)
    sdxl = reference_unet("sdxl")
    assert resolve_targets(sdxl, "all_linear+conv (kohya)") == kohya_rule(sdxl)
    assert set(resolve_targets(sdxl, "all_linear+conv")) - set(kohya_rule(sdxl)) == OUTSIDE_KOHYA | {
        "add_embedding.linear_1", "add_embedding.linear_2"}
