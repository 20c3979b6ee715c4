"""SDXL base + refiner (ensemble of experts) in Generate, against diffusers' own two-pipeline call.

Models: 'embedded: world-teacher' (SDXL architecture) as the base and 'embedded: tiny-sdxl-refiner'
(random weights, the real refiner's layout at small widths, on the world's VAE). The reference is
diffusers' documented ensemble: StableDiffusionXLPipeline(denoising_end=f, output_type="latent"),
then StableDiffusionXLImg2ImgPipeline(denoising_start=f, image=latents). With Euler and a linspace
schedule whose timesteps are integers (999, 888, ..., 0 at 10 steps) diffusers' sigmas are
KSampler's "normal" ones, so both must give the same image up to float rounding. One convention
differs and is aligned in the reference: diffusers starts a linspace schedule from σ_max·ε,
KSampler from √(1 + σ_max²)·ε (its max_denoise), so diffusers is given KSampler's start latent.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from loralab.core.checkpoints import CONFIGS, MODELS_DIR
from loralab.core.generate import GenerateSettings, Refiner, generate
from loralab.core.pipeline import load_pipeline
from loralab.core.prompts import Prompt
from loralab.core.samplers import SamplerSpec

PROMPT = "a red circle on a blue square"
SETTINGS = GenerateSettings(steps=10, cfg=5.0, seed=11, width=64, height=64)


@pytest.fixture(scope="module")
def base():
    return load_pipeline("embedded: world-teacher", dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def refiner():
    return load_pipeline("embedded: tiny-sdxl-refiner", dtype="fp32", device="cpu")


def run(base, refiner=None, fraction=0.2, sampler="euler", **settings):
    s = GenerateSettings(**{**SETTINGS.__dict__, **settings})
    return generate(base, SamplerSpec(sampler), [Prompt(PROMPT)], s,
                    None if refiner is None else Refiner(refiner, fraction))


def test_the_embedded_refiner_is_loaded_as_diffusers_refiner_pipeline(refiner):
    pipe = refiner.pipe
    assert refiner.family == "sdxl_refiner" and type(pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert pipe.config.requires_aesthetics_score and not pipe.config.force_zeros_for_empty_prompt
    assert pipe.text_encoder is None and pipe.tokenizer is None and pipe.tokenizer_2.pad_token == "!"
    # the pooled text embedding + 5 time ids (size, crop, aesthetic score) of addition_time_embed_dim each
    unet = pipe.unet.config
    assert unet.addition_time_embed_dim == 256
    assert pipe.unet.add_embedding.linear_1.in_features == pipe.text_encoder_2.config.projection_dim + 5 * 256
    assert refiner.native_size == 64


def test_refine_fraction_zero_is_the_base_alone(base, refiner):
    alone, rows = run(base)
    refined, refined_rows = run(base, refiner, 0.0)
    assert torch.equal(alone, refined)
    assert "refiner" not in refined_rows.rows[0]


def test_generate_with_the_refiner_runs_end_to_end_through_the_node(base, refiner):
    from loralab.nodes.sample import LoRALabGenerate

    node = LoRALabGenerate()
    images, cost = node.generate(base, SamplerSpec("dpmpp_2m_sde"), [Prompt(PROMPT), Prompt("a green triangle")],
                                 "", 4, 5.0, 3, 0, 0, 2, refiner=refiner, refine_fraction=0.5)
    assert images.shape == (4, 64, 64, 3) and torch.isfinite(images).all()
    assert 0 <= images.min() and images.max() <= 1
    assert {(r["refiner"], r["refine_fraction"]) for r in cost.rows} == {("embedded: tiny-sdxl-refiner", 0.5)}
    alone, _ = node.generate(base, SamplerSpec("dpmpp_2m_sde"), [Prompt(PROMPT), Prompt("a green triangle")],
                             "", 4, 5.0, 3, 0, 0, 2)
    assert (images - alone).abs().max() > 1e-3, "the refiner changed the images"


@pytest.mark.parametrize("fraction", [0.2, 0.45])
def test_the_handoff_equals_diffusers_base_then_refiner_ensemble(base, refiner, fraction):
    ours, _ = run(base, refiner, fraction)

    def linspace(lp):  # diffusers' sigmas equal to KSampler's "normal" at integer timesteps
        return lp.with_scheduler(EulerDiscreteScheduler.from_config(lp.pipe.scheduler.config,
                                                                    timestep_spacing="linspace"))

    base_pipe, refiner_pipe = linspace(base), linspace(refiner)
    s = SETTINGS
    base_pipe.scheduler.set_timesteps(s.steps)
    sigma_max = base_pipe.scheduler.sigmas[0]
    # diffusers multiplies given latents by σ_max (init_noise_sigma): this starts it at KSampler's latent
    start = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(s.seed)) * (1 + sigma_max**2).sqrt() \
        / sigma_max
    with torch.no_grad():
        latents = base_pipe(PROMPT, latents=start, num_inference_steps=s.steps, denoising_end=1 - fraction,
                            guidance_scale=s.cfg, width=s.width, height=s.height, output_type="latent").images
        images = refiner_pipe(PROMPT, image=latents, num_inference_steps=s.steps, denoising_start=1 - fraction,
                              guidance_scale=s.cfg, output_type="pt",
                              generator=torch.Generator().manual_seed(s.seed)).images
    reference = images.permute(0, 2, 3, 1).float()
    torch.testing.assert_close(ours, reference, rtol=0, atol=2e-4)
    # the same split as diffusers: the refiner ran steps below timestep 1000 * fraction
    alone, _ = run(base)
    assert (ours - alone).abs().max() > 1e-3


def test_img2img_handoff_equals_diffusers_img2img_then_refiner(base, refiner):
    """Img2Img with a refiner = diffusers' SDXL img2img (strength, denoising_end) on the base, then the
    refiner (denoising_start). KSampler's denoise d over N steps is the last N of int(N/d) steps;
    diffusers' strength d over M steps the last int(M·d) of M: N 5, d 0.5 and M 10 are one schedule.
    The init image goes in as latents (diffusers would sample the VAE posterior, we take its mode)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from loralab.core.generate import encode, img2img

    init = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    s = GenerateSettings(**{**SETTINGS.__dict__, "steps": 5})
    ours, rows = img2img(base, SamplerSpec("euler"), [Prompt(PROMPT)], s, init, 0.5, refiner=Refiner(refiner, 0.2))
    assert {(r["refiner"], r["strength"]) for r in rows.rows} == {("embedded: tiny-sdxl-refiner", 0.5)}

    def linspace(pipe):
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
        return pipe

    base_pipe = linspace(StableDiffusionXLImg2ImgPipeline(**base.pipe.components, requires_aesthetics_score=False))
    refiner_pipe = linspace(StableDiffusionXLImg2ImgPipeline(**refiner.pipe.components, requires_aesthetics_score=True,
                                                             force_zeros_for_empty_prompt=False))
    with torch.no_grad():
        latents = base_pipe(PROMPT, image=encode(base, init), strength=0.5, num_inference_steps=10,
                            denoising_end=0.8, guidance_scale=s.cfg, output_type="latent",
                            generator=torch.Generator().manual_seed(s.seed)).images
        images = refiner_pipe(PROMPT, image=latents, num_inference_steps=10, denoising_start=0.8,
                              guidance_scale=s.cfg, output_type="pt").images
    torch.testing.assert_close(ours, images.permute(0, 2, 3, 1).float(), rtol=0, atol=2e-4)
    alone, _ = img2img(base, SamplerSpec("euler"), [Prompt(PROMPT)], s, init, 0.5)
    assert (ours - alone).abs().max() > 1e-3


