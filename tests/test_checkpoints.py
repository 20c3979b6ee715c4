"""Single-file SD1.x/SDXL checkpoints and diffusers folders load offline.

Fixtures: tiny models with the real SD1.5 / SDXL block structure (so every key of the original
single-file layout exists, only smaller) written in that layout by tests/ldm_layout.py. The
shipped full-size configs are checked separately against the known parameter counts.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from ldm_layout import clip_to_ldm, openclip_to_ldm, unet_to_ldm, vae_to_ldm
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from loralab.core import checkpoints
from loralab.core.checkpoints import CONFIGS, ModelError, detect_family, load_single_file
from loralab.core.host import configure as configure_host

TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu", bos_token_id=0,
            eos_token_id=2, pad_token_id=1)
VAE = dict(block_out_channels=[32, 32, 32, 32], down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, latent_channels=4, norm_num_groups=32,
           sample_size=64)
UNET = {
    "sd1": dict(block_out_channels=[32, 32, 64, 64], layers_per_block=2, cross_attention_dim=32,
                attention_head_dim=8, norm_num_groups=32, sample_size=8,
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3),
    "sdxl": dict(block_out_channels=[32, 32, 64], layers_per_block=2, cross_attention_dim=32 + 48,
                 attention_head_dim=[2, 4, 8], transformer_layers_per_block=[1, 1, 2], norm_num_groups=32,
                 sample_size=8, use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 48,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]),
}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_tiny_checkpoint(family: str, root: Path) -> tuple[Path, Path, dict]:
    """Write a tiny checkpoint in the original single-file layout plus its (tiny) config folder.
    Returns (file, config folder, the diffusers modules it was made from)."""
    torch.manual_seed(0)
    config_dir = root / f"config-{family}"
    shutil.copytree(CONFIGS[family], config_dir)
    unet = UNet2DConditionModel(**UNET[family])
    vae = AutoencoderKL(**VAE)
    te = CLIPTextModel(CLIPTextConfig(**TEXT))
    modules = {"unet": unet, "vae": vae, "text_encoder": te}
    write_json(config_dir / "unet" / "config.json", dict(unet.config))
    write_json(config_dir / "vae" / "config.json", dict(vae.config))
    te.config.save_pretrained(config_dir / "text_encoder")
    ldm = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config)}
    if family == "sd1":
        ldm.update(clip_to_ldm(te.state_dict(), "cond_stage_model.transformer."))
    else:
        # diffusers tells the two encoders apart by width (768 / 1280 at full size): keep them different.
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**{**TEXT, "num_hidden_layers": 10, "hidden_act": "gelu",
                                                            "hidden_size": 48, "projection_dim": 48}))
        te2.config.save_pretrained(config_dir / "text_encoder_2")
        modules["text_encoder_2"] = te2
        ldm.update(clip_to_ldm(te.state_dict(), "conditioner.embedders.0.transformer."))
        ldm.update(openclip_to_ldm(te2.state_dict()))
    path = root / "checkpoints" / f"tiny-{family}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ldm.items()}, path)
    return path, config_dir, modules


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def tiny_checkpoint(request, tmp_path_factory):
    return request.param, *make_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


def test_fixture_layout_round_trips_through_diffusers_converters(tiny_checkpoint):
    family, path, _, modules = tiny_checkpoint
    from safetensors.torch import load_file

    ldm = load_file(path)
    unet = convert_ldm_unet_checkpoint(ldm, modules["unet"].config)
    assert unet.keys() == modules["unet"].state_dict().keys()
    vae = convert_ldm_vae_checkpoint(ldm, modules["vae"].config)
    expected = modules["vae"].state_dict()
    assert vae.keys() == expected.keys()
    assert all(torch.equal(vae[k].reshape(expected[k].shape), expected[k]) for k in expected)


def test_single_file_checkpoint_loads_offline_with_the_right_family_and_weights(tiny_checkpoint):
    family, path, config_dir, modules = tiny_checkpoint
    pipe, detected = load_single_file(path, torch.float32, config_dir=config_dir)
    assert detected == family
    assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")
    for name, module in modules.items():
        loaded = getattr(pipe, name).state_dict()
        for key, value in module.state_dict().items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=f"{name}.{key}")
    if family == "sdxl":
        assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_checkpoints_are_listed_and_generate_by_name(tiny_checkpoint, monkeypatch):
    from loralab.core.generate import GenerateSettings, generate
    from loralab.core.pipeline import load_pipeline, model_choices
    from loralab.core.prompts import Prompt
    from loralab.core.samplers import SamplerSpec

    family, path, config_dir, _ = tiny_checkpoint
    configure_host(models=(Path(path.parent.parent),))
    monkeypatch.setitem(checkpoints.CONFIGS, family, config_dir)
    assert path.name in model_choices()
    lp = load_pipeline(path.name, dtype="fp32", device="cpu")
    assert lp.family == family and lp.native_size == 64
    images, _ = generate(lp, SamplerSpec("euler"), [Prompt("a cat")], GenerateSettings(steps=2, width=64, height=64))
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(images).all()


def test_a_diffusers_folder_is_listed_and_loads(tmp_path, monkeypatch):
    from loralab.core.pipeline import EMBEDDED, load_pipeline, model_choices

    shutil.copytree(EMBEDDED["embedded: tiny-sd"], tmp_path / "diffusers" / "my-model")
    configure_host(models=(Path(tmp_path),))
    assert "diffusers: diffusers/my-model" in model_choices()
    assert load_pipeline("diffusers: diffusers/my-model", "fp32", "cpu").family == "sd1"


def test_pickled_checkpoints_load_only_without_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": Evil()}}, evil)
    with pytest.raises(ModelError, match="does not load with weights_only=True"):
        checkpoints.read_keys(evil)
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {checkpoints.SD1_KEY: torch.zeros(3, 2)}}, plain)
    assert detect_family(checkpoints.read_keys(plain)) == "sd1"


@pytest.mark.parametrize("keys,message", [
    ({checkpoints.SD1_KEY: (1,), "v_pred": ()}, "v-prediction"),
    ({checkpoints.SD2_KEY: (320, 1024), checkpoints.SD1_KEY: (1,)}, "2.x"),
    ({checkpoints.INPAINT_KEY: (320, 9, 3, 3), checkpoints.SD1_KEY: (1,)}, "inpainting"),
    ({checkpoints.SDXL_REFINER_KEY: (1,)}, "refiner"),
    ({"transformer.blocks.0.weight": (1,)}, "not a Stable Diffusion 1.x or SDXL"),
])
def test_unsupported_checkpoints_get_a_clear_message(keys, message):
    with pytest.raises(ModelError, match=message):
        detect_family(keys, "checkpoint 'x.safetensors'")


def test_missing_or_corrupt_files_are_named(tmp_path):
    with pytest.raises(ModelError, match="nope.safetensors' does not exist"):
        checkpoints.read_keys(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ModelError, match="bad.safetensors' is not a readable safetensors file"):
        checkpoints.read_keys(bad)


@pytest.mark.parametrize("family,counts", [
    ("sd1", {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}),
    ("sdxl", {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
              "text_encoder_2": 694_659_840}),
])
def test_shipped_full_size_configs_give_the_published_parameter_counts(family, counts):
    root = CONFIGS[family]
    with torch.device("meta"):
        built = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
                 "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
                 "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))}
        if family == "sdxl":
            te2_config = CLIPTextConfig.from_pretrained(root / "text_encoder_2")
            built["text_encoder_2"] = CLIPTextModelWithProjection(te2_config)
    assert {k: sum(p.numel() for p in m.parameters()) for k, m in built.items()} == counts


def test_a_truncated_checkpoint_is_refused_not_half_loaded(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file

    family, path, config_dir, _ = tiny_checkpoint
    state = {k: v for k, v in load_file(path).items() if ".layers.1." not in k}
    cut = tmp_path / "cut.safetensors"
    save_file(state, cut)
    with pytest.raises(ModelError, match="cut.safetensors' is incomplete: .* text_encoder weights are missing"):
        load_single_file(cut, torch.float32, config_dir=config_dir)
