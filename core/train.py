"""LoRA training on cached latents and text embeddings, with exact resume.

The loop: sample timesteps and noise by the noise strategy, predict with the UNet carrying peft
LoRA adapters, weighted MSE against ε or v, AdamW (or another torch optimizer), a diffusers LR
schedule, real gradient clipping (a list of parameters, not a spent generator as in diffusers'
example script), atomic checkpoints holding everything a resume needs (adapter weights, optimizer,
LR schedule, RNG states, data order, step).

ComfyUI runs nodes inside ``torch.inference_mode()``; training leaves it explicitly and clones
upstream tensors, which may be inference tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .choices import LR_SCHEDULES, OPTIMIZERS
from .distill import LCMSpec, lcm_per_example_loss
from .lora import LoRAConfigSpec, fit_budget, kohya_alpha, resolve_targets
from .measure import measure
from .noise import (NoiseStrategy, alphas_cumprod, betas_from_config, offset_noise, perturb_input_noise, snr,
                    target_for)
from .runtime import check_interrupted


@dataclass(frozen=True)
class TrainSpec:
    """``LL_TRAIN_CONFIG``."""

    steps: int = 100
    batch_size: int = 1
    grad_accum: int = 1
    optimizer: str = "adamw"
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 1e-2
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0 = no clipping
    mixed_precision: str = "no"  # "no", "bf16" (autocast; CPU or GPU), "fp16" (autocast + loss scaling; GPU)
    gradient_checkpointing: bool = False
    fp32_math: str = "highest"  # "fast": TF32 matmuls/convolutions on NVIDIA GPUs (no effect on CPUs)
    seed: int = 0
    checkpoint_every: int = 0  # 0 = only at the end
    epochs: int = 0  # > 0: train this many passes over the data instead of ``steps``
    validation_every: int = 0  # 0 = no validation images
    validation_prompt: str = ""
    distill: LCMSpec | None = None  # LCM-LoRA distillation instead of the denoising loss
    # Fraction of examples trained on the unconditional input (SD1: the empty prompt; SDXL: zeros,
    # as its pipelines guide), which classifier-free guidance needs; pretraining uses 0.1.
    caption_dropout: float = 0.0


@dataclass
class TrainingData:
    """Cached VAE latents (already scaled) and text-encoder hidden states, one per example."""

    latents: torch.Tensor | list[torch.Tensor]  # a list when aspect-ratio buckets give several sizes
    embeddings: torch.Tensor
    captions: list[str] = field(default_factory=list)
    tokens: torch.Tensor | None = None  # token ids, for training a text-encoder LoRA
    weights: torch.Tensor | None = None  # per-example loss weights (DreamBooth prior preservation)
    added_cond: dict[str, torch.Tensor] = field(default_factory=dict)  # SDXL: text_embeds, time_ids
    tokens_2: torch.Tensor | None = None  # SDXL: the second tokenizer's ids
    uncond: torch.Tensor | None = None  # the empty prompt's embedding (LCM distillation's guidance)


@dataclass
class TrainResult:
    """What Train LoRA hands on (``LL_LORA`` carries it)."""

    states: dict[str, dict[str, torch.Tensor]]  # component -> peft names "<module>.lora_A/B.weight"
    targets: list[str]
    config: LoRAConfigSpec
    losses: list[float]
    lrs: list[float]
    seconds: float
    peak_memory_mb: float
    trainable_parameters: int
    step: int
    metadata: dict = field(default_factory=dict)
    validation_images: list = field(default_factory=list)  # (step, what ``validation(step)`` returned)

    @property
    def unet_state(self) -> dict[str, torch.Tensor]:
        return self.states.get("unet", {})

    @property
    def text_encoder_state(self) -> dict[str, torch.Tensor]:
        return self.states.get("text_encoder", {})


ENCODE_CHUNK = 32


@torch.no_grad()
def encode_dataset(pipe, images, captions: list[str], weights: list[float] | None = None) -> TrainingData:
    """Encode ComfyUI images ``[N,H,W,3]`` in 0..1 (or a list of ``[H,W,3]`` of several sizes, from
    aspect-ratio buckets) and their captions once (latent caching). The VAE posterior's mean is
    used, so the cache is deterministic."""
    device, dtype = pipe.unet.device, pipe.vae.dtype
    scale = pipe.vae.config.scaling_factor
    sizes = [tuple(image.shape[:2]) for image in images]
    # one size: encoded in chunks (a pretraining set has tens of thousands); buckets: one by one
    chunk = ENCODE_CHUNK if len(set(sizes)) == 1 else 1
    latents = [x for k in range(0, len(images), chunk)
               for x in pipe.vae.encode(torch.stack(list(images[k:k + chunk])).permute(0, 3, 1, 2).to(device, dtype)
                                        * 2 - 1).latent_dist.mean * scale]
    tokens = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
    example_weights = torch.tensor(weights, dtype=torch.float32) if weights else None
    added = {}
    if getattr(pipe, "text_encoder_2", None) is not None:
        # SDXL: both encoders' hidden states, the pooled projection and the size/crop conditioning
        # (original size = target size = the training resolution, no crop offset).
        embeddings, _, pooled, _ = pipe.encode_prompt(list(captions), device=device, do_classifier_free_guidance=False)
        time_ids = torch.cat([pipe._get_add_time_ids(size, (0, 0), size, torch.float32,
                                                     pipe.text_encoder_2.config.projection_dim) for size in sizes])
        added = {"text_embeds": pooled.float().cpu(), "time_ids": time_ids}
        tokens_2 = pipe.tokenizer_2(captions, padding="max_length", max_length=pipe.tokenizer_2.model_max_length,
                                    truncation=True, return_tensors="pt").input_ids
    else:
        embeddings, tokens_2 = pipe.text_encoder(tokens)[0], None
    latents = [x.float().cpu() for x in latents]
    stacked = torch.stack(latents) if len(set(sizes)) == 1 else latents
    return TrainingData(stacked, embeddings.float().cpu(), list(captions), tokens.cpu(), example_weights, added,
                        tokens_2)


@torch.no_grad()
def empty_prompt_embedding(pipe) -> torch.Tensor:
    """The SD1 text encoder's output for "" (``[1, 77, D]``): classifier-free guidance's unconditional input."""
    tokens = pipe.tokenizer([""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(tokens)[0].float().cpu()


def _take(latents, index: list[int]) -> torch.Tensor:
    return latents[index] if isinstance(latents, torch.Tensor) else torch.stack([latents[i] for i in index])


def encode_text(text_encoder, tokens: torch.Tensor, text_encoder_2=None, tokens_2: torch.Tensor | None = None):
    """The UNet's text conditioning, as diffusers' pipelines compute it: SD1, the last hidden state;
    SDXL, both encoders' penultimate hidden states side by side, plus the second encoder's pooled
    projection (returned second; None for SD1)."""
    if text_encoder_2 is None:
        return text_encoder(tokens)[0], None
    first = text_encoder(tokens, output_hidden_states=True).hidden_states[-2]
    second = text_encoder_2(tokens_2, output_hidden_states=True)
    return torch.cat([first, second.hidden_states[-2]], dim=-1), second[0]


def _optimizer(params, spec: TrainSpec):
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, betas=(spec.beta1, spec.beta2), weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=(spec.beta1, spec.beta2), weight_decay=spec.weight_decay)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.beta1, weight_decay=spec.weight_decay)
    raise ValueError(f"optimizer {spec.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")


def _autocast(mixed_precision: str, device: torch.device):
    import contextlib

    if mixed_precision == "no":
        return contextlib.nullcontext()
    if mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision 'fp16' needs a CUDA GPU (loss scaling); use 'bf16' or 'no' on the CPU")
    if mixed_precision not in ("bf16", "fp16"):
        raise ValueError(f"mixed_precision {mixed_precision!r} is not one of no, bf16, fp16")
    return torch.autocast(device.type, dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)


@contextmanager
def fp32_math(mode: str, device: torch.device):
    """fp32 matmuls and convolutions at full precision ("highest"), or with TF32 inner math on
    NVIDIA GPUs ("fast", diffusers' scripts' ``--allow_tf32``; PyTorch already uses TF32 for cuDNN
    convolutions by default). On CPUs "fast" changes nothing: oneDNN's bf16 math for fp32 tensors
    made the SD1.5 LoRA step slower here (per-call conversions), so use bf16 autocast there.
    The global switches are restored afterwards."""
    if mode not in ("highest", "fast"):
        raise ValueError(f"fp32_math {mode!r} is not one of highest, fast")
    if mode == "highest" or device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _lr_schedule(optimizer, spec: TrainSpec):
    from diffusers.optimization import get_scheduler

    if spec.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {spec.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
    name = "constant_with_warmup" if spec.lr_schedule == "constant" else spec.lr_schedule
    return get_scheduler(name, optimizer, num_warmup_steps=spec.warmup_steps, num_training_steps=spec.steps)


def _peft_config(lcfg: LoRAConfigSpec, targets: list[str], rank: int, alpha: float):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=lcfg.dropout,
                      init_lora_weights=True if lcfg.init == "kaiming" else "gaussian",
                      use_dora=lcfg.variant == "dora", use_rslora=lcfg.variant == "rslora")


def lora_state(model) -> dict[str, torch.Tensor]:
    """The adapter tensors in peft's names without the adapter name ("...lora_A.weight")."""
    return {k.replace(f".{ADAPTER}", ""): v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


ADAPTER = "loralab_train"
# The ``targets`` of a component trained in full (every parameter) rather than through adapters.
FULL = ["*"]


def trained_state(model, targets: list[str]) -> dict[str, torch.Tensor]:
    """What training changed in ``model``: every weight when trained in full, else the adapters."""
    if targets == FULL:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return lora_state(model)


@contextmanager
def _adapters(pipe, lcfg: LoRAConfigSpec, seed: int):
    """Wrap the pipeline's own UNet (and text encoder) in LoRA layers for the duration of training.
    No copy is made (at full size a copy would double the memory); afterwards the original
    modules, ``requires_grad`` flags and train/eval mode are restored exactly."""
    from peft import inject_adapter_in_model

    saved, models = {}, {}
    te_alpha = lcfg.text_encoder_alpha or lcfg.text_encoder_rank
    components = [("unet", lcfg.train_unet, lcfg.rank, lcfg.alpha)]
    if lcfg.text_encoder_rank > 0:  # SDXL: both encoders, as kohya trains them (lora_te1_/lora_te2_)
        components += [(name, True, lcfg.text_encoder_rank, te_alpha) for name in ("text_encoder", "text_encoder_2")
                       if getattr(pipe, name, None) is not None]
    try:
        for name, wanted, rank, alpha in components:
            model = getattr(pipe, name)
            saved[name] = (model.training, {n: p.requires_grad for n, p in model.named_parameters()},
                           model.__dict__.get("peft_config"))
            model.requires_grad_(False)
            model.train()
            targets = []
            if wanted:
                targets = resolve_targets(model, lcfg.targets if name == "unet" else "attention", lcfg.custom_modules,
                                          text_encoder=name != "unet")
                torch.manual_seed(seed)  # peft draws the LoRA A init from the global generator
                inject_adapter_in_model(_peft_config(lcfg, targets, rank, alpha), model, adapter_name=ADAPTER)
                for n, p in model.named_parameters():
                    if "lora_" in n:
                        p.data = p.data.float()  # adapters train in fp32 whatever the base precision
                        p.requires_grad_(True)
            models[name] = (model, targets)
        yield models
    finally:
        for name, (training, flags, peft_config) in saved.items():
            model = getattr(pipe, name)
            _unwrap(model, peft_config)
            for n, p in model.named_parameters():
                p.requires_grad_(flags.get(n, True))
            model.train(training)


def _unwrap(model, peft_config: dict | None = None) -> None:
    """Put every LoRA-wrapped layer's original module back in its place, and the model's
    ``peft_config`` as it was: peft leaves its config on the model, and the next injection would
    take it for a second adapter ("Already found a `peft_config` attribute")."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(parent, child_name, child.get_base_layer())
    if peft_config is None:
        model.__dict__.pop("peft_config", None)
    else:
        peft_config.pop(ADAPTER, None)
        model.peft_config = peft_config


class _Batches:
    """Shuffled example indices, epoch after epoch, from a seeded generator (resumable). With
    buckets (one key per example) every batch comes from one bucket: each epoch's shuffled order is
    split per bucket into batches (the last of a bucket may be smaller) and the batches shuffled."""

    def __init__(self, n: int, batch_size: int, seed: int, buckets: list | None = None):
        self.n, self.batch_size, self.buckets = n, batch_size, buckets
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.sizes: list[int] = []  # bucketed: the sizes of the batches left in ``order``

    def next(self) -> list[int]:
        if self.buckets is not None:
            if not self.order:
                self._bucketed_epoch()
            size = self.sizes.pop(0)
            batch, self.order = self.order[:size], self.order[size:]
            return batch
        batch = []
        while len(batch) < self.batch_size:
            if not self.order:
                self.order = torch.randperm(self.n, generator=self.generator).tolist()
            batch.append(self.order.pop(0))
        return batch

    def _bucketed_epoch(self) -> None:
        groups: dict = {}
        for i in torch.randperm(self.n, generator=self.generator).tolist():
            groups.setdefault(self.buckets[i], []).append(i)
        chunks = [g[k:k + self.batch_size] for g in groups.values() for k in range(0, len(g), self.batch_size)]
        chunks = [chunks[k] for k in torch.randperm(len(chunks), generator=self.generator).tolist()]
        self.order, self.sizes = [i for c in chunks for i in c], [len(c) for c in chunks]

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "order": torch.tensor(self.order, dtype=torch.long),
                "sizes": torch.tensor(self.sizes, dtype=torch.long)}

    def load(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].tolist()
        self.sizes = state["sizes"].tolist() if "sizes" in state else []


def run_signature(data: TrainingData, noise: NoiseStrategy, lcfg: LoRAConfigSpec, spec: TrainSpec) -> str:
    """What a checkpoint must match to be resumed: the data and every setting but checkpoint_every."""
    import hashlib

    h = hashlib.sha256()
    latents = [data.latents] if isinstance(data.latents, torch.Tensor) else data.latents
    for tensor in (*latents, data.embeddings) + ((data.weights,) if data.weights is not None else ()):
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    train = {**asdict(spec), "checkpoint_every": None}
    # fields added later are left out at their defaults, so older checkpoints still resume
    for name, default in (("distill", None), ("caption_dropout", 0.0)):
        if train[name] == default:
            del train[name]
    settings = {"noise": asdict(noise), "lora": asdict(lcfg) if lcfg is not None else "full", "train": train}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _save_checkpoint(folder: Path, step: int, models: dict, optimizer, schedule, batches, noise_gen, losses, lrs,
                     signature: str, validations: list, device: torch.device) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".checkpoint."))
    try:
        weights = {f"{name}.{k}": v.contiguous() for name, (model, targets) in models.items()
                   for k, v in trained_state(model, targets).items()}
        save_file(weights, tmp / "adapter.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "batches": batches.state(), "noise_generator": noise_gen.get_state(), "rng": _rng_state(device),
                    "step": step, "losses": torch.tensor(losses, dtype=torch.float64),
                    "lrs": torch.tensor(lrs, dtype=torch.float64), "signature": signature,
                    # the images so far, so that a resumed run returns all of them
                    "validation": {"steps": torch.tensor([s for s, _ in validations], dtype=torch.long),
                                   "images": [image.detach().cpu() for _, image in validations]}},
                   tmp / "state.pt")
        target = folder / f"checkpoint-{step:07d}"
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        _write_latest(folder, target.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _derived_seed(seed: int, k: int) -> int:
    """The k-th stream's seed: seed + k, wrapped into torch's 64-bit range (the node allows up to 2⁶⁴ − 1)."""
    return (seed + k) % 2**64


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def _rng_state(device: torch.device) -> dict:
    """torch's global generators, which peft's LoRA dropout draws from (CPU, and the GPU's when
    training there), so that a resume continues the same dropout masks."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _write_latest(folder: Path, name: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".latest.")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"checkpoint": name}))
    os.replace(tmp, folder / "latest.json")


def latest_checkpoint(folder: Path | None) -> Path | None:
    if folder is None or not (folder / "latest.json").is_file():
        return None
    name = json.loads((folder / "latest.json").read_text())["checkpoint"]
    path = folder / name
    return path if (path / "state.pt").is_file() and (path / "adapter.safetensors").is_file() else None


def train_lora(pipe, data: TrainingData, noise: NoiseStrategy, lcfg: LoRAConfigSpec, spec: TrainSpec,
               checkpoint_dir: Path | None = None, progress=None, validation=None) -> TrainResult:
    """Train a LoRA on ``data``; resumes from ``checkpoint_dir`` when it holds a checkpoint.
    The pipeline's modules are wrapped only while training and come back unchanged."""
    lcfg = fit_budget(pipe, lcfg)
    if spec.distill is not None:
        if not lcfg.train_unet or lcfg.text_encoder_rank:
            raise ValueError("LCM distillation trains a UNet LoRA only: set train_unet on and text_encoder_rank 0")
        if data.uncond is None and getattr(pipe, "text_encoder_2", None) is None:
            raise ValueError("LCM distillation needs the empty prompt's embedding (TrainingData.uncond)")
    # The global generators are seeded for LoRA init and dropout inside a fork: the caller's are left as they were.
    device = pipe.unet.device
    with torch.random.fork_rng(devices=_rng_devices(device)), torch.inference_mode(False), torch.enable_grad(), \
            _adapters(pipe, lcfg, spec.seed) as models, fp32_math(spec.fp32_math, device):
        checkpointing = pipe.unet.is_gradient_checkpointing
        try:
            return _train(pipe, models, data, noise, lcfg, spec, checkpoint_dir, progress, validation)
        finally:
            if spec.gradient_checkpointing and not checkpointing:
                pipe.unet.disable_gradient_checkpointing()


def _one_caption_each(images, captions: list[str]) -> list[str]:
    """One caption per image: one given for all is repeated; any other count is an error."""
    if len(captions) not in (1, len(images)):
        raise ValueError(f"got {len(captions)} captions for {len(images)} images; give one caption for all "
                         "images or one per image")
    return captions * len(images) if len(captions) == 1 else captions


def train_full(pipe, data: TrainingData, noise: NoiseStrategy, spec: TrainSpec, text_encoder: bool = False,
               checkpoint_dir: Path | None = None, progress=None, validation=None) -> TrainResult:
    """Full fine-tuning: every weight of ``pipe``'s UNet (and of its text encoder(s) with
    ``text_encoder``) trains, in place: the caller hands over modules it owns (``finetune_from_images``
    copies them first). The same loop, noise strategy, checkpoints and resume as LoRA training;
    ``states`` holds whole state dicts."""
    names = ["unet"] + ([n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
                        if text_encoder else [])
    device = pipe.unet.device
    for name in names:
        if getattr(pipe, name).dtype != torch.float32:
            raise ValueError(f"full fine-tuning trains the {name} in fp32 but it was loaded as "
                             f"{getattr(pipe, name).dtype}; load the model with dtype fp32 (mixed_precision "
                             "bf16 gives the speed)")
    if spec.distill is not None:
        raise ValueError("LCM distillation trains a LoRA; use Train LoRA for it")
    with torch.random.fork_rng(devices=_rng_devices(device)), torch.inference_mode(False), torch.enable_grad(), \
            fp32_math(spec.fp32_math, device):
        models, checkpointing = {}, pipe.unet.is_gradient_checkpointing
        for name in names:
            model = getattr(pipe, name)
            model.requires_grad_(True)
            model.train()
            models[name] = (model, FULL)
        try:
            return _train(pipe, models, data, noise, None, spec, checkpoint_dir, progress, validation)
        finally:
            for model, _ in models.values():
                model.requires_grad_(False)
                model.eval()
            if spec.gradient_checkpointing and not checkpointing:  # as train_lora leaves it
                pipe.unet.disable_gradient_checkpointing()


def finetune_from_images(lp, images, captions: list[str], noise: NoiseStrategy, spec: TrainSpec,
                         text_encoder: bool = False, checkpoint_dir: Path | None = None, name: str = "finetuned"):
    """Fine-tune copies of ``lp``'s UNet (and text encoders) on ``images``; returns a new
    ``LabPipeline`` holding them beside ``lp``'s other components, and the ``TrainResult``. ``lp``
    itself is left untouched (other nodes share it)."""
    import copy

    from .pipeline import LabPipeline
    from .runtime import progress

    captions = _one_caption_each(images, captions)
    spec = steps_for(spec, len(images))
    with torch.inference_mode(False):
        data = encode_dataset(lp.pipe, [image.clone() for image in images], captions)
        if spec.caption_dropout and lp.family == "sd1":
            data.uncond = empty_prompt_embedding(lp.pipe)
        pipe = copy.copy(lp.pipe)
        names = ["unet"] + (["text_encoder", "text_encoder_2"] if text_encoder else [])
        for component in names:
            if getattr(pipe, component, None) is not None:
                setattr(pipe, component, copy.deepcopy(getattr(pipe, component)))
    tuned = LabPipeline(pipe, name=f"{lp.name} + {name}", family=lp.family, vae_mode=lp.vae_mode,
                        loras=list(lp.loras))
    with progress(spec.steps, "fine-tune") as bar:
        result = train_full(pipe, data, noise, spec, text_encoder, checkpoint_dir,
                            progress=lambda step, loss: bar.update(1))
    return tuned, result


def steps_for(spec: TrainSpec, n_examples: int) -> TrainSpec:
    """Resolve ``epochs`` into optimizer steps (each step sees batch_size x grad_accum examples)."""
    import dataclasses
    import math

    if spec.epochs <= 0:
        return spec
    per_step = spec.batch_size * spec.grad_accum
    return dataclasses.replace(spec, steps=max(1, math.ceil(spec.epochs * n_examples / per_step)))


def _denoising_loss(unet, x0, cond, added, noise, prediction, alpha_bar, snr_t, noise_gen,
                    autocast) -> torch.Tensor:
    """The diffusion loss per example: noise x₀ at sampled t, predict, weight (Noise Strategy)."""
    device = x0.device
    t = noise.sample(len(x0), snr_t, noise_gen)
    eps = offset_noise(x0.shape, noise_gen, noise.noise_offset).to(device)
    eps_in = perturb_input_noise(eps, noise_gen, noise.input_perturbation)
    a = alpha_bar[t].to(device, torch.float32).view(-1, 1, 1, 1)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * eps_in
    dtype = unet.dtype  # a half-precision base model takes half-precision inputs
    if added:
        added = {k: v.to(dtype) for k, v in added.items()}
    with autocast:
        pred = unet(noisy.to(dtype), t.to(device), encoder_hidden_states=cond.to(dtype),
                    added_cond_kwargs=added).sample
    target = target_for(prediction, x0, eps, alpha_bar[t].to(device, torch.float32))
    per_sample = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    return per_sample * noise.weights(snr_t[t], prediction).to(device, torch.float32)


def _train(pipe, models, data, noise, lcfg, spec, checkpoint_dir, progress, validation=None) -> TrainResult:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = pipe.unet.device
    unet = models["unet"][0]
    if spec.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    autocast = _autocast(spec.mixed_precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=spec.mixed_precision == "fp16")
    text_encoder = models.get("text_encoder", (None,))[0]
    text_encoder_2 = models.get("text_encoder_2", (None,))[0]
    params = [p for model, targets in models.values() for n, p in model.named_parameters()
              if targets == FULL or (targets and "lora_" in n)]
    optimizer = _optimizer(params, spec)
    schedule = _lr_schedule(optimizer, spec)
    buckets = None if isinstance(data.latents, torch.Tensor) else [tuple(x.shape) for x in data.latents]
    batches = _Batches(len(data.latents), spec.batch_size, spec.seed, buckets)
    noise_gen = torch.Generator().manual_seed(_derived_seed(spec.seed, 1))
    noise_schedule = noise.schedule(pipe.scheduler.config)  # the model's, where the strategy does not override it
    alpha_bar, prediction = alphas_cumprod(betas_from_config(noise_schedule)), noise_schedule["prediction_type"]
    snr_t = snr(alpha_bar)
    latents = data.latents.clone().to(device) if buckets is None else [x.clone().to(device) for x in data.latents]
    embeddings = data.embeddings.clone().to(device)
    uncond = data.uncond.to(device) if data.uncond is not None else None
    tokens = data.tokens.clone().to(device) if text_encoder is not None else None
    tokens_2 = data.tokens_2.clone().to(device) if text_encoder_2 is not None else None
    dropout = _CaptionDropout(pipe, spec.caption_dropout, uncond, device)
    step, losses, lrs, validations = 0, [], [], []
    torch.manual_seed(_derived_seed(spec.seed, 2))  # LoRA dropout's masks: peft's nn.Dropout draws from it
    signature = run_signature(data, noise, lcfg, spec)
    resume = latest_checkpoint(checkpoint_dir)
    if resume is not None:
        state = torch.load(resume / "state.pt", map_location="cpu", weights_only=True)
        if state.get("signature") != signature:
            raise ValueError(f"checkpoint folder {str(checkpoint_dir)!r} holds a run with other data or settings; "
                             "use another run name to start afresh, or delete that folder")
        weights = load_file(resume / "adapter.safetensors")
        for name, (model, targets) in models.items():
            if targets == FULL:
                model.load_state_dict({k[len(name) + 1:]: v for k, v in weights.items() if k.startswith(name + ".")})
            elif targets:
                set_peft_model_state_dict(model, {k[len(name) + 1:]: v for k, v in weights.items()
                                                  if k.startswith(name + ".")}, adapter_name=ADAPTER)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        batches.load(state["batches"])
        noise_gen.set_state(state["noise_generator"])
        if "rng" in state:
            _set_rng_state(state["rng"], device)
        step, losses, lrs = state["step"], state["losses"].tolist(), state["lrs"].tolist()
        saved = state.get("validation", {"steps": torch.zeros(0), "images": []})
        validations = list(zip(saved["steps"].tolist(), saved["images"], strict=True))
    start = time.perf_counter()
    with measure(device) as cost:
        while step < spec.steps:
            check_interrupted()
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(spec.grad_accum):
                index = batches.next()
                x0 = _take(latents, index)
                added = {k: v[index].to(device) for k, v in data.added_cond.items()} or None
                drop = dropout.draw(len(index), noise_gen)
                if text_encoder is not None:
                    cond, pooled = encode_text(text_encoder, dropout.tokens(tokens[index], drop), text_encoder_2,
                                               tokens_2[index] if tokens_2 is not None else None)
                    if pooled is not None:
                        added["text_embeds"] = pooled
                else:
                    cond = embeddings[index]
                cond = dropout.apply(cond, added, drop, encoded=text_encoder is not None)
                if spec.distill is not None:
                    per_sample = lcm_per_example_loss(unet, x0, cond, uncond, alpha_bar, spec.distill,
                                                      prediction, noise_gen, autocast, added)
                else:
                    per_sample = _denoising_loss(unet, x0, cond, added, noise, prediction, alpha_bar, snr_t,
                                                 noise_gen, autocast)
                if data.weights is not None:
                    per_sample = per_sample * data.weights[index].to(device)
                loss = per_sample.mean() / spec.grad_accum
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at step {step + 1}; stopping. The last good checkpoint "
                        f"(if any) is in {checkpoint_dir}. Try a lower learning rate or fp32.")
                scaler.scale(loss).backward()
                total += loss.item()
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            if spec.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            lrs.append(schedule.get_last_lr()[0])
            schedule.step()
            losses.append(total)
            step += 1
            if validation is not None and spec.validation_every and step % spec.validation_every == 0:
                unet.eval()  # the adapters are live in the pipeline's own UNet: sample with them
                with torch.random.fork_rng(devices=_rng_devices(device)):  # dropout's stream goes on untouched
                    validations.append((step, validation(step)))
                unet.train()
            if checkpoint_dir is not None and (step == spec.steps or
                                               (spec.checkpoint_every and step % spec.checkpoint_every == 0)):
                _save_checkpoint(checkpoint_dir, step, models, optimizer, schedule, batches, noise_gen, losses, lrs,
                                 signature, validations, device)
            if progress is not None:
                progress(step, total)
    states = {name: trained_state(model, model_targets) for name, (model, model_targets) in models.items()
              if model_targets}
    targets = [t for _, model_targets in models.values() for t in model_targets]
    return TrainResult(states, targets, lcfg, losses, lrs, time.perf_counter() - start, cost.peak_memory_mb,
                       sum(p.numel() for p in params), step,
                       {"noise": asdict(noise), "train": asdict(spec), "schedule": noise_schedule,
                        "lora": asdict(lcfg) if lcfg is not None else None}, validations)


class _CaptionDropout:
    """Which examples of a batch train unconditionally, and their inputs. SD1 guides with the empty
    prompt's encoding (its tokens when the text encoder trains, else its cached embedding); SDXL's
    pipelines guide with zeros for both the hidden states and the pooled embedding. The draws come
    from the noise generator, and none are made at rate 0 (runs without dropout are unchanged)."""

    def __init__(self, pipe, rate: float, uncond: torch.Tensor | None, device: torch.device):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"caption_dropout {rate} must be in [0, 1)")
        self.rate, self.uncond = rate, uncond
        self.sdxl = getattr(pipe, "text_encoder_2", None) is not None
        self.empty = None
        if rate and not self.sdxl:
            self.empty = pipe.tokenizer([""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                        truncation=True, return_tensors="pt").input_ids.to(device)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        return torch.rand(n, generator=generator) < self.rate if self.rate else None

    def tokens(self, tokens: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        if drop is None or self.sdxl:
            return tokens
        return torch.where(drop.to(tokens.device)[:, None], self.empty, tokens)

    def apply(self, cond: torch.Tensor, added: dict | None, drop: torch.Tensor | None,
              encoded: bool) -> torch.Tensor:
        """Cached SD1 embeddings get the empty prompt's (``encoded``: SD1 hidden states already come
        from the empty tokens); SDXL inputs are zeroed (in ``added`` too)."""
        if drop is None:
            return cond
        keep = (~drop).to(cond.device, cond.dtype)
        if self.sdxl:
            added["text_embeds"] = added["text_embeds"] * keep[:, None]
            return cond * keep[:, None, None]
        if encoded:
            return cond
        if self.uncond is None:
            raise ValueError("caption dropout with cached SD1 embeddings needs the empty prompt's embedding "
                             "(TrainingData.uncond)")
        return cond * keep[:, None, None] + self.uncond.to(cond.dtype) * (1 - keep)[:, None, None]


def train_from_images(lp, images: torch.Tensor, captions: list[str], noise: NoiseStrategy, lcfg: LoRAConfigSpec,
                      spec: TrainSpec, checkpoint_dir: Path | None = None, name: str = "lora",
                      weights: list[float] | None = None):
    """Encode, train and package as an ``LL_LORA`` (kohya tensors + training record)."""
    from .lab_lora import LabLoRA
    from .lora_files import kohya_metadata, schedule_metadata, to_kohya
    from .runtime import progress

    captions = _one_caption_each(images, captions)
    spec = steps_for(spec, len(images))
    with torch.inference_mode(False):
        data = encode_dataset(lp.pipe, [image.clone() for image in images], captions, weights)
        if spec.distill is not None and lp.family == "sd1":  # SDXL's unconditional input is zeros
            data.uncond = empty_prompt_embedding(lp.pipe)
    def validate(step: int) -> torch.Tensor:
        from .generate import GenerateSettings, generate
        from .prompts import Prompt
        from .samplers import SamplerSpec

        height, width = images[0].shape[:2]
        prompt = spec.validation_prompt or captions[0]
        out, _ = generate(lp, SamplerSpec("euler"), [Prompt(prompt)],
                          GenerateSettings(steps=20, cfg=7.5, seed=spec.seed, width=width, height=height))
        return out

    with progress(spec.steps, "train") as bar:
        result = train_lora(lp.pipe, data, noise, lcfg, spec, checkpoint_dir,
                            progress=lambda step, loss: bar.update(1), validation=validate)
    lcfg = result.config  # the ranks a parameter budget chose
    meta = kohya_metadata(lcfg.rank, lcfg.alpha, lp.family, {
        "ss_steps": str(result.step), "ss_learning_rate": str(spec.lr), "ss_num_train_images": str(len(images)),
        "loralab_noise": result.metadata["noise"], "loralab_train": result.metadata["train"],
        "loralab_lora": result.metadata["lora"], "loralab_targets": result.targets,
        **schedule_metadata(result.metadata["schedule"])})
    unet_alpha = kohya_alpha(lcfg.alpha, lcfg.rank, lcfg.variant)
    te_alpha = kohya_alpha(lcfg.text_encoder_alpha or lcfg.text_encoder_rank, lcfg.text_encoder_rank, lcfg.variant)
    prefixes = {"unet": "lora_unet", "text_encoder": "lora_te1" if lp.family == "sdxl" else "lora_te",
                "text_encoder_2": "lora_te2"}
    tensors = {key: value for name, state in result.states.items()
               for key, value in to_kohya(state, unet_alpha if name == "unet" else te_alpha, prefixes[name]).items()}
    return LabLoRA(tensors, lcfg.rank, lcfg.alpha, lp.family, name, meta, result.validation_images,
                   result.losses, result.lrs, result.seconds, result.peak_memory_mb, result.trainable_parameters,
                   base_model=lp.name)
