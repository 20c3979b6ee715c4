"""Block-wise LoRA settings: ranks, alphas and LR weights per UNet block, named as kohya sd-scripts names them."""

import copy
import json
import re

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from test_checkpoints import UNET
from test_lora_config import reference_unet

from loralab.core.host import configure as configure_host
from loralab.core.ldm_names import unet_ldm_keys
from loralab.core.lora import (
    LoRAConfigSpec,
    _patterns,
    block_of,
    block_settings,
    block_targets,
    fit_budget,
    kohya_alpha,
    kohya_network_args,
    lora_parameter_count,
    parse_blocks,
    resolve_targets,
)
from loralab.core.noise import NoiseStrategy
from loralab.core.train import ADAPTER, TrainSpec, _adapters, encode_dataset, train_from_images, train_lora

# kohya sd-scripts networks/lora.py get_block_index, restated: SD1 reads diffusers-style names, SDXL the
# original model's (input_blocks.N, middle_block.N, output_blocks.N). Slots: SD1 0..11 = IN00..IN11,
# 12 = MID, 13..24 = OUT00..OUT11; SDXL 0 = embeddings, 1..9 = IN00..IN08, 10..12 = MID, 13..21 = OUT00..OUT08.
RE_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def kohya_sd1_block(lora_name: str) -> str | None:
    m = RE_UPDOWN.search(lora_name)
    if m:
        i, kind, j = int(m[2]), m[3], int(m[4])
        idx = 3 * i + 2 if kind in ("upsamplers", "downsamplers") else 3 * i + j
        index = 1 + idx if m[1] == "down" else 12 + 1 + idx
    elif "mid_block_" in lora_name:
        index = 12
    else:
        return None
    return "MID" if index == 12 else f"IN{index:02d}" if index < 12 else f"OUT{index - 13:02d}"


def kohya_sdxl_block(lora_name: str) -> str | None:
    name = lora_name[len("lora_unet_"):]
    if name.startswith("input_blocks_"):
        index = 1 + int(name.split("_")[2])
    elif name.startswith("middle_block_"):
        index = 10 + int(name.split("_")[2])
    elif name.startswith("output_blocks_"):
        index = 13 + int(name.split("_")[2])
    else:
        return None  # time_embed, label_emb (slot 0), out (slot 22)
    if index == 1:
        return None  # IN00 is conv_in: no block
    return f"IN{index - 1:02d}" if index < 10 else "MID" if index < 13 else f"OUT{index - 13:02d}"


def unets(tiny):
    """The embedded tiny SD1 (one layer per block), the tiny SD1/SDXL fixtures of test_checkpoints and the
    real SD1.5/SDXL architectures (empty weights)."""
    torch.manual_seed(0)
    return {"tiny-sd": tiny.pipe.unet, "tiny-sd1": _unet(UNET["sd1"]),
            "tiny-sdxl": _unet(UNET["sdxl"]), "sd1": reference_unet("sd1"), "sdxl": reference_unet("sdxl")}


def _unet(config):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config)


def test_block_of_is_kohyas_block_index_for_every_unet_module(tiny):
    models = unets(tiny)
    for label, unet in models.items():
        keys = list(unet.state_dict())
        ldm = unet_ldm_keys(keys, unet.config)
        for key in keys:
            module = key.rsplit(".", 1)[0]
            assert block_of(module) == kohya_sd1_block("lora_unet_" + module.replace(".", "_")), (label, key)
            if unet.config.addition_embed_type == "text_time":  # SDXL: kohya reads the original names
                assert block_of(module) == kohya_sdxl_block("lora_unet_" + ldm[key].rsplit(".", 1)[0]
                                                            .replace(".", "_")), (label, key, ldm[key])
    blocks = {label: sorted({block_of(n) for n, _ in unet.named_modules()} - {None}) for label, unet in
              models.items()}
    assert blocks["sd1"] == sorted([f"IN{i:02d}" for i in range(1, 12)] + ["MID"] + [f"OUT{i:02d}" for i in range(12)])
    assert blocks["sdxl"] == sorted([f"IN{i:02d}" for i in range(1, 9)] + ["MID"] + [f"OUT{i:02d}" for i in range(9)])


