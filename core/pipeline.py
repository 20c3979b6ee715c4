"""``LL_PIPELINE``: a bundle of diffusers components and what we know about them.

torch is imported inside the functions: node declarations read the choices below at ComfyUI
start-up, which must stay light."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
EMBEDDED = {"embedded: tiny-sd": MODELS_DIR / "tiny-sd"}
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"auto": None, "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class LabPipeline:
    pipe: object  # a diffusers StableDiffusionPipeline (SDXL comes with the next loader)
    name: str
    family: str
    loras: list = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    def with_scheduler(self, scheduler):
        """A shallow copy of the diffusers pipeline that samples with ``scheduler``: the weights
        are shared and the original keeps its own scheduler (several samplers share one model)."""
        pipe = copy.copy(self.pipe)
        pipe.scheduler = scheduler
        return pipe


def model_choices() -> list[str]:
    return list(EMBEDDED)


def resolve_device(device: str) -> torch.device:
    import torch

    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "auto":
        # Half precision only where it is fast and safe; CPU matmuls in fp16 are slow or missing.
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return getattr(torch, DTYPES[dtype])


def load_pipeline(name: str, dtype: str = "auto", device: str = "auto") -> LabPipeline:
    """Load a model by name. Weights are created outside inference mode even though ComfyUI
    runs nodes inside it: inference tensors could never take part in LoRA training later."""
    import torch

    with torch.inference_mode(False):
        return _load(name, dtype, device)


def _load(name: str, dtype: str, device: str) -> LabPipeline:
    from diffusers import StableDiffusionPipeline

    if name not in EMBEDDED:
        raise ValueError(f"model {name!r} not found; available: {', '.join(model_choices())}")
    dev = resolve_device(device)
    with warnings.catch_warnings():
        # diffusers >= 0.36 renamed torch_dtype to dtype; the old name works on every version.
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(
            EMBEDDED[name], torch_dtype=resolve_dtype(dtype, dev), local_files_only=True,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return LabPipeline(pipe.to(dev), name=name, family="sd1")
