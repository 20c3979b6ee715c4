"""Img2Img: strength 0 keeps the input, 1 ignores it, in between depends on it (and equals
ComfyUI's KSampler with denoise: test_sampler_reference.py)."""

import pytest
import torch

from loralab.core.generate import GenerateSettings, generate, img2img
from loralab.core.prompts import Prompt
from loralab.core.samplers import SamplerSpec
from loralab.nodes.sample import LoRALabImg2Img

CAT = [Prompt("a photo of a cat")]
S = GenerateSettings(steps=6, cfg=5.0, seed=4, width=32, height=32)
INIT = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
OTHER = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))


def test_strength_zero_returns_the_input(tiny):
    out, _ = img2img(tiny, SamplerSpec("euler"), CAT, S, INIT, 0.0)
    assert torch.equal(out, INIT)


def test_strength_one_ignores_the_input_and_equals_text_to_image(tiny):
    a, _ = img2img(tiny, SamplerSpec("euler"), CAT, S, INIT, 1.0)
    b, _ = img2img(tiny, SamplerSpec("euler"), CAT, S, OTHER, 1.0)
    t2i, _ = generate(tiny, SamplerSpec("euler"), CAT, S)
    assert torch.equal(a, b) and torch.equal(a, t2i)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "ddim"])
def test_partial_strength_depends_on_the_input(tiny, name):
    """What partial strength computes is compared with ComfyUI's KSampler (denoise < 1) in
    test_sampler_reference.py; here: the input matters and the table says the strength."""
    ours, table = img2img(tiny, SamplerSpec(name), CAT, S, INIT, 0.5)
    other, _ = img2img(tiny, SamplerSpec(name), CAT, S, OTHER, 0.5)
    assert (other - ours).abs().max() > 1e-3
    assert table.rows[0]["strength"] == 0.5


def test_only_the_masked_area_follows_the_prompt(tiny):
    zeros, ones = torch.zeros(1, 32, 32), torch.ones(1, 32, 32)

    def run(prompt, mask):
        return img2img(tiny, SamplerSpec("euler"), [Prompt(prompt)], S, INIT, 0.8, mask=mask)[0]

    # An empty mask keeps the (VAE-encoded) input whatever the prompt; a full one repaints it all.
    assert torch.equal(run("a cat", zeros), run("a red car", zeros))
    assert (run("a cat", ones) - run("a red car", ones)).abs().max() > 1e-3
    assert (run("a cat", ones) - run("a cat", zeros)).abs().mean() > 0.01


def test_one_init_per_prompt_or_one_for_all(tiny):
    prompts = [Prompt("a"), Prompt("b")]
    out, _ = img2img(tiny, SamplerSpec("euler"), prompts, S, torch.cat([INIT, OTHER]), 0.0)
    assert torch.equal(out, torch.cat([INIT, OTHER]))
    with pytest.raises(ValueError, match="3 init images for 2 prompts"):
        img2img(tiny, SamplerSpec("euler"), prompts, S, torch.cat([INIT, OTHER, INIT]), 0.5)


def test_node_checks_the_input_size(tiny):
    with pytest.raises(ValueError, match="'image': width 36 is not a multiple of 8"):
        LoRALabImg2Img().img2img(tiny, SamplerSpec("euler"), CAT, torch.rand(1, 32, 36, 3), 0.5, "", 4, 5.0, 0, 1)


def test_prompts_sampled_together_keep_their_own_init_and_mask(tiny):
    prompts = [Prompt("a cat"), Prompt("a red car")]
    init, mask = torch.cat([INIT, OTHER]), torch.stack([torch.ones(32, 32), torch.zeros(32, 32)])
    together = GenerateSettings(**{**S.__dict__, "prompts_per_batch": 2, "images_per_prompt": 2})
    alone = GenerateSettings(**{**S.__dict__, "images_per_prompt": 2})
    for m in (None, mask):
        a, _ = img2img(tiny, SamplerSpec("euler_ancestral"), prompts, alone, init, 0.7, mask=m)
        b, _ = img2img(tiny, SamplerSpec("euler_ancestral"), prompts, together, init, 0.7, mask=m)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
