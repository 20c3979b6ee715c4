"""LoRA training on the embedded model: it learns, deterministically, and resumes exactly."""

from pathlib import Path

import pytest
import torch

from loralab.core.host import configure as configure_host
from loralab.core.lora import LoRAConfigSpec
from loralab.core.noise import NoiseStrategy
from loralab.core.train import TrainSpec, encode_dataset, train_lora

CAPTIONS = ["a red square", "a blue circle", "a green stripe", "a yellow dot"]


@pytest.fixture(scope="module")
def data(tiny):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 32, 32, 3, generator=g)
    return encode_dataset(tiny.pipe, images, CAPTIONS)


LORA = LoRAConfigSpec(rank=4, alpha=4.0, targets="all_linear+conv")
SPEC = TrainSpec(steps=60, batch_size=4, lr=3e-3, seed=7)


def test_a_lora_overfits_four_examples(tiny, data):
    result = train_lora(tiny.pipe, data, NoiseStrategy(timestep_sampling="range", t_min=0, t_max=400), LORA, SPEC)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    print(f"loss {first:.4f} -> {last:.4f}")
    assert last < 0.5 * first, (first, last)
    assert result.step == 60 and len(result.lrs) == 60 and result.trainable_parameters > 0
    assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in result.unet_state)


def test_training_is_bit_identical_for_a_seed_and_leaves_the_pipeline_alone(tiny, data):
    before = {k: v.clone() for k, v in tiny.pipe.unet.state_dict().items()}
    spec = TrainSpec(steps=5, batch_size=2, lr=1e-3, seed=3)
    a = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, spec)
    b = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, spec)
    assert a.unet_state.keys() == b.unet_state.keys()
    assert all(torch.equal(a.unet_state[k], b.unet_state[k]) for k in a.unet_state)
    c = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=5, batch_size=2, lr=1e-3, seed=4))
    assert any(not torch.equal(a.unet_state[k], c.unet_state[k]) for k in a.unet_state)
    after = tiny.pipe.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not any(isinstance(m, BaseTunerLayer) for m in tiny.pipe.unet.modules())
    assert not tiny.pipe.unet.training and not tiny.pipe.unet.is_gradient_checkpointing


def test_resume_equals_training_straight_through(tiny, data, tmp_path):
    """2N steps straight = N steps, a kill, N more from the checkpoint: bit for bit, with LoRA dropout
    (drawn from torch's global generator) and the validation images of both halves."""
    noise = NoiseStrategy(timestep_sampling="logit_normal", loss_weighting="min_snr", noise_offset=0.05)
    lora = LoRAConfigSpec(rank=4, alpha=4.0, targets="all_linear+conv", dropout=0.1)
    spec = TrainSpec(steps=8, batch_size=3, lr=1e-3, lr_schedule="cosine", warmup_steps=2, seed=11,
                     validation_every=3)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    def validate(step):  # draws from the global generator as a sampler may: training must not notice
        torch.rand(7)
        return tiny.pipe.unet(x, 500, encoder_hidden_states=data.embeddings[:1]).sample

    straight = train_lora(tiny.pipe, data, noise, lora, spec, validation=validate)
    assert [s for s, _ in straight.validation_images] == [3, 6]
    half = TrainSpec(**{**spec.__dict__, "checkpoint_every": 4})
    with pytest.raises(KeyboardInterrupt):
        def stop_after_4(step, loss):
            if step == 4:
                raise KeyboardInterrupt
        train_lora(tiny.pipe, data, noise, lora, half, checkpoint_dir=tmp_path, progress=stop_after_4,
                   validation=validate)
    assert (tmp_path / "checkpoint-0000004" / "adapter.safetensors").is_file()
    steps_run = []
    resumed = train_lora(tiny.pipe, data, noise, lora, half, checkpoint_dir=tmp_path,
                         progress=lambda step, loss: steps_run.append(step), validation=validate)
    assert steps_run == [5, 6, 7, 8], "the resume starts from the step-4 checkpoint"
    assert resumed.step == 8 and resumed.losses == straight.losses and resumed.lrs == straight.lrs
    assert all(torch.equal(resumed.unet_state[k], straight.unet_state[k]) for k in straight.unet_state)
    assert [s for s, _ in resumed.validation_images] == [3, 6]
    pairs = zip(resumed.validation_images, straight.validation_images, strict=True)
    assert all(torch.equal(a, b) for (_, a), (_, b) in pairs)


