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
