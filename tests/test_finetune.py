"""Full fine-tuning (every weight) and caption dropout: they learn, leave the input alone, resume."""

import pytest
import torch

from loralab.core.noise import NoiseStrategy
from loralab.core.train import TrainSpec, _CaptionDropout, encode_dataset, finetune_from_images, train_full

CAPTIONS = ["a red square", "a blue circle", "a green stripe", "a yellow dot"]


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0))


def _unet_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_full_finetuning_learns_every_weight_and_leaves_the_input_alone(tiny, images):
    before = {k: v.clone() for k, v in tiny.pipe.unet.state_dict().items()}
    te_before = {k: v.clone() for k, v in tiny.pipe.text_encoder.state_dict().items()}
    spec = TrainSpec(steps=40, batch_size=4, lr=1e-3, seed=5)
    noise = NoiseStrategy(timestep_sampling="range", t_min=0, t_max=400)
    tuned, result = finetune_from_images(tiny, images, CAPTIONS, noise, spec, text_encoder=True)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert result.trainable_parameters == sum(p.numel() for p in tiny.pipe.unet.parameters()) + sum(
        p.numel() for p in tiny.pipe.text_encoder.parameters())
    # every UNet tensor moved (full fine-tuning, not adapters), the input pipeline did not
    after = tuned.pipe.unet.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > 0.95 * len(before)
    assert all(torch.equal(v, tiny.pipe.unet.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, tiny.pipe.text_encoder.state_dict()[k]) for k, v in te_before.items())
    assert tuned.pipe.unet is not tiny.pipe.unet and tuned.pipe.vae is tiny.pipe.vae
    assert not any(p.requires_grad for p in tuned.pipe.unet.parameters()) and not tuned.pipe.unet.training
    assert set(result.states) == {"unet", "text_encoder"} and result.states["unet"].keys() == before.keys()


def test_full_finetuning_resumes_bit_for_bit(tiny, images, tmp_path):
    import copy

    data = encode_dataset(tiny.pipe, images, CAPTIONS)
    spec = TrainSpec(steps=6, batch_size=2, lr=1e-3, lr_schedule="cosine", warmup_steps=1, seed=2,
                     checkpoint_every=3)
    noise = NoiseStrategy(loss_weighting="min_snr")

    def fresh():
        pipe = copy.copy(tiny.pipe)
        pipe.unet = copy.deepcopy(tiny.pipe.unet)
        return pipe

    straight_pipe = fresh()
    straight = train_full(straight_pipe, data, noise, spec)

    def stop_at_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_full(fresh(), data, noise, spec, checkpoint_dir=tmp_path, progress=stop_at_3)
    resumed_pipe = fresh()  # a new process: starts from the base weights, loads the checkpoint
    resumed = train_full(resumed_pipe, data, noise, spec, checkpoint_dir=tmp_path)
    assert resumed.losses == straight.losses
    assert _unet_equal(resumed_pipe.unet, straight_pipe.unet)


def test_full_finetuning_refuses_half_precision_weights(tiny, images):
    import copy

    pipe = copy.copy(tiny.pipe)
    pipe.unet = copy.deepcopy(tiny.pipe.unet).half()
    data = encode_dataset(tiny.pipe, images, CAPTIONS)
    with pytest.raises(ValueError, match="load the model with dtype fp32"):
        train_full(pipe, data, NoiseStrategy(), TrainSpec(steps=1))


def test_caption_dropout_uses_each_familys_unconditional_input(tiny):
    tokenizer = tiny.pipe.tokenizer
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    tokens = tokenizer(CAPTIONS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    drop = torch.tensor([True, False, True, False])
    sd1 = _CaptionDropout(tiny.pipe, 0.5, None, torch.device("cpu"))
    out = sd1.tokens(tokens, drop)
    assert torch.equal(out[0], empty[0]) and torch.equal(out[2], empty[0]) and torch.equal(out[1], tokens[1])
    # cached embeddings: dropped rows become the empty prompt's embedding
    uncond = torch.full((1, 77, 8), 5.0)
    cond = torch.randn(4, 77, 8)
    mixed = _CaptionDropout(tiny.pipe, 0.5, uncond, torch.device("cpu")).apply(cond, None, drop, encoded=False)
    assert torch.equal(mixed[0], uncond[0]) and torch.equal(mixed[1], cond[1])
    # SDXL (a second encoder): zeros for the hidden states and the pooled embedding, as its pipelines guide

    class XL:
        text_encoder_2 = object()

    added = {"text_embeds": torch.randn(4, 6), "time_ids": torch.ones(4, 6)}
    zeroed = _CaptionDropout(XL(), 0.5, None, torch.device("cpu")).apply(cond, added, drop, encoded=True)
    assert zeroed[0].abs().sum() == 0 and torch.equal(zeroed[1], cond[1])
    assert added["text_embeds"][2].abs().sum() == 0 and added["text_embeds"][3].abs().sum() > 0
    assert torch.equal(added["time_ids"], torch.ones(4, 6))
    # rate 0 draws nothing: runs without dropout keep their random streams
    g = torch.Generator().manual_seed(0)
    assert _CaptionDropout(tiny.pipe, 0.0, None, torch.device("cpu")).draw(4, g) is None
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
    with pytest.raises(ValueError, match="caption_dropout 1.0"):
        _CaptionDropout(tiny.pipe, 1.0, None, torch.device("cpu"))


def _unconditional_share(tiny, images, rate: float) -> tuple[int, float]:
    """(examples the UNet saw, the share of them carrying the empty prompt's embedding as the text
    encoder is at that step) in 20 steps of full fine-tuning with caption dropout ``rate``."""
    import copy

    from loralab.core.train import empty_prompt_embedding

    pipe = copy.copy(tiny.pipe)
    pipe.unet, pipe.text_encoder = copy.deepcopy(tiny.pipe.unet), copy.deepcopy(tiny.pipe.text_encoder)
    seen = []

    def spy(module, args, kwargs):
        uncond = empty_prompt_embedding(pipe)[0]
        seen.extend(torch.allclose(row, uncond, atol=1e-5) for row in kwargs["encoder_hidden_states"].detach())

    handle = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        spec = TrainSpec(steps=20, batch_size=4, lr=1e-4, seed=1, caption_dropout=rate)
        train_full(pipe, encode_dataset(tiny.pipe, images, CAPTIONS), NoiseStrategy(), spec, text_encoder=True)
    finally:
        handle.remove()
    return len(seen), sum(seen) / len(seen)


def test_caption_dropout_feeds_the_unet_the_empty_prompt_at_its_rate(tiny, images):
    """The loop's wiring: with rate 0.5 about half the examples the UNet sees carry the empty
    prompt's embedding (the text encoder training, so encoded from its tokens), with 0 none."""
    assert _unconditional_share(tiny, images, 0.0) == (80, 0.0)
    n, share = _unconditional_share(tiny, images, 0.5)
    assert n == 80 and 0.3 <= share <= 0.7, share
