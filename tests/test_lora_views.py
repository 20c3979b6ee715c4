"""LoRAs applied as views (core/patches.py): no module is copied, each pipeline samples with its own
LoRAs whichever was used last, and the shared model comes back bit for bit."""

import dataclasses

import pytest
import torch

from loralab.core.generate import GenerateSettings, generate
from loralab.core.lab_lora import apply_lora
from loralab.core.lora import LoRAConfigSpec
from loralab.core.lora_files import merged_copy
from loralab.core.noise import NoiseStrategy
from loralab.core.patches import restore
from loralab.core.pipeline import LabPipeline
from loralab.core.prompts import Prompt
from loralab.core.samplers import SamplerSpec
from loralab.core.train import TrainSpec, train_from_images

IMAGES = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(3))
CAPTIONS = ["a red square", "a blue circle"]
SETTINGS = GenerateSettings(steps=3, seed=5, width=32, height=32)
PROMPTS = [Prompt("a red square")]


def render(lp):
    return generate(lp, SamplerSpec("euler"), PROMPTS, SETTINGS)[0]


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def loras(tiny):
    """Two LoRAs touching the UNet (conv and linear) and the text encoder, with visible effects."""
    made = []
    for seed, targets in ((1, "all_linear+conv"), (2, "attention")):
        lora = train_from_images(tiny, IMAGES, CAPTIONS, NoiseStrategy(),
                                 LoRAConfigSpec(rank=4, alpha=4.0, targets=targets, text_encoder_rank=2),
                                 TrainSpec(steps=4, batch_size=2, lr=3e-2, seed=seed), name=f"l{seed}")
        made.append(lora)
    return made


def test_views_share_the_modules_and_sample_as_merged_copies(tiny, loras):
    a, b = loras
    unet, text = state(tiny.pipe.unet), state(tiny.pipe.text_encoder)
    plain = render(tiny)
    view_a, _ = apply_lora(tiny, a, 0.8, 1.0)
    view_b, _ = apply_lora(tiny, b, 1.0, 0.5)
    both, _ = apply_lora(view_a, b, 1.0, 0.5)
    assert view_a.base.unet is tiny.base.unet and both.base.text_encoder is tiny.base.text_encoder
    copy_a = LabPipeline(merged_copy(tiny.pipe, a.tensors, 0.8, 1.0)[0], "copy a", "sd1")
    copy_b = LabPipeline(merged_copy(tiny.pipe, b.tensors, 1.0, 0.5)[0], "copy b", "sd1")
    copy_both = LabPipeline(merged_copy(copy_a.pipe, b.tensors, 1.0, 0.5)[0], "copy both", "sd1")
    expected = {"a": render(copy_a), "b": render(copy_b), "both": render(copy_both)}
    assert (expected["a"] - plain).abs().max() > 1e-2 and (expected["a"] - expected["b"]).abs().max() > 1e-2
    for name, view in [("a", view_a), ("b", view_b), ("both", both), ("a", view_a), ("both", both), ("b", view_b)]:
        torch.testing.assert_close(render(view), expected[name], rtol=0, atol=1e-6, msg=name)
    assert torch.equal(render(tiny), plain)
    for original, now in ((unet, tiny.pipe.unet.state_dict()), (text, tiny.pipe.text_encoder.state_dict())):
        assert all(torch.equal(original[k], now[k]) for k in original), "the base comes back bit for bit"


def test_views_work_inside_inference_mode_as_comfyui_runs_nodes(tiny, loras):
    from loralab.nodes.lora import LoRALabApplyLoRA

    expected = render(apply_lora(tiny, loras[0], 1.0, 1.0)[0])
    with torch.inference_mode():
        (view,) = LoRALabApplyLoRA().apply(tiny, loras[0], 1.0, 1.0)
        images = render(view)
        plain = render(tiny)
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)
    assert all(not p.is_inference() for p in tiny.pipe.unet.parameters())
    assert (images - plain).abs().max() > 1e-2


def test_training_on_a_view_trains_on_top_of_its_lora_and_leaves_the_base_alone(tiny, loras):
    unet = state(tiny.pipe.unet)
    view, _ = apply_lora(tiny, loras[0], 1.0, 1.0)
    copy = LabPipeline(merged_copy(tiny.pipe, loras[0].tensors, 1.0, 1.0)[0], "copy", "sd1")
    spec = TrainSpec(steps=3, batch_size=2, lr=1e-2, seed=4, validation_every=2, validation_prompt="a red square")
    config = LoRAConfigSpec(rank=2, alpha=2.0, targets="all_linear+conv")
    on_view = train_from_images(view, IMAGES, CAPTIONS, NoiseStrategy(), config, spec)
    on_copy = train_from_images(copy, IMAGES, CAPTIONS, NoiseStrategy(), config, spec)
    assert on_view.losses == pytest.approx(on_copy.losses, rel=1e-5)
    torch.testing.assert_close(on_view.validation_images[0][1], on_copy.validation_images[0][1], rtol=0, atol=1e-5)
    now = tiny.pipe.unet.state_dict()
    assert all(torch.equal(unet[k], now[k]) for k in unet)


def test_save_lora_leaves_its_input_as_it_was(tiny, loras, output_dir):
    from loralab.nodes.lora import LoRALabSaveLoRA

    lora = loras[1]
    before = (dict(lora.tensors), {k: v.clone() for k, v in lora.tensors.items()}, dict(lora.metadata))
    fields = {k: v for k, v in vars(lora).items() if k not in ("tensors", "metadata")}
    LoRALabSaveLoRA().save(lora, "loralab/views", "kohya")
    assert lora.tensors.keys() == before[0].keys() and lora.metadata == before[2]
    assert {k: v for k, v in vars(lora).items() if k not in ("tensors", "metadata")} == fields
    assert all(lora.tensors[k] is before[0][k] and torch.equal(lora.tensors[k], before[1][k]) for k in lora.tensors)


def test_restore_puts_back_what_any_view_changed(tiny, loras):
    unet = state(tiny.pipe.unet)
    view = apply_lora(apply_lora(tiny, loras[0], 1.0, 1.0)[0], loras[1], 2.0, 1.0)[0]
    view.pipe  # noqa: B018 (reading it patches the shared modules)
    assert any(not torch.equal(unet[k], v) for k, v in tiny.base.unet.state_dict().items())
    restore(tiny.base)
    assert all(torch.equal(unet[k], v) for k, v in tiny.base.unet.state_dict().items())
    assert dataclasses.replace(view).pipe is view.base  # a copy of a view is the same view
