"""Kohya-layout LoRA files: key names, alpha as trained, and loading through diffusers."""

import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors import safe_open

from loralab.core.host import configure as configure_host
from loralab.core.lab_lora import LabLoRA
from loralab.core.lora import resolve_targets
from loralab.core.lora_files import delta_weights, kohya_metadata, kohya_name, save_lora_file, to_kohya


def random_lora(model, targets, rank, seed=0):
    wrapped = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets),
                                      copy.deepcopy(model))
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in wrapped.named_parameters():
        if "lora_" in name:
            state[name.replace(".default", "")] = torch.randn(p.shape, generator=g) * 0.1
    return state


def test_unet_and_text_encoder_keys_follow_the_sd15_kohya_layout(tiny):
    unet_state = random_lora(tiny.pipe.unet, resolve_targets(tiny.pipe.unet, "attention"), 4)
    te_state = random_lora(tiny.pipe.text_encoder, resolve_targets(tiny.pipe.text_encoder, "attention",
                                                                   text_encoder=True), 4)
    keys = set(to_kohya(unet_state, 8.0)) | set(to_kohya(te_state, 8.0, "lora_te"))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.alpha" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in keys
    assert not any(k.startswith("lora_te_encoder") for k in keys)
    kohya = to_kohya(unet_state, 8.0)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {8.0}


def test_a_saved_file_loads_in_diffusers_and_applies_alpha_over_rank(tiny, tmp_path):
    targets = resolve_targets(tiny.pipe.unet, "attention")
    state = random_lora(tiny.pipe.unet, targets, 4, seed=1)
    kohya = to_kohya(state, alpha=2.0)
    path = save_lora_file(kohya, kohya_metadata(4, 2.0, "sd1", {"loralab_noise": {"beta": "linear"}}),
                          tmp_path / "x.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["loralab_noise"] == '{"beta": "linear"}'
    pipe = copy.deepcopy(tiny.pipe)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    base = dict(pipe.unet.named_modules())[name].weight.detach().clone()
    pipe.load_lora_weights(str(path), adapter_name="x")
    pipe.fuse_lora(lora_scale=1.0)
    fused = dict(pipe.unet.named_modules())[name].base_layer.weight if hasattr(
        dict(pipe.unet.named_modules())[name], "base_layer") else dict(pipe.unet.named_modules())[name].weight
    expected = base + delta_weights(kohya)["lora_unet_" + name.replace(".", "_")]
    torch.testing.assert_close(fused.detach(), expected, atol=1e-5, rtol=1e-5)
    assert not list(tmp_path.glob("*.tmp"))


def test_conv_deltas_match_the_composed_convolutions():
    down, up = torch.randn(3, 5, 3, 3), torch.randn(7, 3, 1, 1)
    kohya = {"m.lora_down.weight": down, "m.lora_up.weight": up, "m.alpha": torch.tensor(3.0)}
    x = torch.randn(1, 5, 9, 9)
    composed = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down, padding=1), up)
    merged = torch.nn.functional.conv2d(x, delta_weights(kohya)["m"], padding=1)
    torch.testing.assert_close(merged, composed, atol=1e-4, rtol=1e-4)


def test_incomplete_pairs_are_refused():
    with pytest.raises(ValueError, match="lack lora_A or lora_B"):
        to_kohya({"a.lora_A.weight": torch.zeros(1, 1)}, 1.0)


def kohya_pair(seed, rank=4, out_features=6, in_features=5, alpha=2.0, conv=False):
    g = torch.Generator().manual_seed(seed)
    down = torch.randn((rank, in_features, 3, 3) if conv else (rank, in_features), generator=g)
    up = torch.randn((out_features, rank, 1, 1) if conv else (out_features, rank), generator=g)
    return {"lora_unet_m.lora_down.weight": down, "lora_unet_m.lora_up.weight": up,
            "lora_unet_m.alpha": torch.tensor(alpha)}


