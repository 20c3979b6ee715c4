"""LoRA training (and full fine-tuning) on cached latents and text embeddings, with exact resume.

This module prepares a run: it encodes the data, wraps the pipeline's own modules in peft LoRA
adapters for the duration, resolves the noise schedule (the pipeline's scheduler config unless the
Noise Strategy overrides it), builds the optimizer (AdamW or another torch optimizer) and diffusers'
LR schedule, and packages the result as an ``LL_LORA``. The trainer itself is in named parts in
core/trainer/: the state exact resume restores, the objectives (denoising, LCM), the conditioner,
the hooks and the loop on accelerate (real gradient clipping over a list of parameters, not a spent
generator as in diffusers' example script).

ComfyUI runs nodes inside ``torch.inference_mode()``; training leaves it explicitly and clones
upstream tensors, which may be inference tensors.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .choices import LR_SCHEDULES, OPTIMIZERS
from .distill import LCMSpec
from .lora import LoRAConfigSpec, block_settings, block_targets, block_wise, fit_budget, kohya_alpha, resolve_targets
from .lora import peft_config as adapter_config
from .noise import NoiseStrategy, alphas_cumprod, betas_from_config
from .trainer.conditioner import _CaptionDropout, encode_text  # noqa: F401 (public here)
from .trainer.state import (  # noqa: F401
    ADAPTER,
    FULL,
    _Batches,
    derived_seed,
    ema_weights,
    is_adapter,
    latest_checkpoint,
    lora_state,
    rng_devices,
    trained_parameters,
    trained_state,
)


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
    lr_cycles: int = 1  # cosine_with_restarts: hard restarts
    lr_power: float = 1.0  # polynomial: decay power (1 = linear to lr_end 1e-7)
    tag_dropout: float = 0.0  # each comma-separated tag of a caption dropped at this rate (kohya)
    keep_tags: int = 0  # the first N tags are never dropped (kohya's keep_tokens)
    validation_loss_every: int = 0  # 0 = no validation loss
    validation_fraction: float = 0.0  # held out from the training images when no validation set is given
    validation_timesteps: int = 4  # fixed timesteps per held-out example (evenly spaced)
    ema_decay: float = 0.0  # 0 = no EMA of the trained weights
    ema_warmup: bool = False  # diffusers' EMA warm-up 1 - (1 + n)^(-2/3) instead of (1 + n) / (10 + n)
    ema_every: int = 1  # update the EMA every N optimizer steps
    tensorboard: bool = False  # TensorBoard event files beside the checkpoints
    unmasked_weight: float = 0.0  # masked loss: the loss weight where the mask is 0
    normalize_masked_loss: bool = False  # divide each example's masked loss by its mean weight


def _added_after(cls, first: str) -> dict:
    """Fields from ``first`` on came after the first release: run_signature leaves them out at
    their defaults, so older checkpoints still resume."""
    names = [f.name for f in fields(cls)]
    return {f.name: f.default for f in fields(cls)[names.index(first):]}


ADDED_LATER = _added_after(TrainSpec, "distill")
NOISE_ADDED_LATER = _added_after(NoiseStrategy, "loss_type")
LORA_ADDED_LATER = _added_after(LoRAConfigSpec, "block_ranks")


def _without_later_defaults(settings, added: dict) -> dict:
    return {k: v for k, v in asdict(settings).items() if k not in added or added[k] != v}


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
    masks: torch.Tensor | list[torch.Tensor] | None = None  # masked loss: [N,1,h,w] at latent size, 0..1


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
    grad_norms: list[float] = field(default_factory=list)  # per step, before clipping
    val_losses: list = field(default_factory=list)  # (step, validation loss, the EMA weights' or nan)
    ema_states: dict | None = None  # ``states`` with the EMA weights (ema_decay > 0)

    @property
    def unet_state(self) -> dict[str, torch.Tensor]:
        return self.states.get("unet", {})

    @property
    def text_encoder_state(self) -> dict[str, torch.Tensor]:
        return self.states.get("text_encoder", {})


ENCODE_CHUNK = 32


@torch.no_grad()
def encode_dataset(pipe, images, captions: list[str], weights: list[float] | None = None, masks=None) -> TrainingData:
    """Encode ComfyUI images ``[N,H,W,3]`` in 0..1 (or a list of ``[H,W,3]`` of several sizes, from
    aspect-ratio buckets) and their captions once (latent caching). The VAE posterior's mean is
    used, so the cache is deterministic. ``masks`` (one ``[H,W]`` per image) are area-averaged to
    the latents' size, as kohya's masked loss resizes them."""
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
    small = None
    if masks is not None:
        if len(masks) != len(images):
            raise ValueError(f"got {len(masks)} masks for {len(images)} images; give one mask per image")
        small = [_latent_mask(mask, size, x.shape[-2:]) for mask, size, x in zip(masks, sizes, latents, strict=True)]
        small = torch.stack(small) if len(set(sizes)) == 1 else small
    return TrainingData(stacked, embeddings.float().cpu(), list(captions), tokens.cpu(), example_weights, added,
                        tokens_2, masks=small)


def _latent_mask(mask: torch.Tensor, image_size: tuple, latent_size) -> torch.Tensor:
    """A ``[H,W]`` mask in 0..1 (the image's size) as ``[1,h,w]`` at the latents' size (area mean)."""
    import torch.nn.functional as F

    mask = torch.as_tensor(mask, dtype=torch.float32).cpu()
    if tuple(mask.shape) != tuple(image_size):
        raise ValueError(f"a mask of {tuple(mask.shape)} pixels for an image of {tuple(image_size)}: each mask must "
                         "have its image's height and width")
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError(f"mask values must be in 0..1; got {mask.min().item():g}..{mask.max().item():g}")
    return F.interpolate(mask[None, None], size=tuple(latent_size), mode="area")[0]


@torch.no_grad()
def empty_prompt_embedding(pipe) -> torch.Tensor:
    """The SD1 text encoder's output for "" (``[1, 77, D]``): classifier-free guidance's unconditional input."""
    tokens = pipe.tokenizer([""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(tokens)[0].float().cpu()


def _optimizer(params, spec: TrainSpec, device: torch.device):
    """The optimizer over ``params`` (tensors, or param groups with their own ``lr``). Prodigy
    (Mishchenko & Defazio 2023) estimates the step size itself: its learning rate is a multiplier,
    1.0 as its authors advise. Adafactor runs with a fixed learning rate (no relative step, no
    parameter scaling: kohya's advice for LoRA). Schedule-free AdamW (Defazio et al. 2024) does its
    own warm-up and needs no LR schedule; the loop switches it to eval mode whenever the weights
    are read."""
    betas, decay = (spec.beta1, spec.beta2), spec.weight_decay
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, betas=betas, weight_decay=decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=betas, weight_decay=decay)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.beta1, weight_decay=decay)
    if spec.optimizer == "prodigy":
        return _optional("prodigyopt", "prodigy").Prodigy(params, lr=spec.lr, betas=betas, weight_decay=decay,
                                                          safeguard_warmup=spec.warmup_steps > 0,
                                                          use_bias_correction=True)
    if spec.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=spec.lr, weight_decay=decay, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    if spec.optimizer == "adamw_8bit":
        if device.type != "cuda":
            raise ValueError(f"optimizer 'adamw_8bit' needs a CUDA GPU (bitsandbytes' 8-bit states); the model "
                             f"is on {device.type}: use adamw")
        return _optional("bitsandbytes", "adamw_8bit").optim.AdamW8bit(params, lr=spec.lr, betas=betas,
                                                                         weight_decay=decay)
    if spec.optimizer == "adamw_schedulefree":
        if spec.lr_schedule != "constant":
            raise ValueError(f"optimizer 'adamw_schedulefree' needs no LR schedule (it warms up itself over "
                             f"warmup_steps); set lr_schedule constant, not {spec.lr_schedule!r}")
        return _optional("schedulefree", "adamw_schedulefree").AdamWScheduleFree(
            params, lr=spec.lr, betas=betas, weight_decay=decay, warmup_steps=spec.warmup_steps)
    raise ValueError(f"optimizer {spec.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")


def _optional(package: str, optimizer: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise ValueError(f"optimizer {optimizer!r} needs the {package!r} package: pip install {package}") from None


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
    """diffusers' schedules; "constant" warms up over warmup_steps first (schedule-free AdamW warms
    up inside the optimizer, so its schedule stays flat)."""
    from diffusers.optimization import get_scheduler

    if spec.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {spec.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
    if spec.lr_cycles < 1 or spec.lr_power <= 0:
        raise ValueError(f"lr_cycles {spec.lr_cycles} must be at least 1 and lr_power {spec.lr_power} above 0")
    name = "constant_with_warmup" if spec.lr_schedule == "constant" else spec.lr_schedule
    warmup = 0 if spec.optimizer == "adamw_schedulefree" else spec.warmup_steps
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=spec.steps,
                         num_cycles=spec.lr_cycles, power=spec.lr_power)


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
                patterns = {}
                if name == "unet":  # block-wise ranks/alphas: rank-0 blocks dropped, the rest per module
                    targets, patterns = block_targets(lcfg, model, targets)
                config = adapter_config(lcfg, targets, rank, alpha)
                for key, value in patterns.items():
                    setattr(config, key, value)
                torch.manual_seed(seed)  # peft draws the LoRA A init from the global generator
                inject_adapter_in_model(config, model, adapter_name=ADAPTER)
                for n, p in model.named_parameters():
                    if is_adapter(n):
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


def _lr_groups(models: dict, lcfg: LoRAConfigSpec | None, params: list, lr: float) -> list:
    """``params`` as they are, or with block LR weights (kohya's down/mid/up_lr_weight) one optimizer
    param group per weight, lr = weight × the base rate; the base-rate group first, since group 0's
    rate is the run's recorded LR curve."""
    if lcfg is None or not lcfg.block_lr_weights.strip() or not models["unet"][1]:
        return params
    unet, targets = models["unet"]
    weights = block_settings(lcfg, targets)[2]
    weight = {id(p): weights[t] for t in targets for n, p in unet.get_submodule(t).named_parameters() if is_adapter(n)}
    groups: dict[float, list] = {}
    for p in params:
        groups.setdefault(weight.get(id(p), 1.0), []).append(p)
    return [{"params": group, "lr": lr * w} for w, group in sorted(groups.items(), key=lambda wg: wg[0] != 1.0)]


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


def run_signature(data: TrainingData, noise: NoiseStrategy, lcfg: LoRAConfigSpec, spec: TrainSpec,
                  validation_data: TrainingData | None = None) -> str:
    """What a checkpoint must match to be resumed: the data (and the held-out data the validation
    losses so far were measured on) and every setting but checkpoint_every and tensorboard."""
    import hashlib

    h = hashlib.sha256()
    latents = [data.latents] if isinstance(data.latents, torch.Tensor) else data.latents
    extra = [data.weights] if data.weights is not None else []
    for more in (data, validation_data if spec.validation_loss_every else None):
        if more is not None and more.masks is not None:
            extra += [more.masks] if isinstance(more.masks, torch.Tensor) else more.masks
    if spec.validation_loss_every and validation_data is not None:
        held_out = validation_data.latents
        extra += ([held_out] if isinstance(held_out, torch.Tensor) else list(held_out)) + [validation_data.embeddings]
    for tensor in (*latents, data.embeddings, *extra):
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    # fields added later are left out at their defaults, so older checkpoints still resume; so is
    # tensorboard (logging only)
    train = {**_without_later_defaults(spec, ADDED_LATER), "checkpoint_every": None}
    train.pop("tensorboard", None)
    lora = "full" if lcfg is None else _without_later_defaults(lcfg, LORA_ADDED_LATER)
    settings = {"noise": _without_later_defaults(noise, NOISE_ADDED_LATER), "lora": lora, "train": train}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def train_lora(pipe, data: TrainingData, noise: NoiseStrategy, lcfg: LoRAConfigSpec, spec: TrainSpec,
               checkpoint_dir: Path | None = None, progress=None, validation=None,
               validation_data: TrainingData | None = None) -> TrainResult:
    """Train a LoRA on ``data``; resumes from ``checkpoint_dir`` when it holds a checkpoint.
    The pipeline's modules are wrapped only while training and come back unchanged."""
    lcfg = fit_budget(pipe, lcfg)
    if spec.distill is not None:
        if not lcfg.train_unet or lcfg.text_encoder_rank:
            raise ValueError("LCM distillation trains a UNet LoRA only: set train_unet on and text_encoder_rank 0")
        if noise.loss_type != "l2" or noise.multires_noise_iterations:
            raise ValueError("LCM distillation has its own loss (Train Config's LCM loss) and noise: set Noise "
                             "Strategy's loss_type to l2 and multires_noise_iterations to 0")
        if data.uncond is None and getattr(pipe, "text_encoder_2", None) is None:
            raise ValueError("LCM distillation needs the empty prompt's embedding (TrainingData.uncond)")
        if spec.validation_loss_every or data.masks is not None:
            raise ValueError("LCM distillation has its own objective: the validation (denoising) loss and masked "
                             "loss do not apply; set validation_loss_every 0 and give no masks")
    # The global generators are seeded for LoRA init and dropout inside a fork: the caller's are left as they were.
    device = pipe.unet.device
    with torch.random.fork_rng(devices=rng_devices(device)), torch.inference_mode(False), torch.enable_grad(), \
            _adapters(pipe, lcfg, spec.seed) as models, fp32_math(spec.fp32_math, device):
        checkpointing = pipe.unet.is_gradient_checkpointing
        try:
            return _train(pipe, models, data, noise, lcfg, spec, checkpoint_dir, progress, validation,
                          validation_data)
        finally:
            if spec.gradient_checkpointing and not checkpointing:
                pipe.unet.disable_gradient_checkpointing()


def _trainable(lp) -> None:
    if lp.family not in ("sd1", "sdxl"):
        raise ValueError(f"training needs an SD1 or SDXL base model; {lp.name!r} is {lp.family} (an SDXL refiner "
                         "finishes a base model's images in Generate, it is not trained here)")


def _one_caption_each(images, captions: list[str]) -> list[str]:
    """One caption per image: one given for all is repeated; any other count is an error."""
    if len(captions) not in (1, len(images)):
        raise ValueError(f"got {len(captions)} captions for {len(images)} images; give one caption for all "
                         "images or one per image")
    return captions * len(images) if len(captions) == 1 else captions


def train_full(pipe, data: TrainingData, noise: NoiseStrategy, spec: TrainSpec, text_encoder: bool = False,
               checkpoint_dir: Path | None = None, progress=None, validation=None,
               validation_data: TrainingData | None = None) -> TrainResult:
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
    with torch.random.fork_rng(devices=rng_devices(device)), torch.inference_mode(False), torch.enable_grad(), \
            fp32_math(spec.fp32_math, device):
        models, checkpointing = {}, pipe.unet.is_gradient_checkpointing
        for name in names:
            model = getattr(pipe, name)
            model.requires_grad_(True)
            model.train()
            models[name] = (model, FULL)
        try:
            return _train(pipe, models, data, noise, None, spec, checkpoint_dir, progress, validation,
                          validation_data)
        finally:
            for model, _ in models.values():
                model.requires_grad_(False)
                model.eval()
            if spec.gradient_checkpointing and not checkpointing:  # as train_lora leaves it
                pipe.unet.disable_gradient_checkpointing()


def finetune_from_images(lp, images, captions: list[str], noise: NoiseStrategy, spec: TrainSpec,
                         text_encoder: bool = False, checkpoint_dir: Path | None = None, name: str = "finetuned",
                         masks=None):
    """Fine-tune copies of ``lp``'s UNet (and text encoders) on ``images``; returns a new
    ``LabPipeline`` holding them beside ``lp``'s other components (with EMA: the EMA weights), and
    the ``TrainResult``. ``lp`` itself is left untouched (other nodes share it). The validation
    loss holds out ``validation_fraction`` of the images."""
    import copy

    from .pipeline import LabPipeline
    from .runtime import progress

    _trainable(lp)
    captions = _one_caption_each(images, captions)
    images, captions, _, masks, held_out = _held_out(images, captions, None, masks, spec, None)
    spec = steps_for(spec, len(images))
    with torch.inference_mode(False):
        data = encode_dataset(lp.pipe, images, captions, masks=masks)
        validation_data = encode_dataset(lp.pipe, *held_out[:2], masks=held_out[2]) if held_out else None
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
                            progress=lambda step, loss: bar.update(1), validation_data=validation_data)
    if result.ema_states is not None:  # the tuned model is the EMA (``states`` keeps the raw weights)
        for component, state in result.ema_states.items():
            getattr(pipe, component).load_state_dict(state)
    return tuned, result


def steps_for(spec: TrainSpec, n_examples: int) -> TrainSpec:
    """Resolve ``epochs`` into optimizer steps (each step sees batch_size x grad_accum examples)."""
    import dataclasses
    import math

    if spec.epochs <= 0:
        return spec
    per_step = spec.batch_size * spec.grad_accum
    return dataclasses.replace(spec, steps=max(1, math.ceil(spec.epochs * n_examples / per_step)))


def _train(pipe, models, data, noise, lcfg, spec, checkpoint_dir, progress, validation=None,
           validation_data=None) -> TrainResult:
    """Assemble the trainer's parts (core/trainer/) and run them."""
    from .trainer.hooks import Hooks
    from .trainer.loop import run
    from .trainer.objectives import DenoisingObjective, LCMObjective

    if spec.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    schedule = noise.schedule(pipe.scheduler.config)  # the model's, where the strategy does not override it
    alpha_bar, prediction = alphas_cumprod(betas_from_config(schedule)), schedule["prediction_type"]
    if spec.distill is not None:
        uncond = data.uncond.to(pipe.unet.device) if data.uncond is not None else None
        objective = LCMObjective(spec.distill, prediction, alpha_bar, uncond)
    else:
        objective = DenoisingObjective(noise, prediction, alpha_bar, spec.normalize_masked_loss)
    params = trained_parameters(models)
    optimizer = _optimizer(_lr_groups(models, lcfg, params, spec.lr), spec, pipe.unet.device)
    hooks = Hooks(progress, validation, spec.validation_every, checkpoint_dir, spec.checkpoint_every,
                  tensorboard=spec.tensorboard)
    signature = run_signature(data, noise, lcfg, spec, validation_data)
    state, (seconds, peak_memory_mb) = run(pipe, models, data, objective, spec, signature, hooks, optimizer,
                                           _lr_schedule(optimizer, spec), validation_data)
    states = {name: trained_state(model, targets) for name, (model, targets) in models.items() if targets}
    ema_states = None
    if state.ema is not None:  # the EMA weights in the same layout; the modules keep the raw ones
        with ema_weights(state.ema, params):
            ema_states = {name: trained_state(model, targets) for name, (model, targets) in models.items() if targets}
    targets = [t for _, model_targets in models.values() for t in model_targets]
    return TrainResult(states, targets, lcfg, state.losses, state.lrs, seconds, peak_memory_mb,
                       sum(p.numel() for p in params), state.step,
                       {"noise": asdict(noise), "train": asdict(spec), "schedule": schedule,
                        "lora": asdict(lcfg) if lcfg is not None else None}, state.validations,
                       state.grad_norms, state.val_losses, ema_states)


def hold_out(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) example indices: round(fraction·n) held out (at least one), chosen by a
    seeded permutation, each list in the original order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction {fraction} must be in (0, 1)")
    k = max(1, round(fraction * n))
    if k >= n:
        raise ValueError(f"validation_fraction {fraction} of {n} examples leaves none to train on; lower it or "
                         "give a validation dataset")
    chosen = set(torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, 4)))[:k].tolist())
    return [i for i in range(n) if i not in chosen], sorted(chosen)