def test_gradient_clipping_really_clips(tiny, data, monkeypatch):
    seen = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        seen.append(len(params))
        norm = real(params, max_norm, *a, **k)
        after = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        assert after <= max_norm * 1.0001
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=2, lr=1.0, max_grad_norm=1e-3))
    assert seen and all(n > 0 for n in seen)


def test_train_config_betas_reach_the_optimizer(tiny, data, monkeypatch):
    from loralab.nodes.lora import LoRALabTrainConfig

    (spec,) = LoRALabTrainConfig().build(2, 1, 5e-4, "constant", 0, beta1=0.8, beta2=0.95)
    seen = []
    real = torch.optim.AdamW

    def spy(params, **kwargs):
        seen.append(kwargs["betas"])
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    train_lora(tiny.pipe, data, NoiseStrategy(), LORA, spec)
    assert seen == [(0.8, 0.95)]

def test_a_non_finite_loss_stops_with_a_clear_message(tiny, data):
    with pytest.raises(FloatingPointError, match="loss became"):
        train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=30, lr=1e12, max_grad_norm=0))


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny, data, tmp_path):
    train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=2, seed=1), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="holds a run with other data or settings"):
        train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=2, seed=1, lr=5e-4), checkpoint_dir=tmp_path)


def test_train_apply_and_save_nodes(tiny, data, output_dir):
    from safetensors import safe_open

    from loralab.core.generate import GenerateSettings, generate
    from loralab.core.prompts import Prompt
    from loralab.core.samplers import SamplerSpec
    from loralab.nodes.lora import LoRALabApplyLoRA, LoRALabSaveLoRA, LoRALabTrainLoRA

    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(5))
    lora, applied, cost, _ = LoRALabTrainLoRA().train(tiny, NoiseStrategy(), LORA,
                                                   TrainSpec(steps=20, batch_size=2, lr=1e-2), "t1",
                                                   images=images, captions="a sks photo")
    assert cost.rows[0]["trainable_parameters"] == lora.trainable_parameters > 0
    settings = GenerateSettings(steps=4, seed=2, width=32, height=32)
    base, _ = generate(tiny, SamplerSpec("euler"), [Prompt("a sks photo")], settings)
    with_lora, _ = generate(applied, SamplerSpec("euler"), [Prompt("a sks photo")], settings)
    (zero,) = LoRALabApplyLoRA().apply(tiny, lora, 0.0, 0.0)
    at_zero, _ = generate(zero, SamplerSpec("euler"), [Prompt("a sks photo")], settings)
    assert (with_lora - base).abs().max() > 1e-3
    assert torch.equal(at_zero, base)
    saved = LoRALabSaveLoRA().save(lora, "loras/t1")
    ui = saved["ui"]["text"][0]
    with safe_open(ui, "pt") as f:
        assert f.metadata()["ss_network_dim"] == "4" and any(k.endswith(".alpha") for k in f.keys())
    (row,) = saved["result"][0].rows  # the cost row joins Train LoRA's on (model, lora)
    assert row["file_size_bytes"] == Path(ui).stat().st_size and lora.file_size_bytes == 0  # its input kept
    assert (row["model"], row["lora"]) == (cost.rows[0]["model"], cost.rows[0]["lora"])