@pytest.mark.parametrize("conv", [False, True])
def test_blend_is_exactly_the_weighted_sum_of_updates(conv):
    from loralab.core.lora_files import blend

    a, b = kohya_pair(0, conv=conv), kohya_pair(1, rank=2, alpha=8.0, conv=conv)
    for w in (0.0, 0.3, 1.0):
        blended = delta_weights(blend([a, b], [w, 1 - w]))["lora_unet_m"]
        expected = w * delta_weights(a)["lora_unet_m"] + (1 - w) * delta_weights(b)["lora_unet_m"]
        torch.testing.assert_close(blended, expected, atol=1e-5, rtol=1e-5)


def test_svd_re_rank_is_the_best_low_rank_approximation():
    from loralab.core.lora_files import blend

    a, b = kohya_pair(2, rank=4), kohya_pair(3, rank=4)
    full = 0.5 * delta_weights(a)["lora_unet_m"] + 0.5 * delta_weights(b)["lora_unet_m"]
    same = delta_weights(blend([a, b], [0.5, 0.5], rank=5))["lora_unet_m"]
    torch.testing.assert_close(same, full, atol=1e-5, rtol=1e-5)  # rank 5 = full rank of a 6x5 matrix
    low = blend([a, b], [0.5, 0.5], rank=2)
    assert low["lora_unet_m.lora_down.weight"].shape == (2, 5)
    s = torch.linalg.svdvals(full)
    error = torch.linalg.matrix_norm(delta_weights(low)["lora_unet_m"] - full) ** 2
    torch.testing.assert_close(error, (s[2:] ** 2).sum(), atol=1e-4, rtol=1e-4)  # Eckart-Young


def test_our_files_and_diffusers_layout_files_read_back(tiny, tmp_path):
    from safetensors.torch import save_file

    from loralab.core.lora_files import read_lora_file

    state = random_lora(tiny.pipe.unet, resolve_targets(tiny.pipe.unet, "attention"), 4, seed=5)
    kohya = to_kohya(state, alpha=2.0)
    ours = save_lora_file(kohya, kohya_metadata(4, 2.0, "sd1"), tmp_path / "ours.safetensors")
    back, meta = read_lora_file(ours)
    assert back.keys() == kohya.keys() and meta["ss_network_alpha"] == "2.0"
    diffusers_layout = {f"unet.{k}": v for k, v in state.items()}
    save_file(diffusers_layout, tmp_path / "diffusers.safetensors")
    converted, _ = read_lora_file(tmp_path / "diffusers.safetensors")
    expected = delta_weights(to_kohya(state, alpha=4.0))  # no alpha stored: alpha = rank
    for name, delta in delta_weights(converted).items():
        torch.testing.assert_close(delta, expected[name])
    with pytest.raises(ValueError, match="only .safetensors"):
        read_lora_file(tmp_path / "x.ckpt")