def _held_out(images, captions, weights, masks, spec: TrainSpec, validation_set):
    """(images, captions, weights, masks, held-out (images, captions, masks) or None): the given
    validation set, or ``validation_fraction`` of the examples taken out of training."""
    images = [image.clone() for image in images]
    if not spec.validation_loss_every:
        return images, captions, weights, masks, None
    if validation_set is not None:
        v_images, v_captions, v_masks = validation_set
        return images, captions, weights, masks, ([image.clone() for image in v_images],
                                                  _one_caption_each(v_images, v_captions), v_masks)
    if not spec.validation_fraction:
        raise ValueError("validation_loss_every needs held-out examples: set validation_fraction or give a "
                         "validation dataset")
    keep, out = hold_out(len(images), spec.validation_fraction, spec.seed)
    held_out = ([images[i] for i in out], [captions[i] for i in out], [masks[i] for i in out] if masks else None)
    return ([images[i] for i in keep], [captions[i] for i in keep], [weights[i] for i in keep] if weights else weights,
            [masks[i] for i in keep] if masks is not None else None, held_out)


def kohya_training_metadata(noise: NoiseStrategy, lcfg: LoRAConfigSpec, spec: TrainSpec) -> dict[str, str]:
    """The training settings under the ``ss_*`` names kohya's train_network.py writes (str() of its
    values: None where a setting is off), which LoRA browsers and A1111/Forge extensions show.
    ``batch_size`` is the global batch, split over the processes (``WORLD_SIZE``, set by torchrun and
    accelerate)."""
    processes = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    weighting = noise.loss_weighting
    ranged = noise.timestep_sampling == "range"
    values = {
        "seed": spec.seed, "optimizer": spec.optimizer, "lr_scheduler": spec.lr_schedule,
        "lr_warmup_steps": spec.warmup_steps, "max_train_steps": spec.steps,
        "gradient_accumulation_steps": spec.grad_accum, "gradient_checkpointing": spec.gradient_checkpointing,
        "mixed_precision": spec.mixed_precision, "max_grad_norm": spec.max_grad_norm,
        "batch_size_per_device": spec.batch_size // processes, "total_batch_size": spec.batch_size * spec.grad_accum,
        "caption_dropout_rate": spec.caption_dropout, "caption_tag_dropout_rate": spec.tag_dropout,
        "keep_tokens": spec.keep_tags, "network_dropout": lcfg.dropout or None, "cache_latents": True,
        "noise_offset": noise.noise_offset or None, "ip_noise_gamma": noise.input_perturbation or None,
        "multires_noise_iterations": noise.multires_noise_iterations or None,
        "multires_noise_discount": noise.multires_noise_discount,
        "min_snr_gamma": noise.min_snr_gamma if weighting == "min_snr" else None,
        "debiased_estimation": weighting == "debiased",
        "min_timestep": noise.t_min if ranged else None, "max_timestep": noise.t_max + 1 if ranged else None,
        "loss_type": noise.loss_type, "huber_schedule": noise.huber_schedule, "huber_c": noise.huber_c,
    }
    return {f"ss_{key}": str(value) for key, value in values.items()}


