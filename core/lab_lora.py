"""``LL_LORA``: a trained or loaded adapter with its metadata and training record."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LabLoRA:
    tensors: dict[str, torch.Tensor]  # kohya keys
    rank: int
    alpha: float
    family: str
    name: str = "lora"
    metadata: dict = field(default_factory=dict)
    validation_images: list = field(default_factory=list)  # (step, IMAGE batch) during training
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    trainable_parameters: int = 0
    file_size_bytes: int = 0
    base_model: str = ""  # the pipeline it was trained on (its name in score tables)
    grad_norms: list[float] = field(default_factory=list)  # per training step, before clipping
    val_losses: list = field(default_factory=list)  # (step, validation loss, EMA weights' loss or nan)
    raw_tensors: dict | None = None  # trained with EMA: ``tensors`` are the EMA weights, these the raw ones

    @property
    def schedule(self) -> dict | None:
        """The noise schedule it trained with (scheduler-config keys), from its metadata; None when
        the metadata does not say."""
        from .lora_files import schedule_from_metadata

        return schedule_from_metadata(self.metadata)


def apply_lora(lp, lora: LabLoRA, unet_strength: float, text_strength: float, dora_norm: str = "peft",
               name: str | None = None):
    """``lp`` with ``lora`` applied at the given strengths, as a view: no module is copied, the LoRA is
    merged into the shared modules while the new pipeline is used (core/patches.py), and ``lp``
    still gives the model without it. The view samples with the noise schedule the LoRA trained
    with: a v-prediction or zero-terminal-SNR LoRA is sampled as one. Every shape is checked here.
    Returns (pipeline, LoRA modules the model lacks)."""
    import copy

    from .choices import DORA_NORMS
    from .lora_files import lora_plan
    from .patches import Patch
    from .pipeline import describe_schedule, scheduler_for

    if dora_norm not in DORA_NORMS:
        raise ValueError(f"DoRA norm {dora_norm!r} is not one of {', '.join(DORA_NORMS)}")
    name = name or lora.name
    if any(p.device.type == "meta" for p in lp.base.unet.parameters()):
        raise ValueError("the pipeline was loaded with offload 'sequential', which keeps the weights outside "
                         "the modules, so a LoRA cannot be applied; load it with offload 'none' or 'model'")
    plan, unmatched = lora_plan(lp.base, lora.tensors)
    base, schedule_from = lp.base, lp.schedule_from
    scheduler = scheduler_for(base.scheduler, lora.schedule)
    if scheduler is not base.scheduler:
        if lp.schedule_from:
            raise ValueError(f"LoRA '{name}' trained with {describe_schedule(scheduler.config)}, but this pipeline "
                             f"already samples with {describe_schedule(base.scheduler.config)} for LoRA "
                             f"'{lp.schedule_from}'; LoRAs trained for different schedules cannot be combined")
        base = copy.copy(base)  # the modules stay shared; only the scheduler differs
        base.scheduler, schedule_from = scheduler, name
    patch = Patch(lora.tensors, tuple(plan), unet_strength, text_strength, dora_norm)
    loras = [*lp.loras, (name, unet_strength, text_strength)]
    return type(lp)(base, f"{lp.name} + {name}", lp.family, lp.vae_mode, loras, schedule_from,
                    (*lp.patches, patch)), unmatched