def test_comfyui_trainer_layout_applies_like_the_same_lora_in_kohya_layout(tiny, tmp_path):
    """ComfyUI's Train LoRA writes ``diffusion_model.<original name>.lora_up/down.weight`` + ``.alpha``
    and ``.diff``/``.diff_b`` offsets for norms and biases (comfy_extras/nodes_train.py)."""
    from safetensors.torch import save_file

    from loralab.core.ldm_names import unet_ldm_keys
    from loralab.core.lora_files import merged_copy, read_lora_file

    unet = tiny.pipe.unet
    targets = resolve_targets(unet, "all_linear+conv")
    kohya = to_kohya(random_lora(unet, targets, 4, seed=7), alpha=2.0)
    ldm = unet_ldm_keys([f"{t}.weight" for t in targets], unet.config)
    comfy = {}
    for t in targets:
        name = "diffusion_model." + ldm[f"{t}.weight"].removesuffix(".weight")
        k = "lora_unet_" + t.replace(".", "_")
        comfy[f"{name}.lora_down.weight"] = kohya[f"{k}.lora_down.weight"]
        comfy[f"{name}.lora_up.weight"] = kohya[f"{k}.lora_up.weight"]
        comfy[f"{name}.alpha"] = kohya[f"{k}.alpha"]
    norm = "down_blocks.0.resnets.0.norm1"
    norm_ldm = "diffusion_model." + unet_ldm_keys([f"{norm}.weight"], unet.config)[f"{norm}.weight"][:-7]
    comfy[f"{norm_ldm}.diff"] = torch.full_like(dict(unet.named_modules())[norm].weight, 0.5)
    comfy[f"{norm_ldm}.diff_b"] = torch.full_like(dict(unet.named_modules())[norm].bias, -0.25)
    save_file(comfy, tmp_path / "comfy.safetensors")
    tensors, _ = read_lora_file(tmp_path / "comfy.safetensors")
    from_comfy, unmatched = merged_copy(tiny.pipe, tensors, 1.0, 1.0)
    from_kohya, _ = merged_copy(tiny.pipe, kohya, 1.0, 1.0)
    assert unmatched == []
    a, b = from_comfy.unet.state_dict(), from_kohya.unet.state_dict()
    for key in a:
        if key.startswith(norm):
            offset = 0.5 if key.endswith("weight") else -0.25
            torch.testing.assert_close(a[key], unet.state_dict()[key] + offset)
        else:
            torch.testing.assert_close(a[key], b[key])