@pytest.mark.parametrize("module, block", [
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "IN01"),
    ("down_blocks.0.resnets.1.conv1", "IN02"),
    ("down_blocks.0.downsamplers.0.conv", "IN03"),
    ("down_blocks.1.attentions.1.proj_out", "IN05"),
    ("down_blocks.3.resnets.1.conv2", "IN11"),
    ("mid_block.attentions.0.transformer_blocks.0.ff.net.2", "MID"),
    ("mid_block.resnets.1.time_emb_proj", "MID"),
    ("up_blocks.0.resnets.2.conv1", "OUT02"),
    ("up_blocks.0.upsamplers.0.conv", "OUT02"),
    ("up_blocks.1.attentions.0.proj_in", "OUT03"),
    ("up_blocks.2.upsamplers.0.conv", "OUT08"),
    ("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0", "OUT11"),
    ("conv_in", None), ("time_embedding.linear_1", None), ("conv_out", None), ("add_embedding.linear_2", None),
    ("text_model.encoder.layers.0.self_attn.q_proj", None),
])
def test_block_of_real_sd15_names(module, block):
    assert block_of(module) == block


def test_groups_and_names_resolve_with_names_overriding_groups():
    config = LoRAConfigSpec(rank=4, alpha=2.0, block_ranks="down=2, in4=6, MID=0, up=8",
                            block_alphas="up=16, OUT00=1", block_lr_weights="Down=0.5, out01=0")
    targets = ["conv_in", "down_blocks.0.resnets.0.conv1", "down_blocks.1.resnets.0.conv1", "mid_block.resnets.0.conv1",
               "up_blocks.0.resnets.0.conv1", "up_blocks.0.resnets.1.conv1", "up_blocks.0.resnets.2.conv1"]
    ranks, alphas, weights = block_settings(config, targets)
    assert list(ranks.values()) == [4, 2, 6, 0, 8, 0, 8]  # OUT01 has LR weight 0: no adapter, as kohya
    assert list(alphas.values()) == [2.0, 2.0, 2.0, 2.0, 1.0, 16.0, 16.0]
    assert list(weights.values()) == [1.0, 0.5, 0.5, 1.0, 1.0, 0.0, 1.0]


def test_peft_patterns_match_each_module_exactly():
    """peft takes the first pattern key matching ``(.*\\.)?(key)$``; every target must get its own value
    and a module outside the patterns the base (real SD1.5 names, many values)."""
    from peft.utils.other import get_pattern_key

    unet = reference_unet("sd1")
    targets = resolve_targets(unet, "all_linear+conv")
    values = {t: 1 + i % 7 for i, t in enumerate(targets) if i % 3}
    keys = _patterns(values, 1)
    assert len(keys) == 6
    for name, _ in unet.named_modules():
        key = get_pattern_key(list(keys), name)
        assert keys.get(key, 1) == values.get(name, 1), name


def peft_count(unet, ranks: dict[str, int]) -> int:
    """peft's own trainable count: one injection per rank, each on a fresh copy."""
    total = 0
    for r in set(ranks.values()):
        modules = [m for m, rank in ranks.items() if rank == r]
        wrapped = inject_adapter_in_model(LoraConfig(r=r, lora_alpha=r, target_modules=modules), copy.deepcopy(unet))
        total += sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n)
    return total


@pytest.fixture(scope="module")
def data(tiny):
    return encode_dataset(tiny.pipe, torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0)),
                          ["a red square", "a blue circle"])