def test_img2img_below_the_cutoff_is_the_refiner_alone_through_the_node(base, refiner):
    """Strength 0.15 starts under the refiner's 0.2 cutoff: the refiner runs every step, as Img2Img
    with the refiner as its pipeline; a refiner without an SDXL base is refused, naming the input."""
    from loralab.nodes.sample import LoRALabImg2Img

    node, init = LoRALabImg2Img(), torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(6))
    args = (SamplerSpec("euler"), [Prompt(PROMPT)], init, 0.15, "", 10, 5.0, 3, 1)
    handed, _ = node.img2img(base, *args, refiner=refiner, refine_fraction=0.2)
    alone, _ = node.img2img(refiner, *args)
    torch.testing.assert_close(handed, alone, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="Img2Img: input 'pipeline'.*SDXL base"):
        node.img2img(refiner, *args, refiner=refiner)


def test_refine_fraction_one_is_the_refiner_from_pure_noise(base, refiner):
    from loralab.core import ksampling
    from loralab.core.samplers import noise_levels, sigmas_for

    levels = noise_levels(base.pipe.scheduler.config)
    sigmas = sigmas_for(SamplerSpec("euler"), levels, 10)
    assert ksampling.handoff_step(levels, sigmas, Refiner(refiner, 1.0).cutoff(1000)) == 0
    assert ksampling.handoff_step(levels, sigmas, Refiner(refiner, 0.2).cutoff(1000)) == 8  # t 999 ... 222
    images, _ = run(base, refiner, 1.0, steps=3)
    assert torch.isfinite(images).all()