def test_saved_lora_loads_back_by_name_and_blends(tiny, data, output_dir, monkeypatch):
    from loralab.nodes.lora import LoRALabBlendLoRAs, LoRALabLoadLoRA, LoRALabSaveLoRA, LoRALabTrainLoRA

    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(6))
    spec = TrainSpec(steps=3, batch_size=2, lr=1e-2)
    a, *_ = LoRALabTrainLoRA().train(tiny, NoiseStrategy(), LORA, spec, "a", images=images, captions="x")
    other = TrainSpec(**{**spec.__dict__, "seed": 9})
    b, *_ = LoRALabTrainLoRA().train(tiny, NoiseStrategy(), LORA, other, "b", images=images, captions="y")
    LoRALabSaveLoRA().save(a, "loras/a")
    configure_host(models=(Path(output_dir),))
    assert "a_00001_.safetensors" in LoRALabLoadLoRA.INPUT_TYPES()["required"]["lora_name"][0]
    (loaded,) = LoRALabLoadLoRA().load("a_00001_.safetensors")
    assert loaded.rank == 4 and loaded.alpha == 4.0 and loaded.family == "sd1"
    assert all(torch.equal(loaded.tensors[k], a.tensors[k]) for k in a.tensors)
    (mix,) = LoRALabBlendLoRAs().blend(loaded, b, 1.0, 0)
    from loralab.core.lora_files import delta_weights

    da, dm = delta_weights(a.tensors), delta_weights(mix.tensors)
    assert all(torch.allclose(dm[k], da[k], atol=1e-6) for k in da)
    with pytest.raises(ValueError, match="is not a LoRA file here"):
        LoRALabLoadLoRA().load("missing.safetensors")
    LoRALabSaveLoRA().save(a, "loras/d", layout="diffusers")
    (peft_layout,) = LoRALabLoadLoRA().load("d_00001_.safetensors")
    assert all(k.startswith("unet.") for k in safetensors_keys(output_dir / "loras" / "d_00001_.safetensors"))
    dp = delta_weights(peft_layout.tensors)
    assert dp.keys() == da.keys() and all(torch.allclose(dp[k], da[k]) for k in da)


def test_image_folder_dataset_reads_captions_and_trains(tiny, output_dir, tmp_path, monkeypatch):
    import json

    from PIL import Image

    from loralab.nodes.data import LoRALabImageFolder
    from loralab.nodes.lora import LoRALabTrainLoRA

    folder = tmp_path / "input" / "set"
    folder.mkdir(parents=True)
    for i, size in enumerate([(40, 60), (64, 32), (32, 32)]):
        Image.new("RGB", size, (60 * i, 100, 200)).save(folder / f"img{i}.png")
    (folder / "img1.txt").write_text("from a txt file")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "img0.png", "text": "from metadata"}) + "\n")
    (folder / "broken.jpg").write_bytes(b"not an image")
    configure_host(inputs=(Path(tmp_path / "input"),))
    node = LoRALabImageFolder()
    with pytest.raises(ValueError, match="broken.jpg' could not be read"):
        node.load("set", 32, "center", False, "default one")
    (folder / "broken.jpg").unlink()
    dataset, images = node.load("set", 32, "random", True, "default one", seed=3)
    assert images.shape == (6, 32, 32, 3)
    assert dataset.captions[:3] == ["from metadata", "from a txt file", "default one"]
    assert torch.equal(images[3], images[0].flip(1))
    for bad in ("../outside", "/etc", "nope"):
        with pytest.raises(ValueError, match="folder"):
            node.load(bad, 32, "center", False)
    lora, *_ = LoRALabTrainLoRA().train(tiny, NoiseStrategy(), LORA, TrainSpec(steps=2, batch_size=2), "ds",
                                          dataset=dataset)
    assert lora.metadata["ss_num_train_images"] == "6"
    # the settings under kohya's ss_* names, as its train_network.py writes them (str of the value, None = off)
    meta = lora.metadata
    assert (meta["ss_max_train_steps"], meta["ss_optimizer"], meta["ss_total_batch_size"]) == ("2", "adamw", "2")
    assert (meta["ss_loss_type"], meta["ss_noise_offset"], meta["ss_min_snr_gamma"]) == ("l2", "None", "None")
    tuned, *_ = LoRALabTrainLoRA().train(
        tiny, NoiseStrategy(loss_weighting="min_snr", min_snr_gamma=3.0, loss_type="huber", huber_c=0.2,
                            multires_noise_iterations=4, noise_offset=0.05, timestep_sampling="range", t_max=899),
        LORA, TrainSpec(steps=1, batch_size=2, grad_accum=2, seed=9), "ds-huber", dataset=dataset)
    expected = {"ss_min_snr_gamma": "3.0", "ss_loss_type": "huber", "ss_huber_c": "0.2", "ss_huber_schedule": "snr",
                "ss_multires_noise_iterations": "4", "ss_noise_offset": "0.05", "ss_min_timestep": "0",
                "ss_max_timestep": "900", "ss_seed": "9", "ss_gradient_accumulation_steps": "2",
                "ss_total_batch_size": "4", "ss_debiased_estimation": "False"}
    assert {k: tuned.metadata[k] for k in expected} == expected


