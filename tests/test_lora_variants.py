"""LoHa and LoKr (peft's LoHaConfig / LoKrConfig): files in LyCORIS layout that merge as peft merges
them, load and apply through our nodes, blend (through ΔW + SVD) and train on the tiny model."""

import copy
import math
from pathlib import Path

import pytest
import torch
from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

from loralab.core.host import configure as configure_host
from loralab.core.lab_lora import LabLoRA
from loralab.core.lora import LoRAConfigSpec, lora_parameter_count, peft_config, resolve_targets
from loralab.core.lora_files import (
    LYCORIS_PARTS,
    blend,
    check_lora_shapes,
    delta_weights,
    kohya_metadata,
    merged_copy,
    reference_index,
    save_lora_file,
    to_kohya,
)

CONFIGS = {
    "loha": (LoHaConfig, {}),
    "loha_tucker": (LoHaConfig, {"use_effective_conv2d": True}),
    "lokr": (LoKrConfig, {}),
    "lokr_tucker": (LoKrConfig, {"use_effective_conv2d": True}),
    "lokr_decompose_both": (LoKrConfig, {"decompose_both": True}),
}


def _peft_merged(model, targets, rank, alpha, kind, seed=0, **options):
    """A copy of ``model`` with a random LoHa/LoKr adapter (every factor non-zero), its peft state in
    our trainer's names, and peft's own merge (``get_delta_weight``) of each wrapped layer."""
    wrapped = inject_adapter_in_model(kind(r=rank, alpha=alpha, target_modules=targets, **options),
                                      copy.deepcopy(model))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if any(part in name for part in ("hada_", "lokr_")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    state = {n.replace(".default", ""): p.detach().clone() for n, p in wrapped.named_parameters()
             if any(part in n for part in ("hada_", "lokr_"))}
    for module in wrapped.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    return state, {n: m.get_base_layer().weight.detach() for n, m in wrapped.named_modules()
                   if isinstance(m, BaseTunerLayer)}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("rank", [2, 4])
def test_loha_lokr_files_merge_as_peft_merges_them(tiny, config, rank):
    """Linear, 1x1 and 3x3 Conv2d targets; alpha ≠ rank. For LoKr at rank 4 the tiny model's 32/64-wide
    layers get two full Kronecker factors (where ComfyUI ignores alpha): the scale is folded in."""
    kind, options = CONFIGS[config]
    unet = tiny.pipe.unet
    targets = resolve_targets(unet, "all_linear+conv")
    state, merged = _peft_merged(unet, targets, rank, 3.0, kind, seed=rank, **options)
    kohya = to_kohya(state, 3.0, rank=rank)
    assert {k.rsplit(".", 1)[1] for k in kohya} <= {*LYCORIS_PARTS, "alpha"}
    if config == "lokr" and rank == 4:
        assert any(k.endswith(".lokr_w2") for k in kohya) and any(k.endswith(".lokr_w2_a") for k in kohya)
    if config == "loha_tucker":
        assert any(k.endswith("hada_t1") for k in kohya)
    assert not any(k.endswith("lokr_t2") for k in kohya)  # ComfyUI 0.8 fails on it: written as a full lokr_w2
    pipe, unmatched = merged_copy(tiny.pipe, kohya, 1.0, 1.0)
    assert not unmatched
    ours = dict(pipe.unet.named_modules())
    assert len(merged) == len(targets)
    for name, weight in merged.items():
        torch.testing.assert_close(ours[name].weight, weight, atol=1e-5, rtol=1e-5)


def _comfyui_scale(kohya, name):
    """ComfyUI 0.8's scale (comfy/weight_adapter/loha.py, lokr.py): alpha / rank, where LoHa's rank is
    hada_w1_b.shape[0] and LoKr's that of its decomposed factor; 1 when a LoKr has none."""
    alpha = float(kohya[f"{name}.alpha"])
    if f"{name}.hada_w1_b" in kohya:
        return alpha / kohya[f"{name}.hada_w1_b"].shape[0]
    dim = None
    if f"{name}.lokr_w1_b" in kohya:
        dim = kohya[f"{name}.lokr_w1_b"].shape[0]
    if f"{name}.lokr_w2_b" in kohya:
        dim = kohya[f"{name}.lokr_w2_b"].shape[0]
    return alpha / dim if dim is not None else 1.0


def test_every_module_scales_as_comfyui_scales_it(tiny):
    """Our ΔW = ComfyUI's scale × the factors' product: LoKr modules with two full factors carry the
    trained alpha/r in lokr_w1 and alpha = r, since ComfyUI uses 1 there."""
    unet = tiny.pipe.unet
    targets = resolve_targets(unet, "all_linear+conv")
    state, _ = _peft_merged(unet, targets, 4, 3.0, LoKrConfig)
    kohya = to_kohya(state, 3.0, rank=4)
    deltas = delta_weights(kohya)
    full = [n for n in deltas if f"{n}.lokr_w1" in kohya and f"{n}.lokr_w2" in kohya]
    assert full and all(float(kohya[f"{n}.alpha"]) == 4.0 for n in full)
    for name, delta in deltas.items():
        module = name.removeprefix("lora_unet_")
        peft_name = next(t for t in targets if t.replace(".", "_") == module)
        w1 = state.get(f"{peft_name}.lokr_w1")
        if w1 is None:
            w1 = state[f"{peft_name}.lokr_w1_a"] @ state[f"{peft_name}.lokr_w1_b"]
        w2 = state.get(f"{peft_name}.lokr_w2")
        if w2 is None:
            w2 = state[f"{peft_name}.lokr_w2_a"] @ state[f"{peft_name}.lokr_w2_b"]
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        expected = torch.kron(w1, w2) * 3.0 / 4  # peft: alpha / r, whatever the factors
        torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-5)
        file_w1 = kohya.get(f"{name}.lokr_w1")
        if file_w1 is None:
            file_w1 = kohya[f"{name}.lokr_w1_a"] @ kohya[f"{name}.lokr_w1_b"]
        if w2.ndim == 4:
            file_w1 = file_w1[:, :, None, None]
        file_w2 = w2 if f"{name}.lokr_w2" not in kohya else kohya[f"{name}.lokr_w2"]
        torch.testing.assert_close(_comfyui_scale(kohya, name) * torch.kron(file_w1, file_w2), expected,
                                   atol=1e-5, rtol=1e-5)