def train_from_images(lp, images: torch.Tensor, captions: list[str], noise: NoiseStrategy, lcfg: LoRAConfigSpec,
                      spec: TrainSpec, checkpoint_dir: Path | None = None, name: str = "lora",
                      weights: list[float] | None = None, masks=None, validation_set=None):
    """Encode, train and package as an ``LL_LORA`` (kohya tensors + training record). ``masks``
    (one ``[H,W]`` in 0..1 per image) turn on masked loss; ``validation_set`` (images, captions,
    masks or None) are the held-out examples of the validation loss, else ``validation_fraction``
    of ``images`` is held out."""
    from .lab_lora import LabLoRA
    from .lora import kohya_network_args, split_by_settings
    from .lora_files import kohya_metadata, schedule_metadata, to_kohya
    from .runtime import progress

    _trainable(lp)
    captions = _one_caption_each(images, captions)
    images, captions, weights, masks, held_out = _held_out(images, captions, weights, masks, spec, validation_set)
    spec = steps_for(spec, len(images))
    with torch.inference_mode(False):
        data = encode_dataset(lp.pipe, images, captions, weights, masks)
        validation_data = encode_dataset(lp.pipe, *held_out[:2], masks=held_out[2]) if held_out else None
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
                            progress=lambda step, loss: bar.update(1), validation=validate,
                            validation_data=validation_data)
    lcfg = result.config  # the ranks a parameter budget chose
    meta = kohya_metadata(lcfg.rank, lcfg.alpha, lp.family, {
        **kohya_training_metadata(noise, lcfg, spec),
        "ss_steps": str(result.step), "ss_learning_rate": str(spec.lr), "ss_num_train_images": str(len(images)),
        "loralab_noise": result.metadata["noise"], "loralab_train": result.metadata["train"],
        "loralab_lora": result.metadata["lora"], "loralab_targets": result.targets,
        **schedule_metadata(result.metadata["schedule"])}, lcfg.variant)
    if block_wise(lcfg):  # kohya's network_args for the blocks, beside those already there ({"algo": …})
        meta["ss_network_args"] = json.dumps({**json.loads(meta.get("ss_network_args", "{}")),
                                              **kohya_network_args(lcfg, lp.family, lp.pipe.unet, result.targets)})
    unet_alpha = kohya_alpha(lcfg.alpha, lcfg.rank, lcfg.variant)
    te_alpha = kohya_alpha(lcfg.text_encoder_alpha or lcfg.text_encoder_rank, lcfg.text_encoder_rank, lcfg.variant)
    prefixes = {"unet": "lora_unet", "text_encoder": "lora_te1" if lp.family == "sdxl" else "lora_te",
                "text_encoder_2": "lora_te2"}
    def kohya(states):
        if block_wise(lcfg) and "unet" in states:  # each (rank, alpha) group with its own file alpha (and LoKr rank)
            ranks, alphas, _ = block_settings(lcfg, result.targets)
            unet = {key: value for (r, a), part in split_by_settings(states["unet"], ranks, alphas).items()
                    for key, value in to_kohya(part, kohya_alpha(a, r, lcfg.variant), prefixes["unet"], r).items()}
            return {**unet, **kohya({n: state for n, state in states.items() if n != "unet"})}
        return {key: value for name, state in states.items()
                for key, value in to_kohya(state, unet_alpha if name == "unet" else te_alpha, prefixes[name],
                                           lcfg.rank if name == "unet" else lcfg.text_encoder_rank).items()}

    # With EMA the LoRA is its EMA weights (what Train LoRA applies, and Save LoRA writes by default)
    tensors = kohya(result.ema_states if result.ema_states is not None else result.states)
    return LabLoRA(tensors, lcfg.rank, lcfg.alpha, lp.family, name, meta, result.validation_images,
                   result.losses, result.lrs, result.seconds, result.peak_memory_mb, result.trainable_parameters,
                   base_model=lp.name, grad_norms=result.grad_norms, val_losses=result.val_losses,
                   raw_tensors=kohya(result.states) if result.ema_states is not None else None)