def test_layers_get_their_blocks_rank_and_scale_and_counts_equal_peft(tiny, data):
    unet = tiny.pipe.unet  # blocks IN01, IN03, IN04, MID, OUT00..OUT04
    config = LoRAConfigSpec(rank=4, alpha=4.0, targets="all_linear+conv", block_ranks="down=2, mid=8, IN04=3, OUT04=0",
                            block_alphas="up=1, MID=2")
    targets = resolve_targets(unet, "all_linear+conv")
    ranks, alphas, _ = block_settings(config, targets)
    kept = {t: r for t, r in ranks.items() if r}
    assert set(targets) - set(kept) == {t for t in targets if block_of(t) == "OUT04"} != set()
    with _adapters(tiny.pipe, config, 0) as models:
        model, adapted = models["unet"]
        assert adapted == list(kept)
        for t in targets:
            layer = model.get_submodule(t)
            if t in kept:
                assert layer.r[ADAPTER] == kept[t] and layer.scaling[ADAPTER] == pytest.approx(alphas[t] / kept[t])
            else:
                assert not isinstance(layer, BaseTunerLayer)  # a rank-0 block gets no adapter
        injected = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    count = lora_parameter_count(unet, list(kept), kept)
    assert count == injected == peft_count(unet, kept)
    result = train_lora(tiny.pipe, data, NoiseStrategy(), config, TrainSpec(steps=1, batch_size=2))
    assert result.trainable_parameters == count
    assert {k.rsplit(".lora_", 1)[0] for k in result.unet_state} == set(kept)
    assert all(v.shape[0] == kept[k.rsplit(".lora_", 1)[0]] for k, v in result.unet_state.items()
               if k.endswith("lora_A.weight"))


def test_lr_weights_reach_the_optimizer_and_scale_the_step(tiny, data, monkeypatch):
    """Plain SGD's first step moves B by -lr·w·grad (A's gradient is 0 while B is 0): a block's B after
    one step is w times the unweighted run's; LR weight 0 leaves the block without an adapter."""
    import loralab.core.train as train

    seen = []
    original = train._optimizer
    monkeypatch.setattr(train, "_optimizer", lambda params, *a: seen.append(params) or original(params, *a))
    spec = TrainSpec(steps=1, batch_size=2, lr=1e-2, optimizer="sgd", beta1=0.0, weight_decay=0.0, max_grad_norm=0.0)
    base = LoRAConfigSpec(rank=2, alpha=2.0, targets="attention")
    weighted = LoRAConfigSpec(rank=2, alpha=2.0, targets="attention", block_lr_weights="down=0.5, OUT04=3, mid=0")
    plain = train_lora(tiny.pipe, data, NoiseStrategy(), base, spec)
    result = train_lora(tiny.pipe, data, NoiseStrategy(), weighted, spec)
    assert isinstance(seen[0], list) and not isinstance(seen[0][0], dict)  # no block weights: params as before
    groups = seen[1]
    assert [g["lr"] for g in groups] == [1e-2, 5e-3, 3e-2]  # the base rate first (the recorded LR curve)
    assert result.lrs == plain.lrs
    assert len({id(p) for g in groups for p in g["params"]}) == sum(len(g["params"]) for g in groups)  # disjoint
    assert sum(p.numel() for g in groups for p in g["params"]) == result.trainable_parameters
    # The mid block comes last in diffusers' module order: leaving it out changes no other module's init.
    weights = {"IN01": 0.5, "OUT03": 1.0, "OUT04": 3.0}
    for key, value in plain.unet_state.items():
        module = key.rsplit(".lora_", 1)[0]
        if block_of(module) == "MID":
            assert key not in result.unet_state  # frozen: no adapter
        elif key.endswith("lora_B.weight"):
            assert value.abs().max() > 0
            torch.testing.assert_close(result.unet_state[key], weights[block_of(module)] * value)
        else:
            assert torch.equal(result.unet_state[key], value)
    outside = {k for k in plain.unet_state if block_of(k.rsplit(".lora_", 1)[0]) != "MID"}
    assert set(result.unet_state) == outside