def test_lokr_with_full_factors_needs_the_rank():
    state = {"m.lokr_w1": torch.ones(2, 2), "m.lokr_w2": torch.ones(4, 4)}
    with pytest.raises(ValueError, match="two full factors.*rank is needed"):
        to_kohya(state, 2.0)
    kohya = to_kohya(state, 2.0, rank=4)
    torch.testing.assert_close(delta_weights(kohya)["lora_unet_m"], torch.full((8, 8), 0.5))


@pytest.mark.parametrize("variant", ["loha", "lokr"])
def test_keys_are_the_lycoris_names_comfyui_maps(tiny, variant):
    """Every module is one of SD1.5's kohya names (reference_index, the names ComfyUI's key map knows),
    every key one that ComfyUI's LoHa/LoKr adapter reads (comfy/weight_adapter/loha.py, lokr.py) or alpha."""
    kind = LoHaConfig if variant == "loha" else LoKrConfig
    unet, te = tiny.pipe.unet, tiny.pipe.text_encoder
    unet_state, _ = _peft_merged(unet, resolve_targets(unet, "all_linear+conv"), 4, 4.0, kind,
                                 use_effective_conv2d=True)
    te_state, _ = _peft_merged(te, resolve_targets(te, "all_linear", text_encoder=True), 4, 4.0, kind)
    kohya = {**to_kohya(unet_state, 4.0, rank=4), **to_kohya(te_state, 4.0, "lora_te", rank=4)}
    comfy = {"loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"},
             "lokr": {"lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"}}
    index = reference_index("sd1")
    modules = {k.rsplit(".", 1)[0] for k in kohya}
    assert all(k.rsplit(".", 1)[1] in comfy[variant] for k in kohya)
    assert modules <= set(index), sorted(modules - set(index))[:3]
    assert any(m.startswith("lora_te_text_model_encoder_layers_0_") for m in modules)