def _real_and_tiny(root: Path, tiny):
    """(full-size modules on the meta device from the shipped refiner configs, the tiny ones)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
    return {"unet": (unet, tiny.pipe.unet), "text_encoder_2": (te2, tiny.pipe.text_encoder_2)}


def test_the_tiny_refiner_has_the_real_refiners_parameter_names_at_smaller_widths(refiner):
    for name, (real, tiny) in _real_and_tiny(CONFIGS["sdxl_refiner"], refiner).items():
        real_state, tiny_state = real.state_dict(), tiny.state_dict()
        assert tiny_state.keys() == real_state.keys(), name
        for key, value in real_state.items():
            small = tiny_state[key].shape
            assert len(small) == len(value.shape), f"{name}.{key}"
            if len(small) == 4:  # convolutions: the kernel sizes are the real ones, only channels shrink
                assert small[2:] == value.shape[2:], f"{name}.{key}"
    assert tuple(refiner.pipe.unet.config.down_block_types) == \
        ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")


def test_the_shipped_refiner_config_gives_the_published_parameter_counts():
    root = CONFIGS["sdxl_refiner"]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
    assert sum(p.numel() for p in unet.parameters()) == 2_259_526_660
    assert sum(p.numel() for p in te2.parameters()) == 694_659_840  # OpenCLIP-bigG, as the base's second
    assert unet.add_embedding.linear_1.in_features == 1280 + 5 * 256  # pooled text + 5 time ids
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLImg2ImgPipeline" and index["requires_aesthetics_score"]
    assert index["text_encoder"] == [None, None] and index["tokenizer"] == [None, None]


@pytest.fixture(scope="module")
def refiner_checkpoint(refiner, tmp_path_factory):
    """The tiny refiner written as a single-file checkpoint in the original (SGM) layout, with a
    config folder like the shipped one holding the tiny widths."""
    from ldm_layout import openclip_to_ldm, unet_to_ldm, vae_to_ldm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("refiner")
    config_dir = root / "config"
    shutil.copytree(CONFIGS["sdxl_refiner"], config_dir)
    pipe = refiner.pipe
    for name in ("unet", "vae"):
        (config_dir / name / "config.json").write_text(json.dumps(dict(getattr(pipe, name).config), default=str))
    pipe.text_encoder_2.config.save_pretrained(config_dir / "text_encoder_2")
    ldm = {**unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
           **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
           **openclip_to_ldm(pipe.text_encoder_2.state_dict(), "conditioner.embedders.0.model.")}
    path = root / "checkpoints" / "tiny_refiner.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in ldm.items()}, path)
    return path, config_dir


def test_a_single_file_refiner_loads_with_the_shipped_refiner_config(refiner, refiner_checkpoint, monkeypatch):
    from loralab.core import checkpoints
    from loralab.core.checkpoints import load_single_file
    from loralab.core.host import configure as configure_host

    path, config_dir = refiner_checkpoint
    pipe, family = load_single_file(path, torch.float32, config_dir=config_dir)
    assert family == "sdxl_refiner" and type(pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert pipe.text_encoder is None and pipe.config.requires_aesthetics_score
    for name in ("unet", "vae", "text_encoder_2"):
        expected = getattr(refiner.pipe, name).state_dict()
        loaded = getattr(pipe, name).state_dict()
        for key, value in expected.items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=f"{name}.{key}")
    # by name through Load Pipeline's loader, with the shipped config folder as the family's config
    configure_host(models=(path.parent.parent,))
    monkeypatch.setitem(checkpoints.CONFIGS, "sdxl_refiner", config_dir)
    lp = load_pipeline(path.name, dtype="fp32", device="cpu")
    assert lp.family == "sdxl_refiner"


def test_a_diffusers_refiner_folder_loads(refiner, tmp_path):
    from loralab.core.host import configure as configure_host

    refiner.pipe.save_pretrained(tmp_path / "diffusers" / "refiner")
    configure_host(models=(tmp_path,))
    lp = load_pipeline("diffusers: diffusers/refiner", dtype="fp32", device="cpu")
    assert lp.family == "sdxl_refiner"


def test_wrong_models_are_named_with_the_node_and_input(base, refiner, tiny):
    from loralab.nodes.sample import LoRALabGenerate

    def node(pipeline, **kw):
        return LoRALabGenerate().generate(pipeline, SamplerSpec("euler"), [Prompt(PROMPT)], "", 2, 5.0, 0, 64, 64, 1,
                                          **kw)

    with pytest.raises(ValueError, match=r"Generate: input 'refiner': 'embedded: tiny-sd' is not an SDXL refiner "
                                         r"\(it is sd1\)"):
        node(base, refiner=tiny)
    with pytest.raises(ValueError, match=r"Generate: input 'refiner': 'embedded: world-teacher' is not an SDXL "
                                         r"refiner \(it is sdxl\)"):
        node(base, refiner=base)
    with pytest.raises(ValueError, match="Generate: input 'pipeline': 'embedded: tiny-sd' is sd1, but the "
                                         "connected refiner finishes SDXL base images"):
        node(tiny, refiner=refiner)
    with pytest.raises(ValueError, match="Generate: input 'pipeline': 'embedded: tiny-sdxl-refiner' is an SDXL "
                                         "refiner.*connect .* to 'refiner'"):
        node(refiner)
    with pytest.raises(ValueError, match="Generate: input 'refiner': width 48 is not a multiple of 32"):
        LoRALabGenerate().generate(base, SamplerSpec("euler"), [Prompt(PROMPT)], "", 2, 5.0, 0, 48, 48, 1,
                                   refiner=refiner)
    with pytest.raises(ValueError, match="Generate: input 'refine_fraction': 1.5 is not in 0..1"):
        node(base, refiner=refiner, refine_fraction=1.5)


def test_img2img_takes_the_refiner_on_its_own(refiner):
    from loralab.nodes.sample import LoRALabImg2Img

    image = torch.rand(1, 64, 64, 3)
    out, _ = LoRALabImg2Img().img2img(refiner, SamplerSpec("euler"), [Prompt(PROMPT)], image, 0.3, "", 4, 5.0, 0, 1)
    assert out.shape == (1, 64, 64, 3) and torch.isfinite(out).all()


def test_the_embedded_refiner_is_rebuilt_by_its_recipe(tmp_path):
    """models/build_tiny.py reproduces the committed weights (fp16 on disk)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_tiny", MODELS_DIR / "build_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build_refiner(tmp_path)
    from safetensors.torch import load_file

    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder_2/model.safetensors"):
        committed, rebuilt = load_file(MODELS_DIR / "tiny-sdxl-refiner" / name), load_file(tmp_path / name)
        assert committed.keys() == rebuilt.keys()
        assert all(torch.equal(committed[k], rebuilt[k]) for k in committed), name


def test_a_refiner_is_not_trained(refiner):
    from loralab.core.lora import LoRAConfigSpec
    from loralab.core.noise import NoiseStrategy
    from loralab.core.train import TrainSpec
    from loralab.nodes.lora import LoRALabTrainLoRA

    with pytest.raises(ValueError, match="Train LoRA: .* is sdxl_refiner"):
        LoRALabTrainLoRA().train(refiner, NoiseStrategy(), LoRAConfigSpec(), TrainSpec(steps=1), "r",
                                 images=torch.rand(1, 64, 64, 3), captions="x")
