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