def kohya_bucket_resolutions(max_reso, min_size=256, max_size=1024, divisible=64):
    """kohya sd-scripts' ``make_bucket_resolutions`` (library/model_util.py), as published."""
    import math

    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos = set()
    width = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((width, width))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def test_aspect_ratio_buckets_follow_kohya_and_batches_never_mix_them(tiny, output_dir, tmp_path, monkeypatch):
    from PIL import Image

    from loralab.core.datasets import bucket_sizes
    from loralab.core.train import _Batches
    from loralab.nodes.data import LoRALabImageFolder
    from loralab.nodes.lora import LoRALabTrainLoRA

    assert bucket_sizes(512) == kohya_bucket_resolutions((512, 512))
    assert bucket_sizes(1024) == kohya_bucket_resolutions((1024, 1024), 512, 2048)
    assert bucket_sizes(64) == kohya_bucket_resolutions((64, 64), 32, 128, 8)
    folder = tmp_path / "input" / "mixed"
    folder.mkdir(parents=True)
    for i, size in enumerate([(128, 64), (130, 66), (40, 80), (64, 64)]):
        Image.new("RGB", size, (50 * i, 90, 160)).save(folder / f"img{i}.png")
    configure_host(inputs=(Path(tmp_path / "input"),))
    dataset, preview = LoRALabImageFolder().load("mixed", 64, "center", False, "a photo", buckets=True)
    shapes = [tuple(image.shape[:2]) for image in dataset.images]  # (height, width)
    assert shapes == [(40, 88), (40, 88), (88, 40), (64, 64)]  # the nearest aspect ratio of ~64² px
    assert all(h * w <= 64 * 64 for h, w in shapes) and preview.shape == (4, 88, 88, 3)
    batches = _Batches(4, 2, 0, shapes)
    seen = [batches.next() for _ in range(6)]
    assert all(len({shapes[i] for i in batch}) == 1 for batch in seen)
    assert sorted(i for batch in seen[:3] for i in batch) == [0, 1, 2, 3]  # one epoch = every example once
    resumed = _Batches(4, 2, 0, shapes)
    for _ in range(2):
        resumed.next()
    again = _Batches(4, 2, 99, shapes)
    again.load(resumed.state())  # a resume continues the same order, mid-epoch
    assert [again.next() for _ in range(4)] == seen[2:]
    lora, *_ = LoRALabTrainLoRA().train(tiny, NoiseStrategy(), LORA, TrainSpec(steps=3, batch_size=2), "buckets",
                                        dataset=dataset)
    assert len(lora.losses) == 3 and all(torch.isfinite(torch.tensor(lora.losses)))