@pytest.mark.parametrize("variant", ["lora", "rslora"])
def test_the_file_holds_each_modules_alpha_and_merges_as_trained(tiny, variant, tmp_path):
    from loralab.core.lora_files import merged_copy, read_lora_file, save_lora_file
    from loralab.nodes.lora import LoRALabLoadLoRA

    config = LoRAConfigSpec(rank=4, alpha=4.0, targets="attention", variant=variant, block_ranks="up=2, MID=8",
                            block_alphas="down=1, mid=16", block_lr_weights="IN04=2")
    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    lora = train_from_images(tiny, images, ["a red square"], NoiseStrategy(), config,
                             TrainSpec(steps=2, batch_size=2, lr=1e-2))
    targets = resolve_targets(tiny.pipe.unet, "attention")
    ranks, alphas, _ = block_settings(config, targets)
    assert {r for r in ranks.values()} == {2, 4, 8}
    for t in targets:
        name = "lora_unet_" + t.replace(".", "_")
        assert lora.tensors[f"{name}.lora_down.weight"].shape[0] == ranks[t]
        assert float(lora.tensors[f"{name}.alpha"]) == pytest.approx(kohya_alpha(alphas[t], ranks[t], variant))
    (tmp_path / "loras").mkdir()
    path = save_lora_file(lora.tensors, lora.metadata, tmp_path / "loras" / "block.safetensors")
    tensors, meta = read_lora_file(path)
    configure_host(models=(tmp_path,))
    (loaded,) = LoRALabLoadLoRA().load("block.safetensors")  # the rows show the largest rank, its alpha
    mid = next(t for t in targets if ranks[t] == 8)
    assert (loaded.rank, loaded.alpha) == (8, pytest.approx(kohya_alpha(alphas[mid], 8, variant)))
    assert tensors.keys() == lora.tensors.keys() and all(torch.equal(tensors[k], lora.tensors[k]) for k in tensors)
    args = json.loads(meta["ss_network_args"])
    assert args["block_dims"].split(",")[12] == "8" and args["up_lr_weight"] == ",".join(["1"] * 12)
    assert args["down_lr_weight"].split(",")[4] == "2" and "conv_block_dims" not in args
    merged, unmatched = merged_copy(tiny.pipe, tensors, 1.0, 1.0)
    assert not unmatched
    base, after = dict(tiny.pipe.unet.named_modules()), dict(merged.unet.named_modules())
    for t in targets:  # the trained scale, alpha/r (rsLoRA alpha/sqrt r), from the config, not the file
        name = "lora_unet_" + t.replace(".", "_")
        scale = alphas[t] / (ranks[t] ** 0.5 if variant == "rslora" else ranks[t])
        delta = scale * tensors[f"{name}.lora_up.weight"] @ tensors[f"{name}.lora_down.weight"]
        torch.testing.assert_close(after[t].weight - base[t].weight, delta, atol=1e-6, rtol=1e-4)


def test_kohya_network_args_fill_kohyas_slots():
    config = LoRAConfigSpec(rank=4, alpha=1.0, block_ranks="down=2, OUT11=16", block_alphas="mid=8",
                            block_lr_weights="up=0.5, IN01=0")
    sd1 = kohya_network_args(config, "sd1")
    assert sd1["block_dims"] == ",".join(["4", "0"] + ["2"] * 10 + ["4"] + ["4"] * 11 + ["16"])
    assert sd1["block_alphas"] == ",".join(["1"] * 12 + ["8"] + ["1"] * 12)
    assert (sd1["down_lr_weight"], sd1["mid_lr_weight"], sd1["up_lr_weight"]) == (
        ",".join(["1", "0"] + ["1"] * 10), "1", ",".join(["0.5"] * 12))
    sdxl = kohya_network_args(config, "sdxl")
    assert sdxl["block_dims"] == ",".join(["4", "4", "0"] + ["2"] * 7 + ["4"] * 3 + ["4"] * 9 + ["4"])
    assert len(sdxl["block_alphas"].split(",")) == 23 and sdxl["mid_lr_weight"] == "1,1,1"
    assert kohya_network_args(LoRAConfigSpec(), "sd1") == {}
    unet = reference_unet("sd1")
    convs = kohya_network_args(config, "sd1", unet, resolve_targets(unet, "all_linear+conv"))
    assert convs["conv_block_dims"] == convs["block_dims"]