@pytest.mark.parametrize("variant", ["loha", "lokr"])
def test_save_load_apply_round_trip_equals_peft(tiny, tmp_path, output_dir, variant):
    from loralab.nodes.lora import LoRALabApplyLoRA, LoRALabLoadLoRA, LoRALabSaveLoRA

    kind = LoHaConfig if variant == "loha" else LoKrConfig
    unet = tiny.pipe.unet
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    state, merged = _peft_merged(unet, resolve_targets(unet, "all_linear+conv"), 4, 2.0, kind, seed=5,
                                 use_effective_conv2d=True)
    kohya = to_kohya(state, 2.0, rank=4)
    (tmp_path / "loras").mkdir()
    save_lora_file(kohya, kohya_metadata(4, 2.0, "sd1", variant=variant), tmp_path / "loras" / "v.safetensors")
    configure_host(models=(Path(tmp_path),))
    (loaded,) = LoRALabLoadLoRA().load("v.safetensors")
    assert loaded.metadata["ss_network_module"] == "lycoris.kohya" and loaded.rank == 4
    assert all(torch.equal(loaded.tensors[k], kohya[k]) for k in kohya) and loaded.tensors.keys() == kohya.keys()
    (applied,) = LoRALabApplyLoRA().apply(tiny, loaded, 1.0, 1.0)
    modules = dict(applied.pipe.unet.named_modules())
    for name, weight in merged.items():
        torch.testing.assert_close(modules[name].weight, weight, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(p, before[n]) for n, p in tiny.pipe.unet.named_parameters())  # input unchanged
    with pytest.raises(ValueError, match="Save LoRA: input 'layout' = 'diffusers': LoHa/LoKr factors .* kohya layout"):
        LoRALabSaveLoRA().save(loaded, "x", layout="diffusers")


def test_wrong_factor_shapes_are_refused_before_any_multiply(tiny):
    name = "lora_unet_down_blocks_0_resnets_0_conv1"  # weight [32, 32, 3, 3]
    good = {f"{name}.hada_w1_a": torch.ones(32, 2), f"{name}.hada_w1_b": torch.ones(2, 288),
            f"{name}.hada_w2_a": torch.ones(32, 2), f"{name}.hada_w2_b": torch.ones(2, 288),
            f"{name}.alpha": torch.tensor(2.0)}
    check_lora_shapes(good)
    merged_copy(tiny.pipe, good, 1.0, 1.0)  # a flattened kernel is reshaped, as ComfyUI does
    with pytest.raises(ValueError, match=r"hada_w1_b'? has shape \[3, 288\]; its rows must equal"):
        check_lora_shapes({**good, f"{name}.hada_w1_b": torch.ones(3, 288)})
    with pytest.raises(ValueError, match="but no hada_w2_b"):
        check_lora_shapes({k: v for k, v in good.items() if not k.endswith("hada_w2_b")})
    wide = {**good, f"{name}.hada_w1_b": torch.ones(2, 100), f"{name}.hada_w2_b": torch.ones(2, 100)}
    with pytest.raises(ValueError, match=r"update of shape \[32, 100\]; the model's module .* \[32, 32, 3, 3\]"):
        merged_copy(tiny.pipe, wide, 1.0, 1.0)
    lokr = {f"{name}.lokr_w1": torch.ones(4, 4), f"{name}.lokr_t2": torch.ones(2, 2, 1, 1),
            f"{name}.lokr_w2_a": torch.ones(2, 8), f"{name}.lokr_w2_b": torch.ones(2, 8)}
    with pytest.raises(ValueError, match=r"update of shape \[32, 32, 1, 1\]; the model's module"):
        merged_copy(tiny.pipe, lokr, 1.0, 1.0)  # a 1x1 kernel for a 3x3 convolution
    with pytest.raises(ValueError, match="mixes LoHa"):
        check_lora_shapes({**good, f"{name}.lokr_w1": torch.ones(4, 4)})


def _random_kohya(tiny, kind, seed, targets="all_linear+conv", **options):
    state, _ = _peft_merged(tiny.pipe.unet, resolve_targets(tiny.pipe.unet, targets), 4, 2.0, kind, seed=seed,
                            **options)
    return to_kohya(state, 2.0, rank=4)