def test_text_encoder_lora_trains_alone_or_beside_the_unet_and_resumes(tiny, data, tmp_path):
    te_only = LoRAConfigSpec(rank=4, alpha=4.0, train_unet=False, text_encoder_rank=4)
    spec = TrainSpec(steps=6, batch_size=2, lr=1e-2, seed=2, checkpoint_every=3)
    result = train_lora(tiny.pipe, data, NoiseStrategy(), te_only, spec)
    assert not result.unet_state and result.text_encoder_state
    assert all(k.startswith("encoder.layers.") for k in result.text_encoder_state)
    both = LoRAConfigSpec(rank=4, alpha=4.0, text_encoder_rank=2, text_encoder_alpha=1.0)
    straight = train_lora(tiny.pipe, data, NoiseStrategy(), both, spec)

    def stop(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny.pipe, data, NoiseStrategy(), both, spec, checkpoint_dir=tmp_path, progress=stop)
    resumed = train_lora(tiny.pipe, data, NoiseStrategy(), both, spec, checkpoint_dir=tmp_path)
    for attr in ("unet_state", "text_encoder_state"):
        a, b = getattr(straight, attr), getattr(resumed, attr)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_text_encoder_lora_file_uses_comfyuis_te_keys_and_changes_generation(tiny, output_dir):
    from loralab.core.generate import GenerateSettings, generate
    from loralab.core.prompts import Prompt
    from loralab.core.samplers import SamplerSpec
    from loralab.nodes.lora import LoRALabApplyLoRA, LoRALabTrainLoRA

    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(8))
    te_only = LoRAConfigSpec(rank=4, alpha=8.0, train_unet=False, text_encoder_rank=4, text_encoder_alpha=8.0)
    lora, *_ = LoRALabTrainLoRA().train(tiny, NoiseStrategy(), te_only, TrainSpec(steps=10, batch_size=2, lr=5e-2),
                                          "te", images=images, captions="a sks photo")
    assert lora.tensors and all(k.startswith("lora_te_text_model_encoder_layers_") for k in lora.tensors)
    assert {float(v) for k, v in lora.tensors.items() if k.endswith(".alpha")} == {8.0}
    settings = GenerateSettings(steps=3, seed=1, width=32, height=32)
    base, _ = generate(tiny, SamplerSpec("euler"), [Prompt("a sks photo")], settings)
    (applied,) = LoRALabApplyLoRA().apply(tiny, lora, 1.0, 1.0)
    (unet_only,) = LoRALabApplyLoRA().apply(tiny, lora, 1.0, 0.0)
    changed, _ = generate(applied, SamplerSpec("euler"), [Prompt("a sks photo")], settings)
    same, _ = generate(unet_only, SamplerSpec("euler"), [Prompt("a sks photo")], settings)
    assert (changed - base).abs().max() > 1e-4 and torch.equal(same, base)


def test_gradient_checkpointing_changes_nothing_but_memory_and_bf16_trains(tiny, data):
    spec = TrainSpec(steps=3, batch_size=2, lr=1e-2, seed=5)
    plain = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, spec)
    checkpointed = train_lora(tiny.pipe, data, NoiseStrategy(), LORA,
                              TrainSpec(**{**spec.__dict__, "gradient_checkpointing": True}))
    for k in plain.unet_state:
        torch.testing.assert_close(checkpointed.unet_state[k], plain.unet_state[k], atol=1e-5, rtol=1e-4)
    bf16 = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(**{**spec.__dict__, "mixed_precision": "bf16"}))
    assert all(torch.isfinite(torch.tensor(bf16.losses)))
    assert all(v.dtype == torch.float32 for v in bf16.unet_state.values())
    with pytest.raises(ValueError, match="'fp16' needs a CUDA GPU"):
        train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=1, mixed_precision="fp16"))


def test_fast_fp32_math_is_tf32_on_gpus_only_and_restores_the_global_switches(tiny, data):
    from loralab.core.train import fp32_math

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with fp32_math("fast", torch.device("cuda")):  # only flips torch's switches: no GPU needed
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        with fp32_math("fast", torch.device("cpu")):
            assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    spec = TrainSpec(steps=2, batch_size=2, lr=1e-2, seed=5)
    exact = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, spec)
    fast = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(**{**spec.__dict__, "fp32_math": "fast"}))
    assert all(torch.equal(fast.unet_state[k], exact.unet_state[k]) for k in exact.unet_state)  # CPU: unchanged
    with pytest.raises(ValueError, match="fp32_math 'tf32' is not one of highest, fast"):
        train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=1, fp32_math="tf32"))