def test_a_budget_leaves_out_blocks_with_lr_weight_zero_and_refuses_block_ranks(tiny):
    unet = tiny.pipe.unet
    targets = resolve_targets(unet, "attention")
    kept = [t for t in targets if not block_of(t).startswith("OUT")]
    budget = 5 * lora_parameter_count(unet, kept, 1)
    fitted = fit_budget(tiny.pipe, LoRAConfigSpec(rank=1, parameter_budget=budget, block_lr_weights="up=0"))
    assert fitted.rank == 5
    with pytest.raises(ValueError, match="input 'block_ranks'.*parameter_budget"):
        LoRAConfigSpec(parameter_budget=1000, block_ranks="up=4")


@pytest.mark.parametrize("field, text, message", [
    ("block_ranks", "IN12=4", "'IN12=4' is not key=value with a key among down, mid, up, IN01..IN11"),
    ("block_ranks", "IN00=4", "'IN00=4' is not key=value"),
    ("block_alphas", "left=2", "'left=2' is not key=value"),
    ("block_lr_weights", "down 0.5", "'down 0.5' is not key=value"),
    ("block_ranks", "down=1.5", "down='1.5': the rank must be a whole number >= 0"),
    ("block_ranks", "up=-1", "up='-1': the rank must be a whole number"),
    ("block_alphas", "mid=0", "mid='0': the alpha must be a number > 0"),
    ("block_lr_weights", "up=x", "up='x': the LR weight must be a number >= 0"),
    ("block_lr_weights", "up=inf", "up='inf': the LR weight must be a number >= 0"),
    ("block_ranks", "OUT1=2, out01=3", "OUT01 is given twice"),
])
def test_bad_block_settings_are_refused_naming_field_key_and_valid_keys(registry, field, text, message):
    with pytest.raises(ValueError, match=f"input '{field}': " + re.escape(message)):
        LoRAConfigSpec(**{field: text})
    with pytest.raises(ValueError, match="LoRA Lab: LoRA Config: input '" + field):
        registry["LoRALabLoRAConfig"]().build(4, 4.0, "attention", **{field: text})
    assert parse_blocks(field, " ,, ") == {}


def test_a_block_the_model_lacks_is_refused_at_training_naming_the_family(tiny, data):
    sdxl = _unet(UNET["sdxl"])
    with pytest.raises(ValueError, match="input 'block_ranks': the SDXL UNet has no block IN10, OUT09; its blocks "
                                         "are IN01, .*, OUT08"):
        block_targets(LoRAConfigSpec(block_ranks="IN10=2, mid=4, OUT09=1"), sdxl, resolve_targets(sdxl, "attention"))
    with pytest.raises(ValueError, match="input 'block_lr_weights': the SD1 UNet has no block IN02"):
        train_lora(tiny.pipe, data, NoiseStrategy(), LoRAConfigSpec(block_lr_weights="IN02=2"), TrainSpec(steps=1))
    with pytest.raises(ValueError, match="leave no targeted UNet module with an adapter"):
        train_lora(tiny.pipe, data, NoiseStrategy(), LoRAConfigSpec(block_ranks="down=0, mid=0, up=0"),
                   TrainSpec(steps=1))
    assert not any(isinstance(m, BaseTunerLayer) for m in tiny.pipe.unet.modules())  # the refused run left none


def test_lora_config_node_passes_block_settings(registry):
    (config,) = registry["LoRALabLoRAConfig"]().build(4, 4.0, "attention", block_ranks="up=8",
                                                      block_alphas="mid=2", block_lr_weights="down=0.5")
    assert (config.block_ranks, config.block_alphas, config.block_lr_weights) == ("up=8", "mid=2", "down=0.5")
    inputs = registry["LoRALabLoRAConfig"].INPUT_TYPES()["optional"]
    assert all(inputs[name][0] == "STRING" and inputs[name][1]["default"] == "" for name in
               ("block_ranks", "block_alphas", "block_lr_weights"))