def _lora(tiny, seed):
    from peft import LoraConfig

    wrapped = inject_adapter_in_model(LoraConfig(r=3, lora_alpha=6.0, target_modules=resolve_targets(
        tiny.pipe.unet, "all_linear+conv")), copy.deepcopy(tiny.pipe.unet))
    g = torch.Generator().manual_seed(seed)
    state = {n.replace(".default", ""): torch.randn(p.shape, generator=g) * 0.1
             for n, p in wrapped.named_parameters() if "lora_" in n}
    return to_kohya(state, 6.0)


@pytest.mark.parametrize("pair", ["loha+lora", "lokr+lokr", "loha_flat+loha_flat"])
def test_blends_through_the_update_exactly_or_at_the_best_rank(tiny, pair):
    """Σ wᵢ·ΔWᵢ becomes a LoRA by SVD: exact without a rank; with one, the error is the tail singular
    values (Eckart–Young). Kernel-shaped where an input says the kernel, flattened (ComfyUI reshapes) else."""
    tucker = {"use_effective_conv2d": True}
    a, b = {"loha+lora": (_random_kohya(tiny, LoHaConfig, 1, **tucker), _lora(tiny, 2)),
            "lokr+lokr": (_random_kohya(tiny, LoKrConfig, 1, **tucker), _random_kohya(tiny, LoKrConfig, 2)),
            "loha_flat+loha_flat": (_random_kohya(tiny, LoHaConfig, 1), _random_kohya(tiny, LoHaConfig, 2))}[pair]
    da, db = delta_weights(a), delta_weights(b)
    exact = blend([a, b], [0.3, 0.7])
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in exact)
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    down = exact[f"{conv}.lora_down.weight"]
    assert down.ndim == (2 if pair == "loha_flat+loha_flat" else 4)
    for name, delta in delta_weights(exact).items():
        expected = 0.3 * da[name].flatten(1) + 0.7 * db[name].flatten(1)
        torch.testing.assert_close(delta.flatten(1), expected, atol=1e-5, rtol=1e-4)
    pipe, unmatched = merged_copy(tiny.pipe, exact, 1.0, 1.0)  # applies, flattened kernels included
    assert not unmatched
    base = dict(tiny.pipe.unet.named_modules())["down_blocks.0.resnets.0.conv1"].weight
    merged = dict(pipe.unet.named_modules())["down_blocks.0.resnets.0.conv1"].weight
    torch.testing.assert_close(merged, base + (0.3 * da[conv].flatten(1) + 0.7 * db[conv].flatten(1)).reshape(
        base.shape), atol=1e-5, rtol=1e-4)
    low = blend([a, b], [0.3, 0.7], rank=2)
    for name, delta in delta_weights(low).items():
        expected = 0.3 * da[name].flatten(1) + 0.7 * db[name].flatten(1)
        s = torch.linalg.svdvals(expected)
        error = torch.linalg.matrix_norm(delta.flatten(1) - expected) ** 2
        torch.testing.assert_close(error, (s[2:] ** 2).sum(), atol=1e-5, rtol=1e-3)


def test_blend_refuses_dora_and_oversized_claims():
    huge = {"lora_unet_m.hada_w1_a": torch.ones(8000, 1), "lora_unet_m.hada_w1_b": torch.ones(1, 8000),
            "lora_unet_m.hada_w2_a": torch.ones(8000, 1), "lora_unet_m.hada_w2_b": torch.ones(1, 8000)}
    with pytest.raises(ValueError, match="64,000,000 values"):
        blend([huge, huge], [0.5, 0.5])
    dora = {"lora_unet_m.lora_down.weight": torch.ones(1, 4), "lora_unet_m.lora_up.weight": torch.ones(4, 1),
            "lora_unet_m.dora_scale": torch.ones(4, 1)}
    with pytest.raises(ValueError, match="DoRA LoRAs cannot be blended"):
        blend([dora, huge], [0.5, 0.5])
    other = {"lora_unet_m.hada_w1_a": torch.ones(4, 1), "lora_unet_m.hada_w1_b": torch.ones(1, 5),
             "lora_unet_m.hada_w2_a": torch.ones(4, 1), "lora_unet_m.hada_w2_b": torch.ones(1, 5)}
    small = {"lora_unet_m.lora_down.weight": torch.ones(1, 4), "lora_unet_m.lora_up.weight": torch.ones(4, 1)}
    with pytest.raises(ValueError, match="different models"):
        blend([other, small], [0.5, 0.5])