def test_single_image_concept_adds_weighted_class_images_and_the_weights_reach_the_loss(tiny, output_dir):
    from loralab.core.train import encode_dataset
    from loralab.nodes.data import LoRALabSingleImageConcept
    from loralab.nodes.lora import LoRALabTrainLoRA

    instance = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(9))
    dataset, images = LoRALabSingleImageConcept().build(tiny, instance, "a photo of sks jacket",
                                                        "a photo of a jacket", 3, 0.5, seed=4)
    assert images.shape == (4, 32, 32, 3) and torch.equal(images[0], instance[0])
    assert dataset.captions == ["a photo of sks jacket"] + ["a photo of a jacket"] * 3
    assert dataset.weights == [1.0, 0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="needs a class prompt"):
        LoRALabSingleImageConcept().build(tiny, instance, "a photo of sks jacket", "", 2)
    # Zero-weighted class images contribute nothing: training equals training on the instance alone.
    spec = TrainSpec(steps=4, batch_size=1, lr=1e-2, seed=1)  # one epoch: each example once
    data = encode_dataset(tiny.pipe, images, dataset.captions, [1.0, 0.0, 0.0, 0.0])
    weighted = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, spec)
    assert sum(loss == 0.0 for loss in weighted.losses) == 3 and sum(loss > 0 for loss in weighted.losses) == 1
    lora, *_ = LoRALabTrainLoRA().train(tiny, NoiseStrategy(), LORA, spec, "concept", dataset=dataset)
    assert lora.metadata["ss_num_train_images"] == "4"


def test_an_sdxl_unet_lora_trains_and_applies(tmp_path):
    from test_checkpoints import make_tiny_checkpoint

    from loralab.core.checkpoints import load_single_file
    from loralab.core.generate import GenerateSettings, generate
    from loralab.core.pipeline import LabPipeline
    from loralab.core.prompts import Prompt
    from loralab.core.samplers import SamplerSpec
    from loralab.core.train import train_from_images
    from loralab.nodes.lora import LoRALabApplyLoRA

    path, config_dir, _ = make_tiny_checkpoint("sdxl", tmp_path)
    pipe, family = load_single_file(path, torch.float32, config_dir=config_dir)
    pipe.set_progress_bar_config(disable=True)
    lp = LabPipeline(pipe, "tiny-sdxl", family)
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    lora = train_from_images(lp, images, ["a sks photo"], NoiseStrategy(), LoRAConfigSpec(rank=4, alpha=4.0),
                             TrainSpec(steps=4, batch_size=2, lr=1e-2))
    assert lora.family == "sdxl" and all(k.startswith("lora_unet_") for k in lora.tensors)
    assert lora.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    settings = GenerateSettings(steps=2, seed=0, width=64, height=64)
    base, _ = generate(lp, SamplerSpec("euler"), [Prompt("a sks photo")], settings)
    (applied,) = LoRALabApplyLoRA().apply(lp, lora, 1.0, 1.0)
    after, _ = generate(applied, SamplerSpec("euler"), [Prompt("a sks photo")], settings)
    assert (after - base).abs().max() > 1e-4


def test_sdxl_text_encoder_loras_train_both_encoders_with_kohyas_te1_te2_keys(tmp_path):
    from test_checkpoints import make_tiny_checkpoint

    from loralab.core.checkpoints import load_single_file
    from loralab.core.lora_files import merged_copy
    from loralab.core.pipeline import LabPipeline
    from loralab.core.train import encode_dataset, encode_text, train_from_images

    path, config_dir, _ = make_tiny_checkpoint("sdxl", tmp_path)
    pipe, family = load_single_file(path, torch.float32, config_dir=config_dir)
    pipe.set_progress_bar_config(disable=True)
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    data = encode_dataset(pipe, images, ["a sks photo", "a red car"])
    # The per-step encoding (used while a text-encoder LoRA trains) equals the pipeline's own.
    cond, pooled = encode_text(pipe.text_encoder, data.tokens, pipe.text_encoder_2, data.tokens_2)
    torch.testing.assert_close(cond, data.embeddings)
    torch.testing.assert_close(pooled, data.added_cond["text_embeds"])
    lp = LabPipeline(pipe, "tiny-sdxl", family)
    config = LoRAConfigSpec(rank=4, alpha=4.0, train_unet=False, text_encoder_rank=4, init="gaussian")
    lora = train_from_images(lp, images, ["a sks photo", "a red car"], NoiseStrategy(), config,
                             TrainSpec(steps=3, batch_size=2, lr=1e-2))
    prefixes = {k.split("_text_model_")[0] for k in lora.tensors}
    assert prefixes == {"lora_te1", "lora_te2"}
    for prefix in prefixes:  # B starts at zero: both encoders received gradients
        assert any(v.abs().max() > 0 for k, v in lora.tensors.items() if k.startswith(prefix) and "lora_up" in k)
    # Every key names a real module of its encoder, so the file applies completely.
    _, unmatched = merged_copy(pipe, lora.tensors, 1.0, 1.0)
    assert not unmatched
    from loralab.core.lora_files import to_diffusers

    tensors, _ = to_diffusers(lora.tensors, "sdxl")  # names resolve against SDXL's full architecture
    assert {k.split(".")[0] for k in tensors} == {"text_encoder", "text_encoder_2"}