def _peft_merged(model, targets, rank, alpha, seed, **variant):
    """A copy of ``model`` with a random peft adapter, its peft state, and peft's own merge of it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, **variant),
                                      copy.deepcopy(model))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.copy_(p + torch.randn(p.shape, generator=g) * 0.1)
    state = {n.replace(".default", ""): p.detach().clone() for n, p in wrapped.named_parameters() if "lora_" in n}
    for module in wrapped.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    return state, {n: m.get_base_layer().weight.detach() for n, m in wrapped.named_modules()
                   if isinstance(m, BaseTunerLayer)}


@pytest.mark.parametrize("variant", ["dora", "rslora"])
def test_dora_and_rslora_files_apply_as_peft_merges_them(tiny, variant, tmp_path):
    from loralab.core.lora import kohya_alpha
    from loralab.core.lora_files import merged_copy

    targets = resolve_targets(tiny.pipe.unet, "attention")
    state, merged = _peft_merged(tiny.pipe.unet, targets, 4, 8.0, 3, use_dora=variant == "dora",
                                 use_rslora=variant == "rslora")
    kohya = to_kohya(state, kohya_alpha(8.0, 4, variant))
    assert any(k.endswith(".dora_scale") for k in kohya) == (variant == "dora")
    pipe, unmatched = merged_copy(tiny.pipe, kohya, 1.0, 1.0)
    assert not unmatched
    ours = dict(pipe.unet.named_modules())
    for name, weight in merged.items():
        torch.testing.assert_close(ours[name].weight, weight, atol=2e-6, rtol=1e-5)
    from loralab.core.lora_files import read_lora_file, to_diffusers

    tensors, metadata = to_diffusers(kohya, "sd1")  # and the diffusers layout keeps every part
    back, _ = read_lora_file(save_lora_file(tensors, metadata, tmp_path / "d.safetensors"))
    assert back.keys() == kohya.keys() and all(torch.allclose(back[k], kohya[k]) for k in kohya)


def test_diffusers_layout_is_what_diffusers_writes_and_loads_back_with_its_alpha(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    from loralab.core.lora_files import read_lora_file, to_diffusers

    unet_state = random_lora(tiny.pipe.unet, resolve_targets(tiny.pipe.unet, "attention"), 4, seed=7)
    te_state = random_lora(tiny.pipe.text_encoder, resolve_targets(tiny.pipe.text_encoder, "attention",
                                                                   text_encoder=True), 2, seed=8)
    kohya = {**to_kohya(unet_state, 2.0), **to_kohya(te_state, 1.0, "lora_te")}
    tensors, metadata = to_diffusers(kohya, "sd1")
    # diffusers' own writer, given the same peft tensors, produces the same keys.
    StableDiffusionPipeline.save_lora_weights(tmp_path / "ref", unet_lora_layers=unet_state,
                                              text_encoder_lora_layers=te_state)
    with safe_open(str(tmp_path / "ref" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert set(f.keys()) == set(tensors)
    path = save_lora_file(tensors, {**kohya_metadata(4, 2.0, "sd1"), **metadata}, tmp_path / "d.safetensors")
    back, _ = read_lora_file(path)  # alpha comes back from the peft metadata
    expected = delta_weights(kohya)
    assert delta_weights(back).keys() == expected.keys()
    for name, delta in delta_weights(back).items():
        torch.testing.assert_close(delta, expected[name])
    pipe = copy.deepcopy(tiny.pipe)
    pipe.load_lora_weights(str(path), adapter_name="x")
    pipe.fuse_lora(lora_scale=1.0)
    checked = 0
    for component, prefix in (("unet", "lora_unet"), ("text_encoder", "lora_te")):
        for name, module in getattr(pipe, component).named_modules():
            key = kohya_name(name, prefix)
            if key in expected:
                checked += 1
                base = dict(getattr(tiny.pipe, component).named_modules())[name].weight
                fused = module.base_layer.weight if hasattr(module, "base_layer") else module.weight
                torch.testing.assert_close(fused.detach(), base + expected[key], atol=1e-5, rtol=1e-5)
    assert checked == len(expected)


TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
CONV = "down_blocks.0.resnets.0.conv1"


def _crafted(tiny, module, **parts):
    """A kohya file for one real module of the tiny model whose parts default to valid shapes."""
    weight = dict(tiny.pipe.unet.named_modules())[module].weight
    out, rest = weight.shape[0], tuple(weight.shape[1:])
    name = "lora_unet_" + module.replace(".", "_")
    shapes = {"down": (2, *rest), "up": (out, 2) + (1, 1) * (weight.ndim == 4), "alpha": ()} | parts
    keys = {"down": "lora_down.weight", "up": "lora_up.weight", "alpha": "alpha", "dora_scale": "dora_scale"}
    return name, {f"{name}.{keys[k]}": torch.full(s, 0.01) for k, s in shapes.items()}


@pytest.mark.parametrize("module, parts, wrong, node", [
    (TO_Q, {"down": (1, 60000), "up": (60000, 1)}, "lora_down.weight", "Apply LoRA"),  # a huge ΔW, a small file
    (TO_Q, {"up": (32, 3)}, "lora_up.weight", "Load LoRA"),  # rank 3 against a rank-2 down
    (TO_Q, {"alpha": (2,)}, "alpha", "Load LoRA"),
    (TO_Q, {"dora_scale": (31, 1)}, "dora_scale", "Load LoRA"),
    (CONV, {"down": (2, 32, 1, 1)}, "lora_down.weight", "Apply LoRA"),  # a 1x1 kernel for a 3x3 convolution
    (CONV, {"up": (32, 2, 3, 3)}, "lora_up.weight", "Load LoRA"),
])
def test_apply_checks_every_shape_against_the_model_before_multiplying(tiny, tmp_path, monkeypatch, module, parts,
                                                                        wrong, node):
    """Shapes that disagree with each other are refused when the file is read, shapes that disagree with
    the model when it is applied: both before any ΔW is computed, naming the file, the key, the shapes."""
    from safetensors.torch import save_file

    from loralab.core import lora_files
    from loralab.nodes.lora import LoRALabApplyLoRA, LoRALabLoadLoRA

    name, tensors = _crafted(tiny, module, **parts)
    (tmp_path / "loras").mkdir()
    save_file(tensors, tmp_path / "loras" / "crafted.safetensors")
    configure_host(models=(Path(tmp_path),))

    def no_multiply(*a, **k):
        raise AssertionError("ΔW was computed before the shapes were checked")

    monkeypatch.setattr(lora_files, "delta_weights", no_multiply)
    with pytest.raises(ValueError) as error:  # refused on loading (shapes that disagree) or applying
        (lora,) = LoRALabLoadLoRA().load("crafted.safetensors")
        LoRALabApplyLoRA().apply(tiny, lora, 1.0, 1.0)
    message = str(error.value)
    assert "crafted.safetensors" in message and f"{name}.{wrong}" in message, message
    assert str(list(tensors[f"{name}.{wrong}"].shape)) in message
    model_shape = str(list(dict(tiny.pipe.unet.named_modules())[module].weight.shape))
    assert message.startswith(f"LoRA Lab: {node}: ") and (model_shape in message) == (node == "Apply LoRA"), message


def test_valid_shapes_of_every_kind_pass_the_check(tiny):
    from loralab.core.lora_files import merged_copy

    for module in (TO_Q, CONV):
        name, tensors = _crafted(tiny, module)
        pipe, unmatched = merged_copy(tiny.pipe, tensors, 1.0, 1.0)
        assert not unmatched
        before = dict(tiny.pipe.unet.named_modules())[module].weight
        assert not torch.equal(dict(pipe.unet.named_modules())[module].weight, before)


def test_dora_weight_in_comfyui_mode_reproduces_comfyuis_weight_decompose():
    """ComfyUI 0.8's ``weight_decompose`` (comfy/weight_adapter/base.py) divides by the base weight's norm.
    Numbers recorded once by running that function on these inputs (ΔW = (alpha/rank)·up·down)."""
    from loralab.core.lora_files import dora_weight

    weight = torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]])
    delta = 0.5 * torch.tensor([[0.5], [-1.0]]) @ torch.tensor([[1.0, 0.5, -0.5]])
    magnitude = torch.tensor([[2.0], [3.0]])
    comfyui = torch.tensor([[1.0910893678665161, -1.636634111404419, 0.32732683420181274],
                            [-0.23643311858177185, 2.600764274597168, -0.7092993259429932]])
    torch.testing.assert_close(dora_weight(weight, delta, magnitude, "comfyui"), comfyui, atol=1e-6, rtol=1e-6)
    peft = (weight + delta) * magnitude / (weight + delta).norm(dim=1, keepdim=True)
    torch.testing.assert_close(dora_weight(weight, delta, magnitude, "peft"), peft)
    assert (dora_weight(weight, delta, magnitude, "peft") - comfyui).abs().max() > 0.1
    with pytest.raises(ValueError, match="not one of peft, comfyui"):
        dora_weight(weight, delta, magnitude, "lycoris")


def test_apply_lora_dora_norm_comfyui_merges_by_the_base_weights_norm(tiny):
    """Apply LoRA with dora_norm = comfyui: W + s·(m·(W+ΔW)/(‖W‖ + ε) − W) per output row, as ComfyUI."""
    from loralab.nodes.lora import LoRALabApplyLoRA

    targets = resolve_targets(tiny.pipe.unet, "all_linear+conv")
    state, _ = _peft_merged(tiny.pipe.unet, targets, 4, 8.0, 3, use_dora=True)
    kohya = to_kohya(state, 8.0)
    lora = LabLoRA(kohya, 4, 8.0, "sd1", "dora")
    (comfy,) = LoRALabApplyLoRA().apply(tiny, lora, 0.7, 1.0, dora_norm="comfyui")
    (peft,) = LoRALabApplyLoRA().apply(tiny, lora, 0.7, 1.0)
    deltas = delta_weights(kohya)

    def weights(lp):  # views share the modules: read each one's weights while it is in use
        modules = dict(lp.pipe.unet.named_modules())
        return {name: modules[name].weight.detach().clone() for name in (TO_Q, CONV)}

    ours, theirs, base = weights(comfy), weights(peft), weights(tiny)
    for name in (TO_Q, CONV):
        key = "lora_unet_" + name.replace(".", "_")
        w = base[name]
        norm = w.flatten(1).norm(dim=1).reshape(-1, *[1] * (w.ndim - 1)) + torch.finfo(torch.float32).eps
        m = kohya[f"{key}.dora_scale"].reshape(norm.shape)
        expected = w + 0.7 * (m * (w + deltas[key].reshape(w.shape)) / norm - w)
        torch.testing.assert_close(ours[name], expected, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(theirs[name], expected, atol=1e-4)


def test_a_dora_file_in_diffusers_layout_loads_in_diffusers_for_every_target_kind(tiny, tmp_path):
    """Attention and feed-forward Linear layers, 3x3 and 1x1 convolutions and the text encoder: diffusers'
    ``load_lora_weights`` takes our diffusers-layout DoRA file, and its fused weights equal ours."""
    from loralab.core.lora_files import merged_copy, read_lora_file, to_diffusers

    unet, te = tiny.pipe.unet, tiny.pipe.text_encoder
    unet_state, _ = _peft_merged(unet, resolve_targets(unet, "all_linear+conv"), 4, 8.0, 5, use_dora=True)
    te_state, _ = _peft_merged(te, resolve_targets(te, "all_linear", text_encoder=True), 2, 2.0, 6, use_dora=True)
    kohya = {**to_kohya(unet_state, 8.0), **to_kohya(te_state, 2.0, "lora_te")}
    tensors, metadata = to_diffusers(kohya, "sd1")
    path = save_lora_file(tensors, {**kohya_metadata(4, 8.0, "sd1"), **metadata}, tmp_path / "dora.safetensors")
    back, _ = read_lora_file(path)  # and our own reader restores every part
    assert back.keys() == kohya.keys() and all(torch.equal(back[k], kohya[k]) for k in kohya)
    pipe = copy.deepcopy(tiny.pipe)
    pipe.load_lora_weights(str(path), adapter_name="dora")
    pipe.fuse_lora(lora_scale=1.0)
    ours, _ = merged_copy(tiny.pipe, kohya, 1.0, 1.0)
    kinds = set()
    for component, prefix in (("unet", "lora_unet"), ("text_encoder", "lora_te")):
        merged = dict(getattr(ours, component).named_modules())
        for name, module in getattr(pipe, component).named_modules():
            if f"{kohya_name(name, prefix)}.dora_scale" in kohya:
                fused = module.base_layer.weight if hasattr(module, "base_layer") else module.weight
                torch.testing.assert_close(fused.detach(), merged[name].weight, atol=1e-5, rtol=1e-5)
                kinds.add((component, fused.ndim, tuple(fused.shape[2:]), "attn" in name or "self_attn" in name))
    assert {(c, n, k) for c, n, k, _ in kinds} >= {("unet", 2, ()), ("unet", 4, (3, 3)), ("unet", 4, (1, 1)),
                                                   ("text_encoder", 2, ())}
    assert ("unet", 2, (), True) in kinds and ("unet", 2, (), False) in kinds  # attention and feed-forward
    assert len([k for k in kohya if k.endswith(".dora_scale")]) == sum(
        1 for component, prefix in (("unet", "lora_unet"), ("text_encoder", "lora_te"))
        for name, _ in getattr(pipe, component).named_modules() if f"{kohya_name(name, prefix)}.dora_scale" in kohya)


@pytest.mark.parametrize("preset, dropped", [
    ("all_linear+conv", ["lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_time_embedding_linear_1",
                         "lora_unet_time_embedding_linear_2"]),
    ("all_linear+conv (kohya)", []),
])
def test_saving_a_lora_kohya_would_load_in_part_warns_in_the_log_metadata_and_cost_row(tiny, output_dir, caplog,
                                                                                      preset, dropped):
    from loralab.core.lab_lora import LabLoRA
    from loralab.core.lora_files import kohya_dropped
    from loralab.nodes.lora import LoRALabSaveLoRA

    kohya = to_kohya(random_lora(tiny.pipe.unet, resolve_targets(tiny.pipe.unet, preset), 2), 2.0)
    assert kohya_dropped(kohya) == dropped
    with caplog.at_level("WARNING", logger="loralab"):
        saved = LoRALabSaveLoRA().save(LabLoRA(kohya, 2, 2.0, "sd1", "locon"), "w")
    (row,) = saved["result"][0].rows
    with safe_open(saved["ui"]["text"][0], "pt") as f:
        note = f.metadata().get("loralab_warning")
    if dropped:
        assert "kohya sd-scripts" in row["warning"] and all(name in row["warning"] for name in dropped)
        assert note == row["warning"] and row["warning"] in caplog.text
    else:
        assert "warning" not in row and note is None and not caplog.text


@pytest.mark.parametrize("rank", [None, 1])
def test_blend_works_on_the_factors_and_never_forms_the_full_update(monkeypatch, rank):
    """A LoRA's ΔW is as large as the weight it claims (out × in): Blend LoRAs, which has no model to check
    the claim against, must not form it. Blending a crafted 3000 × 3000 claim takes only its factors."""
    from loralab.core import lora_files

    g = torch.Generator().manual_seed(0)
    huge = {"lora_unet_m.lora_down.weight": torch.randn(1, 3000, generator=g),
            "lora_unet_m.lora_up.weight": torch.randn(3000, 1, generator=g), "lora_unet_m.alpha": torch.tensor(1.0)}
    small_a, small_b = kohya_pair(4, conv=True), kohya_pair(5, rank=2, conv=True)
    expected = 0.25 * delta_weights(small_a)["lora_unet_m"] + 0.75 * delta_weights(small_b)["lora_unet_m"]

    def no_full_update(*a, **k):
        raise AssertionError("blend formed ΔW")

    monkeypatch.setattr(lora_files, "delta_weights", no_full_update)
    out = lora_files.blend([huge, huge], [0.5, 0.5], rank)
    assert out["lora_unet_m.lora_up.weight"].shape == (3000, 2 if rank is None else 1)
    small = lora_files.blend([small_a, small_b], [0.25, 0.75], rank)
    monkeypatch.undo()
    if rank is None:
        torch.testing.assert_close(delta_weights(small)["lora_unet_m"], expected, atol=1e-5, rtol=1e-5)
    else:
        s = torch.linalg.svdvals(expected.flatten(1))
        error = torch.linalg.matrix_norm((delta_weights(small)["lora_unet_m"] - expected).flatten(1)) ** 2
        torch.testing.assert_close(error, (s[1:] ** 2).sum(), atol=1e-3, rtol=1e-4)  # Eckart-Young


def test_blending_loras_of_different_shapes_is_refused_by_name():
    from loralab.core.lora_files import blend

    with pytest.raises(ValueError, match=r"'lora_unet_m'.*\[6, 5\].*\[6, 7\]"):
        blend([kohya_pair(0), kohya_pair(1, in_features=7)], [0.5, 0.5])


def test_load_lora_reads_offset_only_files_and_refuses_files_without_weights(tiny, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from loralab.nodes.lora import LoRALabApplyLoRA, LoRALabLoadLoRA

    (tmp_path / "loras").mkdir()
    norm = dict(tiny.pipe.unet.named_modules())["conv_norm_out"].weight.detach().clone()
    save_file({"diffusion_model.out.0.diff": torch.full_like(norm, 0.5)},
              tmp_path / "loras" / "offsets.safetensors")
    save_file({"lora_unet_conv_in.alpha": torch.tensor(1.0)}, tmp_path / "loras" / "empty.safetensors")
    configure_host(models=(Path(tmp_path),))
    (offsets,) = LoRALabLoadLoRA().load("offsets.safetensors")
    assert offsets.rank == 0
    (applied,) = LoRALabApplyLoRA().apply(tiny, offsets, 1.0, 1.0)
    torch.testing.assert_close(applied.pipe.unet.conv_norm_out.weight, norm + 0.5)
    with pytest.raises(ValueError, match="LoRA Lab: Load LoRA: .*'empty.safetensors'.*holds no LoRA weights"):
        LoRALabLoadLoRA().load("empty.safetensors")