def test_blend_node_turns_two_lycoris_loras_into_one_lora(tiny):
    from loralab.nodes.lora import LoRALabBlendLoRAs

    a = LabLoRA(_random_kohya(tiny, LoHaConfig, 1, "attention"), 4, 2.0, "sd1", "a")
    b = LabLoRA(_random_kohya(tiny, LoKrConfig, 2, "attention"), 4, 2.0, "sd1", "b")
    (mix,) = LoRALabBlendLoRAs().blend(a, b, 0.5, 4)
    assert mix.rank == 4 and not any(k.rsplit(".", 1)[1] in LYCORIS_PARTS for k in mix.tensors)


@pytest.mark.parametrize("variant", ["loha", "lokr"])
def test_parameter_count_is_peft_trainable_count(tiny, variant):
    unet = tiny.pipe.unet
    for targets in ("attention+ff", "all_linear+conv"):
        names = resolve_targets(unet, targets)
        for rank in (2, 4, 8):
            lcfg = LoRAConfigSpec(rank=rank, alpha=rank, variant=variant)
            wrapped = inject_adapter_in_model(peft_config(lcfg, names, rank, float(rank)), copy.deepcopy(unet))
            peft_count = sum(p.numel() for n, p in wrapped.named_parameters() if "hada_" in n or "lokr_" in n)
            assert lora_parameter_count(unet, names, rank, variant) == peft_count, (targets, rank)


def test_config_refuses_what_peft_loha_lokr_lack():
    with pytest.raises(ValueError, match="input 'dropout' = 0.1: .* loha"):
        LoRAConfigSpec(variant="loha", dropout=0.1)
    with pytest.raises(ValueError, match="input 'init' = 'gaussian'"):
        LoRAConfigSpec(variant="lokr", init="gaussian")
    with pytest.raises(ValueError, match="is not one of lora, dora, rslora, loha, lokr"):
        LoRAConfigSpec(variant="locon")


@pytest.mark.parametrize("variant", ["loha", "lokr"])
def test_training_a_few_steps_writes_a_file_that_applies(tiny, variant):
    from loralab.core.noise import NoiseStrategy
    from loralab.core.train import TrainSpec, train_from_images

    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    lcfg = LoRAConfigSpec(rank=4, alpha=8.0, targets="all_linear+conv", text_encoder_rank=2, variant=variant)
    lora = train_from_images(tiny, images, ["a sks photo"], NoiseStrategy(), lcfg,
                             TrainSpec(steps=3, batch_size=2, lr=1e-2))
    assert len(lora.losses) == 3 and all(math.isfinite(x) for x in lora.losses)
    assert lora.metadata["ss_network_args"] == f'{{"algo": "{variant}"}}'
    parts = {k.rsplit(".", 1)[1] for k in lora.tensors}
    assert parts <= {*LYCORIS_PARTS, "alpha"} and any(k.startswith("lora_te_") for k in lora.tensors)
    if variant == "loha":
        assert "hada_t1" in parts  # 3x3 convolutions keep their kernel (use_effective_conv2d)
    deltas = delta_weights(lora.tensors)
    assert all(d.abs().max() > 0 for d in deltas.values())  # every adapter moved off its zero start
    names = {k.rsplit(".", 1)[0] for k in lora.tensors}
    assert names <= set(reference_index("sd1"))
    pipe, unmatched = merged_copy(tiny.pipe, lora.tensors, 1.0, 1.0)
    assert not unmatched
    assert lora.trainable_parameters == (lora_parameter_count(tiny.pipe.unet, resolve_targets(
        tiny.pipe.unet, "all_linear+conv"), 4, variant) + lora_parameter_count(
        tiny.pipe.text_encoder, resolve_targets(tiny.pipe.text_encoder, "attention", text_encoder=True), 2, variant))