def test_sdxl_text_encoder_keys_follow_kohyas_te1_te2_layout():
    from loralab.core.lora_files import kohya_name

    assert kohya_name("encoder.layers.0.self_attn.q_proj", "lora_te1") == \
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    assert kohya_name("text_model.encoder.layers.31.mlp.fc2", "lora_te2") == \
        "lora_te2_text_model_encoder_layers_31_mlp_fc2"


def test_epochs_set_the_step_count_and_validation_images_show_the_lora_so_far(tiny, output_dir):
    from loralab.core.train import steps_for
    from loralab.nodes.lora import LoRALabTrainLoRA

    assert steps_for(TrainSpec(epochs=3, batch_size=2, grad_accum=2), 10).steps == 8  # ceil(30 / 4)
    assert steps_for(TrainSpec(steps=7), 10).steps == 7
    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    spec = TrainSpec(epochs=4, batch_size=2, lr=3e-2, validation_every=2, validation_prompt="a sks photo")
    lora, _, _, shots = LoRALabTrainLoRA().train(tiny, NoiseStrategy(), LORA, spec, "val", images=images,
                                                 captions="a sks photo")
    assert len(lora.losses) == 4 and [s for s, _ in lora.validation_images] == [2, 4]
    assert shots.shape == (2, 32, 32, 3) and (shots[0] - shots[1]).abs().max() > 1e-4
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not any(isinstance(m, BaseTunerLayer) for m in tiny.pipe.unet.modules())


def safetensors_keys(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def test_training_twice_in_one_process_leaves_no_peft_config_behind(tiny, data):
    """peft keeps its config on the model it wraps; a second training then warned of "multiple adapters"."""
    import warnings

    spec = TrainSpec(steps=1, batch_size=2, seed=1)
    dora = LoRAConfigSpec(rank=2, alpha=2.0, text_encoder_rank=2, variant="dora")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            train_lora(tiny.pipe, data, NoiseStrategy(), dora, spec)
    assert not [w for w in caught if "peft_config" in str(w.message)], [str(w.message) for w in caught]
    assert not hasattr(tiny.pipe.unet, "peft_config") and not hasattr(tiny.pipe.text_encoder, "peft_config")


def test_the_largest_seed_the_node_allows_trains(tiny, data):
    """Noise and dropout generators are seeded with seed + k, which must wrap, not overflow."""
    result = train_lora(tiny.pipe, data, NoiseStrategy(), LORA, TrainSpec(steps=1, seed=0xFFFFFFFFFFFFFFFF))
    assert result.step == 1


def test_min_snr_with_epsilon_and_zero_terminal_snr_trains_at_the_last_timestep(tiny, data):
    """The last timestep has SNR 0 there: the ε min-SNR weight is its limit 1, not 0/0."""
    noise = NoiseStrategy(zero_terminal_snr=True, loss_weighting="min_snr", timestep_sampling="range", t_min=999)
    result = train_lora(tiny.pipe, data, noise, LORA, TrainSpec(steps=2, batch_size=2, seed=3))
    assert all(torch.isfinite(torch.tensor(result.losses))) and min(result.losses) > 0


def test_training_leaves_the_callers_random_state_alone(tiny, data):
    """LoRA init and dropout seed torch's global generator inside a fork: other nodes' draws are unaffected."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train_lora(tiny.pipe, data, NoiseStrategy(), LoRAConfigSpec(rank=2, alpha=2.0, dropout=0.1),
               TrainSpec(steps=1, seed=5))
    assert torch.equal(torch.get_rng_state(), before)
